"""How every command finds its repository and the password that opens it.

One module, so that the CLI, the Python API and later front ends agree on the rules:

* **Location**: the explicit one (``-r/--repo``), else ``CAIRN_REPOSITORY``, else the default
  repository ``<user data dir>/cairn/repo`` (``$XDG_DATA_HOME/cairn/repo`` on Linux). Only the
  default one is ever created implicitly (by ``backup``, see `ensure_repository`): a typo in an
  explicit location must fail loudly, never start a fresh repository somewhere unexpected.
* **Password**: an explicit ``--password-file`` or ``--password-command`` wins over the
  environment, so a command line always means what it says; then ``CAIRN_PASSWORD``,
  ``CAIRN_PASSWORD_FILE``, ``CAIRN_PASSWORD_COMMAND``; then a prompt on the terminal when one is
  allowed; otherwise `UsageError`, since a script must never hang waiting for input.

The repository's existence and format version are checked *before* asking for a password, so a
wrong location or a too-old cairn is reported without a pointless prompt.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from cairn.errors import RepositoryNotFound, StorageReadOnly, UsageError
from cairn.ops.init import InitOptions, InitResult, init
from cairn.repo.repository import Repository
from cairn.storage.base import Backend
from cairn.storage.stack import open_storage

ENV_REPOSITORY = "CAIRN_REPOSITORY"
ENV_PASSWORD = "CAIRN_PASSWORD"
ENV_PASSWORD_FILE = "CAIRN_PASSWORD_FILE"
ENV_PASSWORD_COMMAND = "CAIRN_PASSWORD_COMMAND"

NO_PASSWORD = (
    "no password given: set CAIRN_PASSWORD, CAIRN_PASSWORD_FILE or CAIRN_PASSWORD_COMMAND, "
    "use --password-file or --password-command, or run cairn in a terminal to be asked"
)


Prompt = Callable[[str], str]


@dataclass(frozen=True)
class RepoSelection:
    """What the user said about which repository to use and how to unlock it.

    Every field may be left unset; the environment and the defaults fill in the rest (see the
    module docstring). `interactive` says whether asking on the terminal is allowed: the CLI
    sets it when stdin is a terminal, a script or service leaves it False.
    """

    location: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    interactive: bool = False
    cache: bool = True
    """Keep local copies of a remote repository's index and snapshots (False: ``--no-cache``)."""
    connections: int | None = None
    """At most this many requests at once to a remote location (``--connections``); None: the
    environment's ``CAIRN_CONNECTIONS``, else the backend's default."""
    prompt: Prompt = field(default=getpass.getpass, repr=False, compare=False)
    """Asks for one secret; replaceable so tests and other front ends need no terminal."""


@dataclass(frozen=True)
class Location:
    """A resolved repository location and whether it is the implicit default."""

    text: str
    is_default: bool


def default_location() -> str:
    """The repository used when none is named; follows XDG_DATA_HOME (platformdirs)."""
    import platformdirs  # here, not at the top: only this default needs it (~4 MiB of RSS)

    return os.path.join(platformdirs.user_data_dir("cairn"), "repo")


def resolve_location(selection: RepoSelection) -> Location:
    if selection.location:
        return Location(selection.location, False)
    from_env = os.environ.get(ENV_REPOSITORY)
    if from_env:
        return Location(from_env, False)
    return Location(default_location(), True)


def open_backend(location: str, *, create: bool = False, connections: int | None = None,
                 cache: bool = True) -> Backend:
    """The storage backend for a location string: the one place where new schemes plug in.

    ``/path``, a relative path, ``~/path`` and ``local:/path`` are local folders;
    ``sftp:``, ``s3:`` and ``rclone:`` locations are remote (grammar in `cairn.storage.location`),
    wrapped in retries, a connection limit and (unless `cache` is False) the local cache of index
    and snapshot objects by `cairn.storage.stack.open_storage`. `create` is set only by
    `create_repository`: it lets ``init`` create a missing S3 bucket. `connections` bounds the
    requests in flight (see `RepoSelection.connections`).
    """
    return open_storage(location, create=create, connections=connections, cache=cache)


# -- passwords ------------------------------------------------------------------------------


def _strip_newline(data: bytes) -> bytes:
    """Drop one trailing newline, as editors and `echo` add it; keep any other whitespace."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def _from_file(path: str) -> bytes:
    try:
        with open(os.path.expanduser(path), "rb") as f:
            data = _strip_newline(f.read())
    except OSError as exc:
        raise UsageError(f"cannot read the password file {path}: {exc.strerror or exc}") from None
    if not data:
        raise UsageError(f"the password file {path} is empty")
    return data


def _from_command(command: str) -> bytes:
    """Run a password manager's command without a shell; its stderr and stdin stay the user's."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"cannot parse the password command {command!r}: {exc}") from None
    if not argv:
        raise UsageError("the password command is empty")
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, check=False)
    except OSError as exc:
        raise UsageError(f"cannot run the password command {argv[0]!r}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise UsageError(f"the password command {argv[0]!r} failed with exit code {done.returncode}")
    data = _strip_newline(done.stdout)
    if not data:
        raise UsageError(f"the password command {argv[0]!r} printed no password")
    return data


def _given_password(selection: RepoSelection, environ: Mapping[str, str]) -> bytes | None:
    """The password from a flag or the environment, or None when the user gave none."""
    if selection.password_file and selection.password_command:
        raise UsageError("give either --password-file or --password-command, not both")
    if selection.password_file:
        return _from_file(selection.password_file)
    if selection.password_command:
        return _from_command(selection.password_command)
    if environ.get(ENV_PASSWORD):
        return os.fsencode(environ[ENV_PASSWORD])
    if environ.get(ENV_PASSWORD_FILE):
        return _from_file(environ[ENV_PASSWORD_FILE])
    if environ.get(ENV_PASSWORD_COMMAND):
        return _from_command(environ[ENV_PASSWORD_COMMAND])
    return None


def read_password(selection: RepoSelection, location: str) -> bytes:
    """The password that should open the repository at `location`."""
    given = _given_password(selection, os.environ)
    if given is not None:
        return given
    if not selection.interactive:
        raise UsageError(NO_PASSWORD)
    return os.fsencode(selection.prompt(f"password for {location}: "))


def ask_new_password(prompt: Prompt, what: str) -> bytes:
    """Ask twice on the terminal, since a mistyped new password would lock the user out."""
    first = prompt(f"{what}: ")
    if not first:
        raise UsageError("an empty password protects nothing: choose one")
    if prompt(f"{what} again: ") != first:
        raise UsageError("the passwords do not match")
    return os.fsencode(first)


def read_new_password(selection: RepoSelection, location: str) -> bytes:
    """The password for a repository about to be created at `location`."""
    given = _given_password(selection, os.environ)
    if given is not None:
        return given
    if not selection.interactive:
        raise UsageError(NO_PASSWORD)
    return ask_new_password(selection.prompt, f"new password for {location}")


def read_key_password(selection: RepoSelection, password_file: str | None) -> bytes:
    """The password for a key being added (`key add`, `key passwd`).

    Never taken from CAIRN_PASSWORD and friends: those hold the password that opens the
    repository, and reusing it for the new key would silently change nothing.
    """
    if password_file:
        return _from_file(password_file)
    if not selection.interactive:
        raise UsageError("no new password given: use --new-password-file, or run cairn in a terminal to be asked")
    return ask_new_password(selection.prompt, "new password")


# -- opening and creating -----------------------------------------------------------------


def _not_found(location: Location) -> RepositoryNotFound:
    if location.is_default:
        return RepositoryNotFound(
            f"no repository at {location.text} (the default; name another with -r or "
            f"{ENV_REPOSITORY}): run 'cairn init' or 'cairn backup' first"
        )
    return RepositoryNotFound(f"no repository at {location.text}: run 'cairn init' first")


def open_repository(selection: RepoSelection) -> Repository:
    """Open the selected repository; `RepositoryNotFound` if there is none."""
    location = resolve_location(selection)
    backend = open_backend(location.text, connections=selection.connections, cache=selection.cache)
    try:
        if not Repository.probe(backend):
            raise _not_found(location)
        return Repository.open(backend, read_password(selection, location.text))
    except BaseException:
        backend.close()
        raise


def create_repository(selection: RepoSelection, options: InitOptions | None = None) -> InitResult:
    """Create a repository at the selected location (explicit or default).

    Refuses an existing repository before asking for the new password.
    """
    location = resolve_location(selection)
    backend = open_backend(location.text, create=True, connections=selection.connections, cache=selection.cache)
    try:
        if Repository.probe(backend):
            raise UsageError(f"a repository already exists at {location.text}")
        password = read_new_password(selection, location.text)
        return init(backend, password, options)
    except BaseException:
        backend.close()
        raise


def ensure_repository(selection: RepoSelection, create_default: bool = True) -> tuple[Repository, bool]:
    """Open the repository, creating it first only if it is the default one and absent.

    Returns the repository and whether it was just created, so the caller can tell the user
    where it is and that its password cannot be recovered. `create_default=False` (a dry run,
    which must change nothing) only opens.
    """
    location = resolve_location(selection)
    if location.is_default and create_default:
        backend = open_backend(location.text, connections=selection.connections)
        try:
            exists = Repository.probe(backend)
        finally:
            backend.close()
        if not exists:
            return create_repository(selection).repository, True
    return open_repository(selection), False


@contextmanager
def read_lock(repo: Repository, command: str) -> Iterator[None]:
    """A shared lock for a command that only reads, so an exclusive operation is noticed.

    A repository on read-only storage cannot take a lock at all; reading it is still safe
    from our side, so we go on without one rather than refuse to list or restore.
    """
    with ExitStack() as stack:
        try:
            stack.enter_context(repo.lock(exclusive=False, command=command))
        except StorageReadOnly:
            pass
        yield
