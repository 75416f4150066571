"""One exception tree for everything cairn reports to a user.

Each class carries its exit code, so the CLI maps any failure to a documented exit code in one
place (docs/EXIT_CODES.md, pinned by tests/test_errors.py). Library exceptions (OSError,
cryptography's InvalidTag, ...) are translated once, where they cross into cairn, with
``raise ... from``.
"""

from __future__ import annotations


class CairnError(Exception):
    """Base of every error cairn reports; the message is one line meant for a person."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(CairnError):
    """The command line or options were wrong (a missing path, a bad argument)."""

    exit_code = 2


class RepositoryNotFound(CairnError):
    """The location holds no cairn repository (no or foreign `config` object)."""

    exit_code = 10


class WrongPassword(CairnError):
    """No key object of the repository opens with the given password."""

    exit_code = 11


class UnsupportedVersion(CairnError):
    """The repository was written by a newer cairn in a format this one cannot read."""

    exit_code = 12


class DamagedObject(CairnError):
    """An object failed authentication or did not parse: it was changed or truncated."""

    exit_code = 13


class RepositoryLocked(CairnError):
    """Another process holds a lock that conflicts with the one asked for."""

    exit_code = 14


class NotFound(CairnError):
    """A snapshot, key or object named by the user does not exist (or a prefix is ambiguous)."""

    exit_code = 15


class StorageError(CairnError):
    """The storage failed: unreachable, full, read-only, or an object is missing."""

    exit_code = 16
    transient = False
    """Whether trying again may help (a timeout, a dropped connection); a retry wrapper reads it."""


class ObjectMissing(StorageError):
    """A named object does not exist in the storage."""

    exit_code = 17


class StorageFull(StorageError):
    """The storage has no space left; nothing partial was left behind."""

    exit_code = 18
    AFTERMATH = "nothing already in the repository was changed and it stays readable; free some space and run the command again"
    """What a user needs to hear next: a failed write never replaces or truncates an object, and
    the order of writes (docs/FORMAT.md §12) means the snapshots stored before stay whole."""


class StorageReadOnly(StorageError):
    """The storage refuses writes (read-only mount, permissions)."""

    exit_code = 19


class StorageAccessDenied(StorageError):
    """The storage refused who we are: wrong keys or password, an unknown SSH key, no permission.

    Separate from `StorageError` so that a script can tell "fix the credentials" from "try later".
    """

    exit_code = 21


class PartialSuccess(CairnError):
    """The snapshot was saved, but some files could not be read and were skipped."""

    exit_code = 3


class CheckFailed(CairnError):
    """`cairn check` found damage; the details were printed before this error."""

    exit_code = 20


class DeviceError(CairnError):
    """Reading or writing a disk or disk-image file failed, or a write would leave the target."""

    exit_code = 22


class VerifyFailed(CairnError):
    """A `--verify` read-back found bytes that differ from what was stored."""

    exit_code = 23


class Interrupted(CairnError):
    """The user interrupted the command (Ctrl-C); the repository stays consistent."""

    exit_code = 130


def all_error_classes() -> list[type[CairnError]]:
    """Every class in the tree, for the exit-code table and its test."""
    seen: list[type[CairnError]] = []
    stack: list[type[CairnError]] = [CairnError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return sorted(seen, key=lambda c: c.exit_code)
