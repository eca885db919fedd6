"""The server's blob store: one file per SHA-256, written once, verified on receipt.

Blobs live under ``<data_dir>/blobs/<first two hex digits>/<the rest>``, read-only.  A blob is
written to a temporary file, checked against its hash, and renamed into place, so a reader never
sees a partial one and two clients sending the same blob at once store it once.  Small blobs
arrive together in a *pack* (one request body: for each, ``<sha256> <size>\\n`` then the bytes);
a large one arrives in parts (``offset`` and ``total``) appended to a partial file, so an
interrupted upload resumes where it stopped and no request body is larger than the part size.
Nothing is fsynced per blob: :meth:`BlobStore.sync` makes everything durable at once (one
``syncfs``) when a snapshot that needs them is registered.

Every method blocks on the file system: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InvalidRequestError, StorageFullError, TooLargeError

__all__ = ["BlobStore", "parse_pack"]

_SHA256 = re.compile(rb"^[0-9a-f]{64}$")
_HEADER_MAX = 100  # "<64 hex> <size>\n"
_COPY_CHUNK = 1 << 20


def parse_pack(data: bytes) -> list[tuple[str, memoryview]]:
    """The (sha256, content) entries of a pack body.  Raises :class:`InvalidRequestError`
    (field ``body``) for a body that is not one, naming the byte where it breaks."""
    entries: list[tuple[str, memoryview]] = []
    view = memoryview(data)
    position = 0
    while position < len(data):
        end = data.find(b"\n", position, position + _HEADER_MAX)
        parts = data[position:end].split(b" ") if end != -1 else []
        if len(parts) != 2 or not _SHA256.match(parts[0]) or not parts[1].isdigit():
            raise InvalidRequestError(
                f"body: not a blob pack at byte {position} (expected '<sha256> <size>\\n')",
                field="body",
            )
        size = int(parts[1])
        start = end + 1
        if start + size > len(data):
            raise InvalidRequestError(
                f"body: blob {parts[0].decode()} is cut short ({size} bytes announced, "
                f"{len(data) - start} sent)",
                field="body",
            )
        entries.append((parts[0].decode(), view[start : start + size]))
        position = start + size
    return entries


class BlobStore:
    """Content-addressed blobs under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._partials = root / "partial"
        self._partials.mkdir(parents=True, exist_ok=True)
        # Appends to one partial file, and renames into place, one request at a time.
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def missing(self, hashes: Iterable[str]) -> dict[str, int]:
        """Of ``hashes``, those not stored, each with the bytes of it already received (a
        partial upload to resume), sorted."""
        return {
            sha256: self._partial_size(sha256)
            for sha256 in sorted(set(hashes))
            if not self.has(sha256)
        }

    def survey(self, sizes: dict[str, int]) -> tuple[list[str], list[str]]:
        """Of the blobs ``sizes`` names (hash -> size), those not stored and those stored with
        another size (a manifest that misstates a size), each sorted."""
        missing: list[str] = []
        wrong: list[str] = []
        for sha256, size in sorted(sizes.items()):
            try:
                actual = self.path(sha256).stat().st_size
            except FileNotFoundError:
                missing.append(sha256)
                continue
            if actual != size:
                wrong.append(sha256)
        return missing, wrong

    def _partial_path(self, sha256: str) -> Path:
        return self._partials / sha256

    def _partial_size(self, sha256: str) -> int:
        try:
            return self._partial_path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def store_pack(self, data: bytes, wanted: set[str] | None = None) -> tuple[int, int]:
        """Store every blob of a pack; returns (blobs, bytes) newly stored.  ``wanted``, if
        given, is what the sender may send (the blobs of snapshots it announced).

        Raises :class:`InvalidRequestError` naming a blob whose content does not match its
        hash, :class:`StorageFullError` when the disk fills (what this pack wrote is removed).
        """
        entries = parse_pack(data)
        for sha256, content in entries:
            if wanted is not None and sha256 not in wanted:
                raise InvalidRequestError(
                    f"body: blob {sha256} is in no snapshot you announced", field="body"
                )
            if hashlib.sha256(content).hexdigest() != sha256:
                raise InvalidRequestError(
                    f"body: the content of blob {sha256} does not match its hash", field="body"
                )
        stored = written = 0
        done: list[Path] = []
        try:
            for sha256, content in entries:
                if self.has(sha256):
                    continue
                done.append(self._write(sha256, content))
                stored += 1
                written += len(content)
        except StorageFullError:
            for path in done:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return stored, written

    def _write(self, sha256: str, content: memoryview | bytes) -> Path:
        """Write one verified blob: a temporary file, then a rename into place."""
        final = self.path(sha256)
        temporary = final.parent / f".{sha256}.{os.getpid()}.{threading.get_ident()}"
        try:
            final.parent.mkdir(exist_ok=True)
            with temporary.open("wb") as handle:
                handle.write(content)
            temporary.chmod(0o444)
            temporary.replace(final)  # the same content either way: a race stores it once
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise _storage_error(exc, f"blob {sha256}") from None
        return final

    def store_part(self, sha256: str, offset: int, total: int, data: bytes) -> int:
        """Append ``data`` at ``offset`` of the blob ``sha256`` of ``total`` bytes; returns how
        much of it the server now has (``total`` once it is stored and verified).

        A part that starts before what was received (two clients sending the same blob, or a
        retry) has its already-held bytes skipped: the hash check of the whole blob catches any
        that differ.  Raises :class:`InvalidRequestError` for a part that starts past what was
        received (a gap: the message says where to resume), a part past ``total``, or a whole
        blob that does not match its hash (the partial is removed); :class:`StorageFullError`
        when the disk fills.
        """
        if self.has(sha256):
            return total
        if offset + len(data) > total:
            raise InvalidRequestError(
                f"offset: the part ends past the blob's {total} bytes", field="offset"
            )
        partial = self._partial_path(sha256)
        with self._lock:
            if self.has(sha256):  # completed by another sender since the check above
                return total
            have = self._partial_size(sha256)
            if offset > have:
                raise InvalidRequestError(
                    f"offset: the server has {have} bytes of blob {sha256}: resume from there",
                    field="offset",
                )
            data = data[have - offset :]
            if not data and have < total:
                return have
            try:
                with partial.open("ab") as handle:
                    handle.write(data)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise _storage_error(exc, f"blob {sha256}") from None
            have += len(data)
            if have < total:
                return have
            self._complete(sha256, partial)
        return total

    def _complete(self, sha256: str, partial: Path) -> None:
        """Verify a fully received partial blob and move it into place (or remove it)."""
        digest = hashlib.sha256()
        with partial.open("rb") as handle:
            while chunk := handle.read(_COPY_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            partial.unlink()
            raise InvalidRequestError(
                f"body: the content of blob {sha256} does not match its hash", field="body"
            )
        final = self.path(sha256)
        try:
            final.parent.mkdir(exist_ok=True)
            partial.chmod(0o444)
            partial.replace(final)
        except OSError as exc:
            raise _storage_error(exc, f"blob {sha256}") from None

    def delete(self, hashes: Iterable[str]) -> tuple[int, int]:
        """Remove blobs; returns (blobs, bytes) removed."""
        count = freed = 0
        for sha256 in hashes:
            path = self.path(sha256)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            count += 1
            freed += size
        return count, freed

    def inventory(self) -> Iterator[tuple[str, int, float]]:
        """(sha256, size, mtime) of every stored blob."""
        for folder in self.root.iterdir():
            if len(folder.name) != 2 or not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.name.startswith("."):
                    continue
                info = entry.stat(follow_symlinks=False)
                yield folder.name + entry.name, info.st_size, info.st_mtime

    def drop_partials(self, older_than: float) -> None:
        """Remove partial uploads last written to before ``older_than`` (abandoned)."""
        for entry in os.scandir(self._partials):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(entry.path)

    def sync(self) -> None:
        """Make every blob written so far durable (one ``syncfs`` of the blobs' file system)."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _libc_syncfs is None or _libc_syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


def _storage_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"the server's disk is full: {what} was not stored")
    if exc.errno == errno.EFBIG:
        return TooLargeError(f"{what} is larger than the server's file system takes")
    return StorageFullError(f"the server could not store {what}: {exc.strerror}")


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``syncfs`` (Linux), or None where there is none (then ``os.sync``)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_libc_syncfs = _load_syncfs()
