"""Who and where: recorded in keys, locks and snapshots, and never allowed to fail a command."""

from __future__ import annotations

import getpass
import os
import socket


def hostname() -> str:
    return socket.gethostname()


def username() -> str:
    """The login name, or the numeric uid where the user has no passwd entry (containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
