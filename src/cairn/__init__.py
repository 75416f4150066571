"""cairn: deduplicated, compressed, encrypted backups of files and whole disks.

The public Python API. Everything a script needs is importable from here::

    import cairn
    repo = cairn.open_repository(cairn.RepoSelection(location="/media/usb/backups"))
    for snap in cairn.list_snapshots(repo):
        print(snap.short_id, snap.time, snap.paths)

Names are loaded on first use (PEP 562), so ``import cairn`` — and therefore every ``cairn``
command, even ``--help`` — does not pay for NumPy, the crypto libraries and every operation up
front. ``__all__`` is the contract, pinned by tests/test_api.py: removing or renaming a name is
a breaking change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cairn.version import __version__

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the repository and its errors
    "Repository": "cairn.repo.repository",
    "KdfParams": "cairn.repo.keys",
    "CairnError": "cairn.errors",
    "UsageError": "cairn.errors",
    "RepositoryNotFound": "cairn.errors",
    "WrongPassword": "cairn.errors",
    "UnsupportedVersion": "cairn.errors",
    "DamagedObject": "cairn.errors",
    "RepositoryLocked": "cairn.errors",
    "NotFound": "cairn.errors",
    "StorageError": "cairn.errors",
    "ObjectMissing": "cairn.errors",
    "StorageFull": "cairn.errors",
    "StorageReadOnly": "cairn.errors",
    "StorageAccessDenied": "cairn.errors",
    "PartialSuccess": "cairn.errors",
    "CheckFailed": "cairn.errors",
    "DeviceError": "cairn.errors",
    "VerifyFailed": "cairn.errors",
    "Interrupted": "cairn.errors",
    # choosing and opening a repository
    "RepoSelection": "cairn.ops.access",
    "open_backend": "cairn.ops.access",
    "open_repository": "cairn.ops.access",
    "ensure_repository": "cairn.ops.access",
    "default_location": "cairn.ops.access",
    # operations: options in, result out
    "init": "cairn.ops.init",
    "InitOptions": "cairn.ops.init",
    "InitResult": "cairn.ops.init",
    "list_keys": "cairn.ops.keys",
    "add_key": "cairn.ops.keys",
    "change_password": "cairn.ops.keys",
    "remove_key": "cairn.ops.keys",
    "AddKeyOptions": "cairn.ops.keys",
    "KeyEntry": "cairn.ops.keys",
    "PasswordChange": "cairn.ops.keys",
    "list_snapshots": "cairn.ops.snapshots",
    "SnapshotFilter": "cairn.ops.snapshots",
    "SnapshotInfo": "cairn.ops.snapshots",
    "cat": "cairn.ops.cat",
    "CatOptions": "cairn.ops.cat",
    "CatResult": "cairn.ops.cat",
    "unlock": "cairn.ops.unlock",
    "UnlockOptions": "cairn.ops.unlock",
    "UnlockResult": "cairn.ops.unlock",
    "backup": "cairn.ops.backup",
    "BackupOptions": "cairn.ops.backup",
    "BackupResult": "cairn.ops.backup",
    "restore": "cairn.ops.restore",
    "RestoreOptions": "cairn.ops.restore",
    "RestoreResult": "cairn.ops.restore",
    "check": "cairn.ops.check",
    "CheckOptions": "cairn.ops.check",
    "CheckResult": "cairn.ops.check",
    "forget": "cairn.ops.forget",
    "ForgetOptions": "cairn.ops.forget",
    "ForgetResult": "cairn.ops.forget",
    "prune": "cairn.ops.prune",
    "PruneOptions": "cairn.policy.repack",
    "PruneResult": "cairn.ops.prune",
    "stats": "cairn.ops.stats",
    "StatsOptions": "cairn.ops.stats",
    "StatsResult": "cairn.ops.stats",
    "copy": "cairn.ops.copy",
    "CopyOptions": "cairn.ops.copy",
    "CopyResult": "cairn.ops.copy",
    "repair_index": "cairn.ops.repair",
    "RepairIndexResult": "cairn.ops.repair",
    "repair_snapshots": "cairn.ops.repair",
    "RepairSnapshotsOptions": "cairn.ops.repair",
    "RepairSnapshotsResult": "cairn.ops.repair",
    "tag": "cairn.ops.tag",
    "TagOptions": "cairn.ops.tag",
    "TagResult": "cairn.ops.tag",
    "ls": "cairn.ops.ls",
    "LsOptions": "cairn.ops.ls",
    "LsResult": "cairn.ops.ls",
    "find": "cairn.ops.find",
    "FindOptions": "cairn.ops.find",
    "FindResult": "cairn.ops.find",
    "diff": "cairn.ops.diff",
    "DiffOptions": "cairn.ops.diff",
    "DiffResult": "cairn.ops.diff",
    "dump": "cairn.ops.dump",
    "DumpOptions": "cairn.ops.dump",
    "DumpResult": "cairn.ops.dump",
    "image": "cairn.ops.image",
    "ImageOptions": "cairn.ops.image",
    "ImageResult": "cairn.ops.image",
    "image_restore": "cairn.ops.image_restore",
    "ImageRestoreOptions": "cairn.ops.image_restore",
    "ImageRestoreResult": "cairn.ops.image_restore",
    "image_ls": "cairn.ops.image_files",
    "ImageLsOptions": "cairn.ops.image_files",
    "ImageLsResult": "cairn.ops.image_files",
    "image_dump": "cairn.ops.image_files",
    "ImageDumpOptions": "cairn.ops.image_files",
    "ImageDumpResult": "cairn.ops.image_files",
}

__all__ = ["__version__", "errors", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("cairn.errors")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cairn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see; kept in step with _EXPORTS by tests/test_api.py
    from cairn import errors
    from cairn.errors import (
        CairnError,
        CheckFailed,
        DamagedObject,
        Interrupted,
        NotFound,
        ObjectMissing,
        PartialSuccess,
        RepositoryLocked,
        RepositoryNotFound,
        StorageAccessDenied,
        StorageError,
        StorageFull,
        StorageReadOnly,
        UnsupportedVersion,
        UsageError,
        WrongPassword,
    )
    from cairn.ops.access import RepoSelection, default_location, ensure_repository, open_backend, open_repository
    from cairn.ops.backup import BackupOptions, BackupResult, backup
    from cairn.ops.cat import CatOptions, CatResult, cat
    from cairn.ops.check import CheckOptions, CheckResult, check
    from cairn.ops.init import InitOptions, InitResult, init
    from cairn.ops.keys import AddKeyOptions, KeyEntry, PasswordChange, add_key, change_password, list_keys, remove_key
    from cairn.ops.restore import RestoreOptions, RestoreResult, restore
    from cairn.ops.snapshots import SnapshotFilter, SnapshotInfo, list_snapshots
    from cairn.ops.unlock import UnlockOptions, UnlockResult, unlock
    from cairn.repo.keys import KdfParams
    from cairn.repo.repository import Repository
