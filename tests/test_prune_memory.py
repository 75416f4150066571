"""Prune's memory stays within about twice the in-memory index (the issue's bound; restic
needs about six times): measured with tracemalloc, which sees NumPy's buffers too, on an index
of 300,000 blobs."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import numpy as np

from conftest import FAST_KDF, SRC
from cairn.files.tree import Node, decode_tree, encode_tree
from cairn.ops.prune import PruneOptions, prune
from cairn.policy.repack import Limit
from cairn.repo import index as index_mod
from cairn.repo.blob import BlobType
from cairn.repo.pack import object_name
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.testing.memory import MemoryBackend

BLOBS, PER_PACK, PER_FILE = 300_000, 100, 1000


def build() -> Repository:
    """Index objects naming 3,000 packs of 100 blobs (the packs are stand-ins: prune reads
    no data when it repacks nothing); one snapshot of 299 folders, each with a file of 1,000
    blobs, uses all but ten packs' blobs."""
    backend = MemoryBackend()
    repo = Repository.init(backend, b"pw", FAST_KDF)
    ids = np.frombuffer(os.urandom(32 * BLOBS), dtype=np.uint8).reshape(-1, 32)
    records = np.zeros(BLOBS, dtype=index_mod.record_dtype())
    records["id"] = ids
    records["length"] = 1000
    records["raw"] = 990
    records["offset"] = np.tile(np.arange(PER_PACK, dtype=np.uint32) * 1000, BLOBS // PER_PACK)
    packs = []
    for p in range(BLOBS // PER_PACK):
        pack_id = os.urandom(32)
        backend.store(object_name(pack_id), b"")
        packs.append((pack_id, records[p * PER_PACK : (p + 1) * PER_PACK].tobytes()))
    for start in range(0, len(packs), 500):
        body = index_mod.encoding.pack({"v": 1, "packs": [list(p) for p in packs[start : start + 500]], "supersedes": []})
        repo.store_object("index", os.urandom(32).hex(), body)
    used = [ids[i].tobytes() for i in range(BLOBS - 10 * PER_PACK)]
    with repo.lock():
        folders = []
        for i in range(0, len(used), PER_FILE):  # one folder per 1 GB file, as a real tree has
            tree, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"f", "file", content=used[i : i + PER_FILE])]))
            folders.append(Node(f"d{i:06d}".encode(), "dir", subtree=tree))
        root, _ = repo.save_blob(BlobType.TREE, encode_tree(folders))
        repo.flush()
        repo.save_snapshot(Snapshot("files", root, [b"/"], "h", "u"))
    return repo


def test_prune_memory_is_within_twice_the_index() -> None:
    repo = build()
    probe = Repository.open(repo.backend, b"pw")
    probe.load_index()
    index_bytes = probe.index.memory_bytes()
    assert index_bytes >= 49 * BLOBS
    del probe
    tracemalloc.start()
    try:
        result = prune(Repository.open(repo.backend, b"pw"), PruneOptions(max_unused=Limit(percent=100)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.packs_dropped == 10 and result.used_blobs == BLOBS - 10 * PER_PACK + 300
    assert peak <= 2 * index_bytes, f"peak {peak / 2**20:.1f} MiB for an index of {index_bytes / 2**20:.1f} MiB"


def test_a_big_folder_is_walked_without_holding_it_decoded() -> None:
    """Prune's walk reads a folder of 50,000 files entry by entry: its traced peak stays well
    under what the folder's entries take decoded (a copy of /usr has such folders, and they
    were prune's peak)."""
    backend = MemoryBackend()
    repo = Repository.init(backend, b"pw", FAST_KDF)
    with repo.lock():
        data, _ = repo.save_blob(BlobType.DATA, b"x")
        plaintext = encode_tree([Node(f"f{i:06d}".encode(), "file", size=1, content=[data]) for i in range(50_000)])
        folder, _ = repo.save_blob(BlobType.TREE, plaintext)
        root, _ = repo.save_blob(BlobType.TREE, encode_tree([Node(b"big", "dir", subtree=folder)]))
        repo.flush()
        repo.save_snapshot(Snapshot("files", root, [b"/"], "h", "u"))
    tracemalloc.start()
    try:
        decoded = decode_tree(plaintext, "tree")
        _, decoded_peak = tracemalloc.get_traced_memory()
        del decoded
        tracemalloc.reset_peak()
        result = prune(Repository.open(backend, b"pw"), PruneOptions())
        _, prune_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.used_blobs == 3
    assert prune_peak < decoded_peak / 2, f"prune peaked at {prune_peak / 2**20:.1f} MiB, the folder decoded takes {decoded_peak / 2**20:.1f}"


def test_prune_derives_the_key_before_loading_numpy() -> None:
    """The command line builds prune's options and opens the repository without importing
    NumPy (16 MiB resident): otherwise it sits under the key derivation's 32 MiB, the peak of a
    prune of a small repository."""
    code = ("import sys; from cairn.cli.prune_cmd import build_options; build_options('5%', '1G', False); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy'))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
