"""Repository locations: the strings a user types after ``-r``, parsed into typed values.

Parsing is separate from connecting so that a typo is reported before any network traffic, and
so that every front end (CLI, Python API, tests) agrees on one grammar:

* ``/path``, ``relative/path``, ``~/path`` and ``local:/path``: a local folder.
* ``sftp:[user@]host:path`` (scp-like; a relative path starts in the login folder) and
  ``sftp://[user@]host[:port]/absolute/path``. ``host`` may be an alias from ``~/.ssh/config``.
* ``s3:https://endpoint/bucket/prefix``, ``s3:http://endpoint/bucket/prefix`` and
  ``s3:endpoint/bucket/prefix`` (https). Options follow as a query:
  ``?region=eu-west-1&addressing=path|virtual|auto``.
* ``rclone:remote:path``: anything rclone accepts as a remote path (``rclone:b2:bucket/repo``,
  ``rclone::local:/srv/repo``), served to cairn by a local rclone process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from cairn.errors import UsageError

# A scheme is at least two letters, so a Windows drive ("C:\\backup") is never taken for one.
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_SCP_RE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@/:\[\]]+):(?P<path>.*)$")
ADDRESSING_STYLES = ("auto", "path", "virtual")


@dataclass(frozen=True)
class LocalLocation:
    path: str

    @property
    def text(self) -> str:
        return self.path


@dataclass(frozen=True)
class SftpLocation:
    host: str
    """As typed: a host name, an address, or an alias that ~/.ssh/config resolves."""
    path: str
    """Absolute, or relative to the login folder (scp form only)."""
    user: str | None = None
    port: int | None = None
    text: str = field(default="", compare=False)


@dataclass(frozen=True)
class S3Location:
    endpoint: str
    """``scheme://host[:port]`` without a path."""
    bucket: str
    prefix: str
    """Empty, or a key prefix ending in ``/`` under which every object lives."""
    region: str | None = None
    addressing: str | None = None
    text: str = field(default="", compare=False)


@dataclass(frozen=True)
class RcloneLocation:
    remote: str
    """What rclone itself is given: ``remote:path`` or an on-the-fly ``:backend:path``."""
    text: str = field(default="", compare=False)


Location = LocalLocation | SftpLocation | S3Location | RcloneLocation


def parse_location(text: str) -> Location:
    """Parse a location string; `UsageError` names what is wrong with it."""
    match = SCHEME_RE.match(text)
    scheme = match.group(1).lower() if match else None
    if scheme is None:
        rest = text
        scheme = "local"
    else:
        rest = text[match.end() :] if match else text
    if scheme == "local":
        if not rest:
            raise UsageError(f"the repository location {text!r} names no folder")
        return LocalLocation(os.path.expanduser(rest))
    if scheme == "sftp":
        return _parse_sftp(text, rest)
    if scheme == "s3":
        return _parse_s3(text, rest)
    if scheme == "rclone":
        if ":" not in rest:
            raise UsageError(f"{text!r}: expected rclone:REMOTE:PATH (for example rclone:b2:bucket/repo)")
        return RcloneLocation(rest, text)
    raise UsageError(
        f"unknown repository location scheme {scheme}: in {text!r}; "
        "use a folder, local:, sftp:, s3: or rclone:"
    )


def _parse_sftp(text: str, rest: str) -> SftpLocation:
    if rest.startswith("//"):
        url = urlsplit("sftp:" + rest)
        try:
            port = url.port
        except ValueError:
            raise UsageError(f"{text!r}: the port is not a number between 1 and 65535") from None
        if not url.hostname or not url.path or url.path == "/":
            raise UsageError(f"{text!r}: expected sftp://[user@]host[:port]/path")
        return SftpLocation(url.hostname, url.path, url.username or None, port, text)
    match = _SCP_RE.match(rest)
    if not match or not match.group("path"):
        raise UsageError(f"{text!r}: expected sftp:[user@]host:/path or sftp://[user@]host:port/path")
    host = match.group("host").strip("[]")
    return SftpLocation(host, match.group("path"), match.group("user"), None, text)


def _parse_s3(text: str, rest: str) -> S3Location:
    if "://" not in rest:
        rest = "https://" + rest
    url = urlsplit(rest)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise UsageError(f"{text!r}: expected s3:https://endpoint/bucket[/prefix]")
    bucket, _, prefix = url.path.strip("/").partition("/")
    if not bucket:
        raise UsageError(f"{text!r} names no bucket: expected s3:https://endpoint/bucket[/prefix]")
    options = dict(parse_qsl(url.query, keep_blank_values=True))
    unknown = set(options) - {"region", "addressing"}
    if unknown:
        raise UsageError(f"{text!r}: unknown option {sorted(unknown)[0]!r} (known: region, addressing)")
    addressing = options.get("addressing")
    if addressing is not None and addressing not in ADDRESSING_STYLES:
        raise UsageError(f"{text!r}: addressing must be one of {', '.join(ADDRESSING_STYLES)}")
    prefix = prefix.strip("/")
    return S3Location(
        endpoint=f"{url.scheme}://{url.netloc}",
        bucket=bucket,
        prefix=prefix + "/" if prefix else "",
        region=options.get("region") or None,
        addressing=addressing,
        text=text,
    )
