"""The pieces of restore that need no repository: patterns and sparse writing."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from cairn.files.restore_content import BLOCK, is_zero, write_sparse
from cairn.files.restore_select import Pattern, Selection, planned_bytes
from cairn.files.tree import Node


@pytest.mark.parametrize("pattern, path, expected", [
    ("*.txt", "/a/b.txt", True),
    ("*.txt", "/a/b.txt.bak", False),
    ("*.txt", "/b.txt", True),
    ("b.txt", "/a/xb.txt", False),  # whole components only
    ("docs/*.txt", "/home/u/docs/a.txt", True),
    ("docs/*.txt", "/home/u/docs/sub/a.txt", False),  # * stays in its component
    ("/home", "/home", True),
    ("/home", "/x/home", False),  # anchored
    ("/home/**/x", "/home/x", True),  # ** may be no component
    ("/home/**/x", "/home/a/b/c/x", True),
    ("/home/**", "/home/a/b", True),
    ("**/x", "/x", True),
    ("/a/?", "/a/bc", False),
    ("[!x]y", "/zy", True),
    ("[^x]y", "/xy", False),
    ("[a-c]", "/b", True),
    ("a\\*", "/a*", True),
    ("a\\*", "/ab", False),
    ("dir/", "/p/dir", True),  # a trailing slash is ignored
])
def test_patterns(pattern: str, path: str, expected: bool) -> None:
    assert Pattern.compile(pattern).matches(os.fsencode(path)) is expected


def test_patterns_match_raw_bytes() -> None:
    name = os.fsdecode(b"caf\xe9*")
    assert Pattern.compile(name).matches(b"/x/caf\xe9-latin1")
    assert not Pattern.compile(name).matches("/x/café".encode())


def test_an_anchored_include_prunes_the_folders_it_cannot_reach() -> None:
    sel = Selection.from_patterns(["/home/u/**/*.txt"])
    assert [sel.worth_entering(p) for p in (b"/home", b"/home/u", b"/home/u/a/b", b"/var", b"/home/v")] == [
        True, True, True, False, False]
    assert Selection.from_patterns(["*.txt"]).worth_entering(b"/anything")


def test_deletion_follows_the_selection() -> None:
    sel = Selection.from_patterns(["*.txt"], ["/keep/*"])
    assert sel.wants(b"/a/stray.txt", inside_included=False)
    assert not sel.wants(b"/a/stray.jpg", inside_included=False)
    assert sel.wants(b"/a/stray.jpg", inside_included=True)  # inside an included folder
    assert not sel.wants(b"/keep/stray.txt", inside_included=True)  # an exclude wins


@pytest.mark.parametrize("bad", ["[abc", "/", ""])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Pattern.compile(bad)


def test_sparse_writes_give_back_the_bytes_and_skip_zero_blocks(tmp_path: Path) -> None:
    rng = random.Random(3)
    for trial in range(200):
        size = rng.randrange(0, 5 * BLOCK)
        data = bytearray(size)
        for _ in range(rng.randrange(0, 4)):
            start = rng.randrange(0, size + 1)
            end = min(size, start + rng.randrange(0, 2 * BLOCK))
            data[start:end] = rng.randbytes(end - start)
        offset = rng.randrange(0, 3 * BLOCK)
        path = tmp_path / f"t{trial}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        try:
            written, end_written = write_sparse(fd, bytes(data), offset)
            if end_written < offset + size:
                os.ftruncate(fd, offset + size)
            assert os.pread(fd, size, offset) == data, trial
            assert written <= size and (written == 0) == is_zero(bytes(data)) or size == 0
        finally:
            os.close(fd)
        path.unlink()


def test_a_blob_of_data_then_zeros_leaves_a_hole(tmp_path: Path) -> None:
    data = b"x" * 1000 + bytes(64 * BLOCK)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert write_sparse(fd, data, 0) == (BLOCK, BLOCK)  # one block with data written
        os.ftruncate(fd, len(data))
        assert os.fstat(fd).st_blocks * 512 <= 2 * BLOCK
    finally:
        os.close(fd)


def test_the_progress_total_counts_what_the_patterns_select_and_each_hard_linked_file_once() -> None:
    sub = [Node(b"a.txt", "file", size=10, links=(1, 7, 2)), Node(b"b.bin", "file", size=1000)]
    trees = {b"S" * 32: sub}
    top = [Node(b"d", "dir", subtree=b"S" * 32), Node(b"c.txt", "file", size=5, links=(1, 7, 2)),
           Node(b"e.txt", "file", size=100)]
    everything = Selection()
    assert planned_bytes(trees.__getitem__, b"", top, True, everything, threading.Event()) == 1105
    txt = Selection.from_patterns(["*.txt"], ["e.txt"])
    assert planned_bytes(trees.__getitem__, b"", top, False, txt, threading.Event()) == 5
    stopped = threading.Event()
    stopped.set()
    assert planned_bytes(trees.__getitem__, b"", top, True, everything, stopped) is None
