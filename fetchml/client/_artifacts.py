"""What a job leaves, from the client: its manifest, its files (listed, downloaded and checked
against their hashes), a validation of both, and pruning.  Blocking, over HTTP (run in a
worker thread by :class:`~fetchml.client.Client`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from fetchml.artifacts import OutputFile, RunManifest, Validation
from fetchml.errors import FetchMLError
from fetchml.protocol import FilesBody, PruneReport, PruneRequest

from ._http import HttpSession, quote_path

__all__ = ["HashMismatchError", "download", "files", "manifest", "prune", "select", "validate"]

_CHUNK = 1 << 20
Progress = Callable[[int], None]


def manifest(session: HttpSession, job_id: int) -> RunManifest:
    return session.call("GET", f"/api/v1/jobs/{job_id}/manifest", RunManifest, job_id=job_id)


def files(session: HttpSession, job_id: int) -> FilesBody:
    return session.call("GET", f"/api/v1/jobs/{job_id}/files", FilesBody, job_id=job_id)


def validate(session: HttpSession, job_id: int) -> Validation:
    return session.call("POST", f"/api/v1/jobs/{job_id}/validate", Validation, job_id=job_id)


def prune(session: HttpSession, request: PruneRequest) -> PruneReport:
    return session.call("POST", "/api/v1/prune", PruneReport, json=request)


class HashMismatchError(FetchMLError):
    """Raised when a downloaded file does not match the SHA-256 its job's manifest records."""

    code = "hash_mismatch"


def _safe_target(dest: Path, relative: str) -> Path:
    """Where ``relative`` (a path the server sent) goes under ``dest``: never outside it."""
    target = (dest / relative).resolve()
    if target != dest.resolve() and dest.resolve() not in target.parents:
        raise FetchMLError(f"the server sent a path outside the destination: {relative!r}")
    return target


def download(
    session: HttpSession,
    job_id: int,
    wanted: OutputFile,
    dest: Path,
    *,
    progress: Progress | None = None,
) -> Path:
    """Download one output file to ``dest/<its path>`` (through a temporary file), checking
    its SHA-256 when the manifest has it.  Raises :class:`HashMismatchError`."""
    target = _safe_target(dest, wanted.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    digest = hashlib.sha256()
    path = f"/api/v1/jobs/{job_id}/files/{quote_path(wanted.path)}"
    with session.stream("GET", path, job_id=job_id) as response, temporary.open("wb") as out:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    if wanted.sha256 is not None and digest.hexdigest() != wanted.sha256:
        temporary.unlink()
        raise HashMismatchError(f"{wanted.path}: the download does not match its recorded hash")
    os.replace(temporary, target)
    return target


def select(listing: list[OutputFile], paths: list[str]) -> list[OutputFile]:
    """The files of ``listing`` that ``paths`` name: a file, or every file under a folder; all
    of them when ``paths`` is empty.  Raises FetchMLError for a path that names nothing."""
    if not paths:
        return listing
    chosen: dict[str, OutputFile] = {}
    for wanted in paths:
        folder = wanted.strip("/") + "/"
        matched = [f for f in listing if f.path == wanted.strip("/") or f.path.startswith(folder)]
        if not matched:
            raise FetchMLError(f"the job has no output {wanted}")
        chosen.update((f.path, f) for f in matched)
    return [chosen[path] for path in sorted(chosen)]
