"""A local copy of a remote repository's immutable small objects, so they are downloaded once.

Why: a backup, `snapshots`, `forget` or `restore latest` reads every index object or every
snapshot object; against S3 or SFTP that is a download of the whole index on every run, which
grows with the repository. Index and snapshot objects are never modified in place (docs/FORMAT.md
§12), so a copy kept on the local disk stays exact for as long as the object exists.

The cache is only an accelerator: deleting it, or any file in it, changes nothing but what is
downloaded. What makes that true:

1. **Only what the repository layer names is cached.** `attach` gets the prefixes whose objects
   are immutable (the repository passes ``index/`` and ``snapshots/``); ``config``, keys, locks
   (replaced on refresh), pending objects and packs (large, read by range) always go to the
   remote. The storage layer itself knows nothing of the format.
2. **A copy is used only while the remote lists the object.** Commands list a prefix before
   they read its objects anyway; `list` notes every name and size it sees, and `load` serves a
   copy only for a name the latest listing showed, with that size. A listing that ran to its
   end also deletes the copies of objects it no longer shows (a snapshot forgotten, an index
   object a prune replaced), here and on disk. A name read without a listing is downloaded.
   An object deleted after the listing may still be served, exactly as if it had been read a
   moment earlier (readers already allow for that: docs/FORMAT.md §12). `check`, which must see
   what the remote holds, turns reading copies off (`remote_reads`).
3. **A damaged copy is never reported as damage of the repository.** Each entry ends with a
   BLAKE2b-256 checksum of the object; a copy that fails it (a truncated write after a crash,
   a bad disk) or has the wrong size is deleted and the object downloaded again. The
   repository layer also authenticates every object it opens: if a copy that passed the
   checksum still does not open, `drop_cached` deletes it and tells the caller to download it
   again, so only damage of the remote object is reported.
4. **Writes go through.** `store` writes the remote first and then keeps a copy (a backup's new
   index object and snapshot are not downloaded by the next run); `delete` drops the copy too.
5. **Several processes may share the folder.** Entries are written to a temporary file and
   renamed into place, so a reader sees a whole entry or none; one that vanishes between a
   listing and a read is simply downloaded. A failure of the cache itself (full disk,
   read-only or unwritable folder) is logged and ignored: the command goes on against the
   remote.

Where: ``<cache root>/<repository id>/<object name>``, the cache root being ``$CAIRN_CACHE_DIR``,
else ``platformdirs.user_cache_dir("cairn")`` (``$XDG_CACHE_HOME/cairn`` on Linux), the folder
that also holds the files cache and checkpoints, marked with a ``CACHEDIR.TAG``.

Why keyed by the repository id, which is only known once the config has been decrypted (the
repository calls `attach` right after opening; until then the wrapper only passes calls through,
and what is read before, config and keys, is small and never cached): one repository reached
by different locations (an SSH alias and a host name, two S3 endpoints) shares one cache, a
repository deleted and created again at the same location does not inherit a cache of another
repository, and the folder name ties up with the files cache and checkpoints of that
repository. A key made from the location would get all three wrong.

Local repositories get no cache (`cairn.storage.stack`): the cache would be one local file read
in place of another, and it would double the disk space of the index (measured in
docs/STORAGE.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.storage.base import Backend, BackendProperties, ObjectInfo, check_name, check_range
from cairn.storage.local import TEMP_PREFIX, replace_file

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "CAIRN_CACHE_DIR"
CHECKSUM_SIZE = 32
# A temporary file this old was left by a process that died while writing it.
STALE_TEMP_SECONDS = 3600
# File times come from a coarse kernel clock that may lag the wall clock by a tick: an entry
# another process wrote just as a listing began must not be swept as "not listed".
SWEEP_MARGIN_NS = 100_000_000
CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This file is a cache directory tag created by cairn.\n"
    b"# For information about cache directory tags see https://bford.info/cachedir/\n"
)


def cache_root() -> Path:
    """cairn's local cache folder: ``$CAIRN_CACHE_DIR``, else the platform's user cache folder."""
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(os.path.expanduser(override))
    import platformdirs  # here, as hashlib below: neither should sit under the KDF's peak (2 and 3.6 MiB)

    return Path(platformdirs.user_cache_dir("cairn"))


def _checksum(data: bytes) -> bytes:
    import hashlib  # loads libcrypto: 3.6 MiB of RSS that every command would carry while the key opens

    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE, person=b"cairn-cache-v1").digest()


@dataclass
class CacheStats:
    """What the cache saved in one process (logged on close, read by tests and bench/cache.py)."""

    hits: int = 0
    hit_bytes: int = 0
    downloads: int = 0
    download_bytes: int = 0
    damaged: int = 0
    """Copies thrown away because they failed the checksum, the size or authentication."""


class ObjectCache:
    """The folder of one repository's cached objects: whole entries in, verified entries out."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._warned = False

    def _path(self, name: str) -> Path:
        return self.folder / check_name(name)  # no "..", no leading dot: never outside the folder

    def _failed(self, what: str, exc: OSError) -> None:
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "the local cache %s cannot %s (%s); going on without it",
                self.folder, what, exc.strerror or exc)

    def read(self, name: str, size: int) -> bytes | None:
        """The cached object if present, whole and `size` bytes long; else None (a bad entry is deleted)."""
        try:
            raw = self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._failed(f"read {name}", exc)
            return None
        body, checksum = raw[:-CHECKSUM_SIZE], raw[-CHECKSUM_SIZE:]
        if len(raw) != size + CHECKSUM_SIZE or _checksum(body) != checksum:
            raise _DamagedEntry()
        return body

    def write(self, name: str, data: bytes) -> None:
        """Keep a copy: written beside its place and renamed over it, so readers never see a part."""
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(path, data + _checksum(data))
        except OSError as exc:
            self._failed(f"write {name}", exc)

    def remove(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._failed(f"remove {name}", exc)

    def sweep(self, prefix: str, keep: set[str], older_than_ns: int) -> int:
        """Delete entries under `prefix` that are not in `keep` and were written before
        `older_than_ns` (newer ones may be another process's fresh writes), and temporary files
        of dead writers. Returns how many entries went."""
        removed = 0
        top = self.folder / prefix.rstrip("/") if prefix.endswith("/") else (self.folder / prefix).parent
        now = time.time_ns()
        for folder, _, files in os.walk(top):
            for file in files:
                path = Path(folder, file)
                name = path.relative_to(self.folder).as_posix()
                try:
                    mtime = path.stat().st_mtime_ns
                    if file.startswith(TEMP_PREFIX):
                        if now - mtime > STALE_TEMP_SECONDS * 1_000_000_000:
                            path.unlink()
                    elif name.startswith(prefix) and name not in keep and mtime < older_than_ns:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue  # another process swept it first
                except OSError as exc:
                    self._failed(f"clean {name}", exc)
                    return removed
        return removed


class _DamagedEntry(Exception):
    """A cached copy that failed its checksum or size check."""


class CacheBackend:
    """Wraps a remote `Backend` with a local copy of its immutable objects (module docstring).

    Passes every call through until `attach` names the repository and what to cache.
    """

    def __init__(self, inner: Backend, root: Path | str | None = None) -> None:
        self.inner = inner
        self.root = Path(root) if root is not None else cache_root()
        self.stats = CacheStats()
        self.reads = True
        """False: serve every read from the remote (`check`), still refreshing the copies."""
        self._cache: ObjectCache | None = None
        self._prefixes: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._listed: dict[str, tuple[int, int]] = {}
        """Name -> (size, generation) of every cacheable object the remote showed us."""
        self._generation = 0
        self._served: set[str] = set()
        """Names whose latest load came from the cache (what `drop_cached` may blame)."""
        self._report: weakref.finalize[..., Any] | None = None

    @property
    def properties(self) -> BackendProperties:
        return self.inner.properties

    @property
    def folder(self) -> Path | None:
        """Where this repository's copies live, once attached."""
        return self._cache.folder if self._cache is not None else None

    def attach(self, repository_id: str, prefixes: Iterable[str]) -> None:
        """Start caching the objects under `prefixes` in the folder of `repository_id`."""
        folder = self.root / repository_id
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():  # backup tools skip the folder (cairn's --exclude-caches too)
                replace_file(tag, CACHEDIR_TAG)
        except OSError as exc:
            log.warning("the local cache %s cannot be created (%s); going on without it",
                        folder, exc.strerror or exc)
            return
        self._cache = ObjectCache(folder)
        self._prefixes = tuple(prefixes)
        # Commands often end without closing their repository: report at exit then.
        if self._report is not None:
            self._report.detach()
        self._report = weakref.finalize(self, _report, self.stats, folder)

    def _cacheable(self, name: str) -> bool:
        return self._cache is not None and name.startswith(self._prefixes)

    def _note(self, name: str, size: int) -> None:
        with self._lock:
            self._generation += 1
            self._listed[name] = (size, self._generation)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._listed.pop(name, None)
            self._served.discard(name)
        assert self._cache is not None
        self._cache.remove(name)

    def _from_cache(self, name: str) -> bytes | None:
        assert self._cache is not None
        with self._lock:
            listed = self._listed.get(name)
        if listed is None or not self.reads:
            return None
        try:
            data = self._cache.read(name, listed[0])
        except _DamagedEntry:
            log.info("local cache: the copy of %s is damaged; downloading it again", name)
            self.stats.damaged += 1
            self._cache.remove(name)
            return None
        if data is not None:
            with self._lock:
                self._served.add(name)
            self.stats.hits += 1
            self.stats.hit_bytes += len(data)
        return data

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if not self._cacheable(name):
            return self.inner.load(name, offset, length)
        data = self._from_cache(name)
        if data is None:
            data = self.inner.load(name)  # whole, to keep; these objects are small
            with self._lock:
                self._served.discard(name)
            self.stats.downloads += 1
            self.stats.download_bytes += len(data)
            assert self._cache is not None
            self._cache.write(name, data)
            self._note(name, len(data))
        end = check_range(name, offset, length, len(data))
        return data if offset == 0 and end == len(data) else data[offset:end]

    def drop_cached(self, name: str) -> bool:
        """Delete the copy `load` just served for `name`; False if it came from the remote."""
        with self._lock:
            served = name in self._served
        if served:
            self.stats.damaged += 1
            self._forget(name)  # the next load downloads it
        return served

    def store(self, name: str, data: bytes | memoryview) -> None:
        self.inner.store(name, data)
        if self._cacheable(name):
            assert self._cache is not None
            copy = bytes(data)
            self._cache.write(name, copy)
            self._note(name, len(copy))

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def delete(self, name: str) -> None:
        try:
            self.inner.delete(name)
        finally:
            if self._cacheable(name):
                self._forget(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            self._generation += 1
            started = self._generation
        started_ns = time.time_ns()
        seen: set[str] = set()
        for info in self.inner.list(prefix):
            if self._cacheable(info.name):
                seen.add(info.name)
                self._note(info.name, info.size)
            yield info
        self._listing_done(prefix, seen, started, started_ns)

    def _listing_done(self, prefix: str, seen: set[str], started: int, started_ns: int) -> None:
        """A complete listing of `prefix`: forget what it covers and did not show."""
        if self._cache is None:
            return
        for covered in self._prefixes:
            if not covered.startswith(prefix):
                continue
            with self._lock:
                gone = [name for name, (_, noted) in self._listed.items()
                        if name.startswith(covered) and name not in seen and noted < started]
                for name in gone:
                    del self._listed[name]
            self._cache.sweep(covered, seen, started_ns - SWEEP_MARGIN_NS)

    def close(self) -> None:
        if self._report is not None:
            self._report()
        self.inner.close()


def _report(s: CacheStats, folder: Path) -> None:
    """What the cache saved, for ``--debug``."""
    log.debug("local cache %s: %d objects read from it (%d bytes), %d downloaded (%d bytes), %d damaged",
              folder, s.hits, s.hit_bytes, s.downloads, s.download_bytes, s.damaged)


def attach(backend: Backend, repository_id: str, prefixes: Iterable[str]) -> None:
    """Tell a cache, if `backend` is one, which repository it serves and what to keep."""
    if isinstance(backend, CacheBackend):
        backend.attach(repository_id, prefixes)


def drop_cached(backend: Backend, name: str) -> bool:
    """After `name` failed to open: delete a cached copy it came from; True if there was one
    (the caller then loads it again, from the remote)."""
    return isinstance(backend, CacheBackend) and backend.drop_cached(name)


def remote_reads(backend: Backend) -> None:
    """Make every later read of `backend` go to the remote (for `check`, which must see what
    the remote holds); copies are still refreshed."""
    if isinstance(backend, CacheBackend):
        backend.reads = False
