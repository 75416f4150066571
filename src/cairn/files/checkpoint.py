"""Resuming an interrupted backup: a small local file naming the last checkpoint's tree.

Design, and why not a partial snapshot (borg's ``.checkpoint`` archives): a checkpoint is a
partial root tree stored in the repository like any other tree, with its packs and an index
written (`Repository.flush`), so everything it references survives a kill -9. What is local is
only the pointer to it, in the user's cache folder
(``platformdirs.user_cache_dir("cairn")/<repository id>/checkpoints/<host and paths>``):

- a partial snapshot would be listed by `snapshots`, picked by ``latest`` for a restore, kept
  or removed by retention rules, and compared by `diff`, all of which would then have to know
  about it; and deleting it afterwards is impossible in an append-only repository;
- the pointer costs nothing to delete once the real snapshot is saved, and a stale one is
  harmless: the next backup of the same paths on the same host uses the checkpoint tree only as
  an extra parent (unchanged files keep their ids, after the same index check as for any
  parent), so a checkpoint whose data was pruned meanwhile just means those files are read.

The price: a backup resumed on another machine, or after the cache folder was wiped, reads
everything again (the packs already indexed are still deduplicated against).

Beside the pointer, a **pack journal** (`PackJournal`, same name with ``.packs``) names the
packs the running backup stored but has not named in an index object yet (at most
INDEX_EVERY_PACKS). After a kill -9 the next run adopts them (`cairn.repo.adopt`, rule W4 of
docs/FORMAT.md §12) instead of uploading their data again. It is rewritten after every pack, so
it is not fsynced (a lost journal only costs the upload it would have saved); the pointer is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cairn.storage import cache as object_cache
from cairn.storage.local import replace_file

FORMAT = 1


def cache_root() -> Path:
    """cairn's local cache folder ($CAIRN_CACHE_DIR, else $XDG_CACHE_HOME/cairn on Linux),
    shared with the storage layer's cache of index and snapshot objects."""
    return object_cache.cache_root()


@dataclass
class Checkpoint:
    tree: bytes
    """The partial root tree, in the repository."""
    program: str
    """Who wrote it; its folders are reused whole only by the same version (see filescache)."""
    time_ns: int


class CheckpointStore:
    """The checkpoint of one (repository, host, paths) backup."""

    def __init__(self, repository_id: bytes, host: str, paths: list[bytes], root: Path | str | None = None) -> None:
        import hashlib  # here: it loads libcrypto (~4 MiB RSS), which should not sit under the KDF's peak

        key = hashlib.sha256(repr((host, sorted(paths))).encode()).hexdigest()[:32]
        self.path = Path(root or cache_root()) / repository_id.hex() / "checkpoints" / key

    def load(self) -> Checkpoint | None:
        """The recorded checkpoint, or None (also when the file is unreadable: it is only a hint)."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("v") != FORMAT:
                return None
            tree = bytes.fromhex(data["tree"])
            if len(tree) != 32:
                return None
            return Checkpoint(tree, str(data["program"]), int(data["time"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, checkpoint: Checkpoint) -> None:
        """Write atomically and durably (a torn file must not be read as a checkpoint, and after
        a power loss the pointer must name the checkpoint whose data the repository holds, not
        vanish); errors are ignored, since the backup itself does not depend on this file."""
        _write_file(self.path, json.dumps({
            "v": FORMAT, "tree": checkpoint.tree.hex(), "program": checkpoint.program, "time": checkpoint.time_ns,
        }).encode(), durable=True)

    def clear(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass

    def journal(self) -> PackJournal:
        return PackJournal(self.path.with_name(self.path.name + ".packs"))


class PackJournal:
    """The packs of a running backup that no index object names yet (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[bytes]:
        """The packs a previous run noted; [] when there is no readable journal."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("v") != FORMAT:
                return []
            packs = [bytes.fromhex(p) for p in data["packs"]]
            return [p for p in packs if len(p) == 32]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []

    def save(self, packs: list[bytes]) -> None:
        """Record `packs` (the whole list, replacing the last); errors are ignored."""
        _write_file(self.path, json.dumps({"v": FORMAT, "packs": [p.hex() for p in packs]}).encode(), durable=False)

    def clear(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass


def _write_file(path: Path, data: bytes, durable: bool) -> None:
    """Replace `path` by `data` atomically (and durably: `replace_file`); errors are ignored, as
    nothing depends on these files but speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, data, durable=durable)
    except OSError:
        pass
