"""Writing a file whole or not at all, with its permissions from the first byte.

The auth file, the client config (it holds an API key) and TLS private keys are all written this
way: a reader never sees a partial file, and a private file is never briefly readable by others.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsynced, then renamed.

    The temp file has ``mode`` from the start.  With ``replace`` an existing file is replaced;
    without, the temp file is hard-linked into place, which fails instead of overwriting when the
    path appeared meanwhile (no check-then-write race): then False is returned and nothing is
    written.  The folder is fsynced too, so the new name survives a crash.  Blocks on file I/O.
    Raises OSError (the folder must exist).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        _fsync_directory(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_directory(directory: Path) -> None:
    # A rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
