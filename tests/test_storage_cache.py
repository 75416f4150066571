"""The local cache of index and snapshot objects (cairn.storage.cache) in front of a real S3
server (moto on 127.0.0.1): what a second run downloads, and that deleting, damaging or sharing
the cache changes nothing but that."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import ObjectMissing, StorageError
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.check import check
from cairn.ops.forget import ForgetOptions, forget
from cairn.ops.prune import PruneOptions, prune
from cairn.ops.restore import RestoreOptions, restore
from cairn.repo.repository import Repository
from cairn.storage.base import Backend
from cairn.testing.counting import CountingBackend
from cairn.storage.cache import CACHEDIR_TAG, CHECKSUM_SIZE, CacheBackend, ObjectCache
from cairn.storage.stack import open_storage
from cairn.testing.conformance import BackendConformance
from cairn.testing.memory import MemoryBackend
from conftest import FAST_KDF, FAST_KDF_ARGS, PASSWORD
from remote_repo import Remote, digest_tree, make_tree, restored
from servers import aws_env, s3_client

PW = PASSWORD.encode()




@pytest.fixture
def location(moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in aws_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    client = s3_client(moto_s3)
    if not any(b["Name"] == "cache-tests" for b in client.list_buckets().get("Buckets", [])):
        client.create_bucket(Bucket="cache-tests")
    return f"s3:{moto_s3}/cache-tests/{uuid.uuid4().hex[:12]}"


def cached(location: str, root: Path) -> tuple[CacheBackend, CountingBackend]:
    """The real stack for `location` with the cache in `root`, and a counter of what reaches S3."""
    backend = open_storage(location, retry=None)
    assert isinstance(backend, CacheBackend)
    backend.root = root
    counting = CountingBackend(backend.inner)
    backend.inner = counting
    return backend, counting


def do_backup(repo: Repository, source: Path) -> bytes:
    result = backup(repo, BackupOptions(paths=[str(source)], cache_dir=None))
    assert result.snapshot_id is not None
    return result.snapshot_id


@pytest.fixture
def two_snapshots(location: str, tmp_path: Path) -> tuple[Path, Path]:
    """A repository with two backups made through a cache in tmp_path/cache; returns (source, cache)."""
    cache = tmp_path / "cache"
    source = make_tree(tmp_path / "src", seed=3, big=300_000)
    backend, _ = cached(location, cache)
    with Repository.init(backend, PW, FAST_KDF) as repo:
        do_backup(repo, source)
        (source / "sub" / "new.txt").write_bytes(b"second")
        do_backup(repo, source)
    return source, cache


def entries(cache: Path) -> set[str]:
    return {p.relative_to(cache).as_posix().split("/", 1)[1] for p in cache.glob("*/*/*")}


def test_a_second_run_downloads_no_index_or_snapshot_object(location: str, two_snapshots: tuple[Path, Path]) -> None:
    source, cache = two_snapshots
    backend, counting = cached(location, cache)
    with Repository.open(backend, PW) as repo:
        assert len(repo.list_snapshots()) == 2
        do_backup(repo, source)
        assert counting.loads["index"] == counting.loads["snapshots"] == 0
        assert backend.stats.hits >= 4 and backend.stats.downloads == 0
    # Only those two kinds are kept, one folder per repository, marked as a cache for backup tools.
    kinds = {name.split("/")[0] for name in entries(cache)}
    assert kinds == {"index", "snapshots"}
    assert (cache / "CACHEDIR.TAG").read_bytes() == CACHEDIR_TAG
    # Without the cache the same run downloads them all.
    counting = CountingBackend(open_storage(location, cache=False))
    with Repository.open(counting, PW) as repo:
        assert len(repo.list_snapshots()) == 3
        repo.load_index()
    assert counting.loads["snapshots"] == 3
    assert counting.loads["index"] == len(list(counting.list("index/"))) >= 2


def test_deleting_the_cache_changes_only_what_is_downloaded(location: str, two_snapshots: tuple[Path, Path], tmp_path: Path) -> None:
    source, cache = two_snapshots
    results = []
    for wipe in (False, True):
        if wipe:
            shutil.rmtree(cache)
        backend, counting = cached(location, cache)
        with Repository.open(backend, PW) as repo:
            snaps = [(s.id, s.root, s.paths) for s in repo.list_snapshots()]
            target = tmp_path / f"out-{wipe}"
            restore(repo, RestoreOptions(snapshot="latest", target=str(target)))
            results.append((snaps, digest_tree(restored(target, source))))
        assert (counting.loads["snapshots"] > 0) == wipe
    assert results[0] == results[1]
    assert results[0][1] == digest_tree(source)
    assert entries(cache)  # filled again


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_damaged_copy_is_downloaded_again_not_reported(location: str, two_snapshots: tuple[Path, Path]) -> None:
    _, cache = two_snapshots
    names = sorted(n for n in entries(cache) if n.startswith("snapshots/"))
    folder = next(cache.glob("*/snapshots")).parent
    damage(folder / names[0])  # fails the cache's own checksum
    # Damaged under a valid checksum: only the repository's authentication can tell.
    body = bytearray((folder / names[1]).read_bytes()[:-CHECKSUM_SIZE])
    body[-1] ^= 1
    ObjectCache(folder).write(names[1], bytes(body))
    backend, counting = cached(location, cache)
    with Repository.open(backend, PW) as repo:
        assert len(repo.list_snapshots()) == 2
    assert counting.loads["snapshots"] == 2 and backend.stats.damaged == 2
    backend, counting = cached(location, cache)  # repaired copies are used again
    with Repository.open(backend, PW) as repo:
        assert len(repo.list_snapshots()) == 2
    assert counting.loads["snapshots"] == 0 and backend.stats.damaged == 0


def test_check_reads_the_remote_not_the_cache(location: str, two_snapshots: tuple[Path, Path]) -> None:
    _, cache = two_snapshots
    raw = open_storage(location, cache=False)
    name = next(i.name for i in raw.list("snapshots/"))
    good = raw.load(name)
    raw.store(name, good[:-1] + bytes([good[-1] ^ 1]))  # damaged on the server; the cache holds it whole
    backend, _ = cached(location, cache)
    with Repository.open(backend, PW) as repo:
        result = check(repo)
    assert not result.ok
    assert any(name.split("/")[1][:8] in error for error in result.errors)


def test_objects_gone_from_the_remote_leave_the_cache(location: str, two_snapshots: tuple[Path, Path], tmp_path: Path) -> None:
    """A prune elsewhere (no cache here) replaces index objects; the next listing drops them."""
    source, cache = two_snapshots
    before = entries(cache)
    with Repository.open(open_storage(location, cache=False), PW) as repo:
        first = repo.list_snapshots()[0]
        forget(repo, ForgetOptions(snapshots=(first.id.hex(),)))
        os.remove(source / "big.bin")  # nothing of the first pack stays used
        do_backup(repo, source)
        forget(repo, ForgetOptions(snapshots=(repo.list_snapshots()[0].id.hex(),)))
        result = prune(repo, PruneOptions())
        assert result.deleted_indexes >= 1
        remote = {i.name for i in repo.backend.list("index/")} | {i.name for i in repo.backend.list("snapshots/")}
    gone = before - remote
    assert any(n.startswith("index/") for n in gone) and any(n.startswith("snapshots/") for n in gone)
    backend, _ = cached(location, cache)
    with Repository.open(backend, PW) as repo:
        assert [s.id for s in repo.list_snapshots()] == [s.id for s in Repository.open(open_storage(location, cache=False), PW).list_snapshots()]
        repo.load_index()
    assert entries(cache) == remote
    # A copy of an object the remote does not list is never used, and swept at the next listing.
    folder = next(cache.glob("*/snapshots")).parent
    ghost = "snapshots/" + "ab" * 32
    shutil.copy(folder / sorted(remote)[-1], folder / ghost)
    os.utime(folder / ghost, (1, 1))
    backend, _ = cached(location, cache)
    with Repository.open(backend, PW) as repo:
        assert ghost.split("/")[1] not in {s.id.hex() for s in repo.list_snapshots()}
    assert not (folder / ghost).exists()


def test_prune_through_the_cache_drops_what_it_deletes(location: str, two_snapshots: tuple[Path, Path]) -> None:
    _, cache = two_snapshots
    backend, _ = cached(location, cache)
    with Repository.open(backend, PW) as repo:
        forget(repo, ForgetOptions(snapshots=(repo.list_snapshots()[0].id.hex(),)))
        prune(repo, PruneOptions())
        remote = {i.name for i in repo.backend.list("index/")} | {i.name for i in repo.backend.list("snapshots/")}
    assert entries(cache) == remote


def test_an_unusable_cache_folder_only_costs_downloads(location: str, two_snapshots: tuple[Path, Path], tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_bytes(b"")
    backend, counting = cached(location, blocked)
    with Repository.open(backend, PW) as repo:
        assert len(repo.list_snapshots()) == 2
    assert counting.loads["snapshots"] == 2


class TestCacheConformance(BackendConformance):
    """The wrapper keeps the storage contract, with the suite's own objects cached."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        backend = CacheBackend(MemoryBackend(), tmp_path / "cache")
        backend.attach("ab" * 32, ("data/", "index/", "snapshots/"))
        yield backend


def test_reads_before_a_listing_and_ranges(tmp_path: Path) -> None:
    inner = CountingBackend(MemoryBackend())
    inner.store("index/one", b"0123456789")
    backend = CacheBackend(inner, tmp_path)
    assert backend.load("index/one", 2, 3) == b"234"  # not attached yet: passed through
    backend.attach("cd" * 32, ("index/",))
    assert backend.load("index/one", 2, 3) == b"234"  # never listed: downloaded whole, kept
    assert backend.load("index/one", 8) == b"89"  # then served from the copy
    assert inner.loads["index"] == 2 and backend.stats.hits == 1
    with pytest.raises(StorageError, match="holds only 10 bytes"):
        backend.load("index/one", 5, 6)
    inner.inner.delete("index/one")  # gone behind our back: the next listing drops it
    assert list(backend.list("index/")) == []
    with pytest.raises(ObjectMissing):  # the copy is not served for an object the remote lost
        backend.load("index/one")


# -- through the command, in separate processes ----------------------------------------------------


def s3_command(location: str, tmp_path: Path) -> Remote:
    return Remote("s3", location, aws_env(tmp_path))


def cache_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("cairn.storage.cache: local cache"))


def test_two_processes_share_one_cache(location: str, tmp_path: Path) -> None:
    remote = s3_command(location, tmp_path)
    shared = {"CAIRN_CACHE_DIR": str(tmp_path / "shared-cache")}
    remote.ok("init", *FAST_KDF_ARGS, env=shared)
    sources = [make_tree(tmp_path / f"src{i}", seed=10 + i, big=200_000) for i in range(2)]
    running = [remote.start("backup", str(source), env=shared) for source in sources]
    for process in running:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    again = remote.ok("--debug", "--json", "snapshots", env=shared)
    assert "2 objects read from it" in cache_line(again.stderr) and ", 0 downloaded" in cache_line(again.stderr)
    snapshots = json.loads(again.stdout)
    for i, source in enumerate(sources):
        snapshot = next(s["id"] for s in snapshots if s["paths"] == [str(source)])
        remote.ok("restore", snapshot, "--target", str(tmp_path / f"out{i}"), env=shared)
        assert digest_tree(restored(tmp_path / f"out{i}", source)) == digest_tree(source)
    remote.ok("check", env=shared)
    assert list((tmp_path / "shared-cache").glob("*/snapshots/*"))
    assert not list((tmp_path / "shared-cache").rglob(".tmp-*"))


def test_no_cache_option_and_cache_dir_variable(location: str, tmp_path: Path) -> None:
    remote = s3_command(location, tmp_path)
    xdg = tmp_path / "xdg"
    env = {"XDG_CACHE_HOME": str(xdg)}
    remote.ok("init", *FAST_KDF_ARGS, env=env)
    remote.ok("backup", str(make_tree(tmp_path / "src", seed=5, big=100_000)), env=env)
    assert list((xdg / "cairn").glob("*/snapshots/*"))
    shutil.rmtree(xdg)
    done = remote.ok("--debug", "snapshots", "--no-cache", env=env)
    assert "local cache" not in done.stderr and not xdg.exists()
    moved = tmp_path / "moved"
    remote.ok("snapshots", env={**env, "CAIRN_CACHE_DIR": str(moved)})
    assert list(moved.glob("*/snapshots/*")) and not xdg.exists()
    # A cache that cannot be made is one warning, and the command works.
    xdg.write_bytes(b"not a folder")
    done = remote.ok("snapshots", env=env)
    assert done.stdout.count("\n") > 1
    assert done.stderr.startswith(f"cairn: warning: the local cache {xdg}/cairn/") and done.stderr.count("\n") == 1


def test_local_repositories_have_no_cache(repo_dir: Path, cli, data: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("-r", str(repo_dir), "backup", str(data)).exit_code == 0
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "cairn"
    assert not list(cache.glob("*/snapshots")) and not list(cache.glob("*/index"))
