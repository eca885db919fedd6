"""Working copies: a snapshot laid out as files for one run, private to it.

Each file is copied from its blob (the kernel copies: ``sendfile``), never linked: a job that
writes to its files must change neither the stored blobs nor another job's copy, and hard links
would let it (the server may run as root, which file modes do not stop).  Executable bits are
kept; symlinks are made as they were.  Blocks on the file system: call it from a worker thread.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from pathlib import Path

from ..errors import JobStartError
from ._blobs import BlobStore
from ._manifest import Manifest

__all__ = ["make_working_copy"]

_COPY_THREADS = 4


def make_working_copy(manifest: Manifest, blobs: BlobStore, dest: Path) -> None:
    """Lay ``manifest`` out under ``dest`` (which is emptied first).  Raises
    :class:`JobStartError` naming the file whose blob is missing or cannot be copied."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    folders = {str(Path(entry.path).parent) for entry in manifest.files}
    folders |= {str(Path(link.path).parent) for link in manifest.links}
    for folder in sorted(folders):
        (dest / folder).mkdir(parents=True, exist_ok=True)

    def copy(index: int) -> None:
        entry = manifest.files[index]
        target = dest / entry.path
        try:
            shutil.copyfile(blobs.path(entry.sha256), target)
            os.chmod(target, entry.mode)
        except FileNotFoundError:
            raise JobStartError(
                f"the snapshot's file {entry.path} is missing from the server (blob "
                f"{entry.sha256[:12]}…): was it pruned?"
            ) from None
        except OSError as exc:
            raise JobStartError(f"cannot copy {entry.path}: {exc.strerror}") from None

    if len(manifest.files) < 16:
        for index in range(len(manifest.files)):
            copy(index)
    else:
        with concurrent.futures.ThreadPoolExecutor(_COPY_THREADS) as pool:
            for future in [pool.submit(copy, i) for i in range(len(manifest.files))]:
                future.result()
    for link in manifest.links:
        os.symlink(link.target, dest / link.path)
