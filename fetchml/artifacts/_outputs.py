"""A job's outputs: what it wrote to ``FETCHML_OUTPUT_DIR``, listed, hashed, and tarred.

Everything under the job's output folder is an output, except the run manifest the server
writes there (``run_manifest.json``).  Reading goes through :mod:`._paths` (no symlink is ever
followed).  Blocking: call these from worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from collections.abc import Generator
from pathlib import Path

import msgspec

from ._paths import OutsideError, open_inside, walk_inside

__all__ = ["MANIFEST_NAME", "OutputFile", "list_outputs", "tar_outputs"]

MANIFEST_NAME = "run_manifest.json"
_CHUNK = 1 << 20


class OutputFile(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One output file: its path in the output folder, size, modification time, and its
    SHA-256 once the job has ended."""

    path: str
    size: int
    mtime: float
    sha256: str | None = None


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_outputs(output_dir: Path, *, hashed: bool, under: str = "") -> list[OutputFile]:
    """The files under ``output_dir`` (or its folder ``under``), sorted, with their hashes if
    ``hashed``.  Raises :class:`OutsideError` when ``under`` names no folder inside."""
    try:
        fd, _ = open_inside(output_dir, under)
    except OutsideError:
        if under:
            raise
        return []  # no outputs (yet)
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    try:
        found = []
        for relative, child, info in walk_inside(fd, prefix):
            if relative == MANIFEST_NAME:
                continue
            found.append(
                OutputFile(
                    path=relative,
                    size=info.st_size,
                    mtime=info.st_mtime,
                    sha256=_sha256(child) if hashed else None,
                )
            )
        return found
    finally:
        os.close(fd)


def tar_outputs(output_dir: Path, under: str) -> Generator[bytes, None, None]:
    """A tar stream (POSIX pax) of the folder ``under`` (files under their paths relative to
    the output folder), chunk by chunk, never more than one chunk in memory; headers are
    tarfile's.  Raises :class:`OutsideError` when ``under`` names no folder inside."""
    fd, _ = open_inside(output_dir, under)
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    try:
        for relative, child, info in walk_inside(fd, prefix):
            if relative == MANIFEST_NAME:
                continue
            member = tarfile.TarInfo(relative)
            member.size = info.st_size
            member.mtime = int(info.st_mtime)
            member.mode = info.st_mode & 0o777
            yield member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            sent = 0
            while sent < member.size:
                chunk = os.pread(child, min(_CHUNK, member.size - sent), sent)
                if not chunk:  # the file shrank: keep the archive's promise with zeros
                    chunk = bytes(min(_CHUNK, member.size - sent))
                sent += len(chunk)
                yield chunk
            if member.size % tarfile.BLOCKSIZE:
                yield bytes(tarfile.BLOCKSIZE - member.size % tarfile.BLOCKSIZE)
        yield bytes(2 * tarfile.BLOCKSIZE)  # the end of the archive
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
