"""Reading what a job wrote, without ever leaving its output folder.

A job is untrusted code that runs as the server's user: it may put symlinks in its outputs, or
swap a file for a symlink between a check and a read.  So no path is resolved by name: each part
is opened with ``O_NOFOLLOW`` relative to the folder before it (``openat``), from the output
folder down; a symlink anywhere, a ``..`` or an absolute path is "not found".  Blocking: call
these from worker threads.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutsideError", "open_inside", "walk_inside"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class OutsideError(LookupError):
    """The path names nothing readable inside the folder (missing, a symlink, outside it)."""


def _parts(relative: str) -> list[str]:
    if "\0" in relative or relative.startswith("/"):
        raise OutsideError(relative)
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise OutsideError(relative)
    return parts


def open_inside(root: Path, relative: str) -> tuple[int, os.stat_result]:
    """An open descriptor of ``relative`` under ``root`` (a file or a folder) and its stat.
    The caller closes it.  Raises :class:`OutsideError`."""
    parts = _parts(relative)
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        raise OutsideError(relative) from None
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = _FILE_FLAGS if last else _DIR_FLAGS
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise OutsideError(relative) from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        os.close(fd)
        raise OutsideError(relative)
    if stat.S_ISREG(info.st_mode):
        os.set_blocking(fd, True)
    return fd, info


def walk_inside(fd: int, prefix: str = "") -> Iterator[tuple[str, int, os.stat_result]]:
    """(relative path, open descriptor, stat) of every regular file below the folder ``fd``,
    sorted, symlinks and special files left out; each descriptor is closed once the consumer
    moves on.  Does not close ``fd``."""
    with os.scandir(fd) as listing:
        names = sorted(entry.name for entry in listing)
    for name in names:
        try:
            child = os.open(name, _FILE_FLAGS, dir_fd=fd)
        except OSError:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # a symlink, or gone
        try:
            info = os.fstat(child)
            if stat.S_ISDIR(info.st_mode):
                yield from walk_inside(child, f"{prefix}{name}/")
            elif stat.S_ISREG(info.st_mode):
                os.set_blocking(child, True)
                yield f"{prefix}{name}", child, info
        finally:
            with contextlib.suppress(OSError):
                os.close(child)
