"""``ml validate``: a run's snapshot and outputs checked again against its manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import msgspec

from ._outputs import list_outputs
from ._run_manifest import RunManifest

__all__ = ["Validation", "validate_run"]

_CHUNK = 1 << 20


class Validation(msgspec.Struct, frozen=True, kw_only=True):
    """What was checked (``checks``: blobs and files re-hashed) and what did not match."""

    ok: bool
    checks: int
    errors: list[str]


def _hash_file(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def validate_run(
    manifest: RunManifest,
    output_dir: Path,
    *,
    snapshot_blobs: dict[str, str] | None,
    blob_path: Callable[[str], Path],
) -> Validation:
    """Re-hash the snapshot's blobs (``snapshot_blobs``: path -> sha256; None when the run had
    no snapshot) and the outputs the manifest lists.  Blocks on reading all of them."""
    errors: list[str] = []
    checks = 0
    for path, sha256 in sorted((snapshot_blobs or {}).items()):
        checks += 1
        found = _hash_file(blob_path(sha256))
        if found is None:
            errors.append(f"snapshot file {path}: its blob {sha256} is missing on the server")
        elif found != sha256:
            errors.append(f"snapshot file {path}: its blob does not match its hash (damaged)")
    if manifest.outputs is None:
        errors.append("the run has not ended: its outputs are not recorded yet")
        return Validation(ok=False, checks=checks, errors=errors)
    present = {entry.path: entry for entry in list_outputs(output_dir, hashed=True)}
    for recorded in manifest.outputs:
        checks += 1
        now = present.pop(recorded.path, None)
        if now is None:
            errors.append(f"output {recorded.path}: missing")
        elif now.sha256 != recorded.sha256 or now.size != recorded.size:
            errors.append(f"output {recorded.path}: changed since the run ended")
    errors += [f"output {path}: not in the manifest (added later)" for path in sorted(present)]
    return Validation(ok=not errors, checks=checks, errors=errors)
