"""Snapshots: the code a job runs, content-addressed.

A snapshot is a manifest of (path, mode, size, SHA-256) whose own hash is its id
(``_manifest``); the client scans a project into one (``_scan``), the server keeps the blobs
once each (``_blobs``), records who made which snapshot (``_registry``), takes uploads through
:class:`Snapshots` (``_service``) and makes a private working copy for each run (``_workcopy``).
Names are imported on first use, so the client does not load the server's side (trio, SQLite).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._blobs import BlobStore, parse_pack
    from ._git import GitState, git_state
    from ._manifest import (
        Attachment,
        FileEntry,
        LinkEntry,
        Manifest,
        Plan,
        SnapshotInfo,
        check_manifest,
        check_path,
        manifest_bytes,
        snapshot_id,
    )
    from ._scan import DEFAULT_IGNORES, Scan, SnapshotError, find_root, scan_tree
    from ._service import Snapshots

_LAZY = {
    "BlobStore": "._blobs",
    "parse_pack": "._blobs",
    "Attachment": "._manifest",
    "FileEntry": "._manifest",
    "LinkEntry": "._manifest",
    "Manifest": "._manifest",
    "SnapshotInfo": "._manifest",
    "check_manifest": "._manifest",
    "check_path": "._manifest",
    "manifest_bytes": "._manifest",
    "snapshot_id": "._manifest",
    "DEFAULT_IGNORES": "._scan",
    "Scan": "._scan",
    "SnapshotError": "._scan",
    "find_root": "._scan",
    "scan_tree": "._scan",
    "Plan": "._manifest",
    "GitState": "._git",
    "git_state": "._git",
    "Snapshots": "._service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fetchml.snapshots' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_IGNORES",
    "Attachment",
    "BlobStore",
    "FileEntry",
    "GitState",
    "LinkEntry",
    "Manifest",
    "Plan",
    "Scan",
    "SnapshotError",
    "SnapshotInfo",
    "Snapshots",
    "check_manifest",
    "check_path",
    "find_root",
    "git_state",
    "manifest_bytes",
    "parse_pack",
    "scan_tree",
    "snapshot_id",
]
