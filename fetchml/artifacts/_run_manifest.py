"""``run_manifest.json``: what one run was, written into its output folder by the server.

At the start of a run: the spec, the user, the snapshot (id, files, bytes), the provenance (git
state, command line), the host, the GPUs given (ids, with names and UUIDs where ``nvidia-smi``
says), the attempt and its start.  At its end, again with the end, the exit code, how it ended
and every output file (path, size, SHA-256).  Served at ``GET /api/v1/jobs/{id}/manifest``
and checked by ``ml validate``.  Written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import msgspec

from .._models import Job, JobSpec
from ._outputs import MANIFEST_NAME, OutputFile, list_outputs
from ._paths import OutsideError, open_inside

__all__ = ["Gpu", "RunManifest", "SnapshotRef", "read_run_manifest", "write_run_manifest"]


class Gpu(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A GPU a run was given: its index, and its name and UUID where ``nvidia-smi`` says."""

    index: int
    name: str | None = None
    uuid: str | None = None


class SnapshotRef(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    files: int
    bytes: int


class RunManifest(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a job, as :func:`write_run_manifest` recorded it."""

    version: int = 1
    job_id: int
    attempt: int
    user: str
    spec: JobSpec
    snapshot: SnapshotRef | None = None  # the provenance (git state, command line) is the spec's
    host: str
    gpus: list[Gpu] = msgspec.field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    # How the run ended: exit, timeout, cancel, vanished (no exit status), error; None while
    # it runs.  (Whether the job is then retried is the scheduler's business: see the job.)
    end: str | None = None
    outputs: list[OutputFile] | None = None  # None while the run goes on


_decoder = msgspec.json.Decoder(RunManifest)
_encoder = msgspec.json.Encoder()


def _gpu(index: int, names: dict[int, tuple[str, str]]) -> Gpu:
    name, uuid = names.get(index, (None, None))
    return Gpu(index=index, name=name, uuid=uuid)


def started_manifest(
    job: Job,
    *,
    snapshot: SnapshotRef | None,
    gpu_names: dict[int, tuple[str, str]],
    host: str | None = None,
) -> RunManifest:
    """The manifest of attempt ``job.attempts``, as it starts."""
    return RunManifest(
        job_id=job.id,
        attempt=job.attempts,
        user=job.user,
        spec=job.spec,
        snapshot=snapshot,
        host=host or socket.gethostname(),
        gpus=[_gpu(index, gpu_names) for index in job.gpus],
        started_at=job.started_at,
    )


def finished_manifest(
    started: RunManifest,
    output_dir: Path,
    *,
    finished_at: float,
    exit_code: int | None,
    end: str,
) -> RunManifest:
    """``started`` completed with the run's end and its outputs (hashed: blocks on reading
    every output)."""
    return msgspec.structs.replace(
        started,
        finished_at=finished_at,
        exit_code=exit_code,
        end=end,
        outputs=list_outputs(output_dir, hashed=True),
    )


def write_run_manifest(output_dir: Path, manifest: RunManifest) -> None:
    """Write ``manifest`` as ``output_dir/run_manifest.json`` (atomically: a temporary file,
    then a rename).  The job may have made its output folder, or the file, a symlink: neither
    is followed (the rename replaces a link at the file's name).  Raises OSError, ``ELOOP``
    where the folder is a link."""
    output_dir.mkdir(parents=True, exist_ok=True)
    folder = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    temporary = f".{MANIFEST_NAME}.{os.getpid()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o644, dir_fd=folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(_encoder.encode(manifest))
        os.replace(temporary, MANIFEST_NAME, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise
    finally:
        os.close(folder)


def read_run_manifest(output_dir: Path) -> RunManifest | None:
    """The run manifest in ``output_dir``, or None if there is none (or it is unreadable: the
    job may have overwritten it).  Never follows a symlink."""
    try:
        fd, _ = open_inside(output_dir, MANIFEST_NAME)
    except OutsideError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(64 << 20)
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None
