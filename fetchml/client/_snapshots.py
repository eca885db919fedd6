"""Snapshotting a project and sending it to the server, as ``ml queue`` does.

:func:`make_snapshot` scans the project (``fetchml.snapshots``), asks the server what it lacks
(``plan``: the caps are checked there before anything is sent), sends only that, and registers
the snapshot (``commit``).  Small blobs go in packs of up to ``part_bytes``; a large one in parts
of that size, resuming where an earlier, interrupted upload of it stopped.  Two connections send
at once.  Memory stays bounded by two parts.  Blocking: async callers run it in a worker thread.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import queue
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from fetchml._models import Provenance
from fetchml.errors import InvalidRequestError, TooLargeError
from fetchml.snapshots import (
    Attachment,
    Manifest,
    Plan,
    Scan,
    SnapshotError,
    SnapshotInfo,
    find_root,
    git_state,
    scan_tree,
)

from ._http import HttpSession

__all__ = ["Snapshot", "make_snapshot"]

_SENDERS = 2
# A blob smaller than this goes in a pack with others.
_PACK_BLOB_MAX_FRACTION = 4


@dataclass(frozen=True)
class Snapshot:
    """A snapshot on the server, and how a job should use it: ``cwd`` is the folder (inside the
    snapshot) where it was made, ``provenance`` the command line and git state."""

    info: SnapshotInfo
    root: Path
    cwd: str | None
    provenance: Provenance

    @property
    def id(self) -> str:
        return self.info.id

    def spec_fields(self) -> dict[str, object]:
        """The job spec fields that run a job in this snapshot."""
        fields: dict[str, object] = {"snapshot": self.info.id, "provenance": self.provenance}
        if self.cwd is not None:
            fields["cwd"] = self.cwd
        return fields


class _Committed(msgspec.Struct):
    snapshot: SnapshotInfo


class _Have(msgspec.Struct):
    have: int


class _Stored(msgspec.Struct):
    stored: int
    bytes: int


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fetchml" / "hashes"


def make_snapshot(
    session_factory: Callable[[], HttpSession],
    here: Path,
    *,
    root: Path | None = None,
    command_line: list[str] | None = None,
) -> Snapshot:
    """Snapshot the project around ``here`` (the git work tree, else ``here``; ``root`` to
    choose) on the server.  Raises :class:`SnapshotError` (a symlink out of the tree),
    :class:`TooLargeError` / :class:`QuotaExceededError` before anything is sent, naming the
    largest files and folders, and the server's errors.  Blocks on the disk and the network."""
    here = here.absolute()
    top = (root or find_root(here)).absolute()
    if here != top and top not in here.parents:
        raise SnapshotError(f"{here} is not inside the snapshot root {top}")
    scan = scan_tree(top, cache_dir=_cache_dir())
    git = git_state(top)
    manifest = scan.manifest
    sources: dict[str, Path | bytes] = dict(scan.sources)
    if git is not None and git.large_diff is not None and git.info.diff_sha256 is not None:
        diff = Attachment(git.info.diff_sha256, len(git.large_diff))
        manifest = msgspec.structs.replace(manifest, attachments={"git_diff": diff})
        sources[git.info.diff_sha256] = git.large_diff
    with session_factory() as session:
        plan = _plan(session, manifest, scan)
        sent = _send(session_factory, plan, manifest, sources)
        committed = session.call("POST", "/api/v1/snapshots", _Committed, json=manifest)
    info = msgspec.structs.replace(committed.snapshot, uploaded_bytes=sent)
    relative = here.relative_to(top).as_posix()
    provenance = Provenance(
        command_line=list(sys.argv if command_line is None else command_line),
        host=socket.gethostname()[:200],
        root=str(top),
        git=git.info if git is not None else None,
    )
    return Snapshot(info, top, None if relative == "." else relative, provenance)


def _plan(session: HttpSession, manifest: Manifest, scan: Scan) -> Plan:
    try:
        return session.call("POST", "/api/v1/snapshots/plan", Plan, json=manifest)
    except TooLargeError as exc:
        largest = ", ".join(f"{path} ({_size(size)})" for path, size in scan.largest())
        raise type(exc)(f"{exc.message}; the largest: {largest}") from None


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


@dataclass(frozen=True)
class _Unit:
    """What one sender sends in turn: a pack of small blobs (one request), or a large blob
    from ``offset`` on, part after part (its parts must arrive in order)."""

    blobs: tuple[str, ...]
    offset: int = 0
    total: int = 0  # of a large blob: its size (0 for a pack)


def _units(plan: Plan, sizes: dict[str, int]) -> Iterator[_Unit]:
    limit = plan.part_bytes
    pack: list[str] = []
    packed = 0
    for sha256, have in plan.missing.items():
        size = sizes[sha256]
        if size * _PACK_BLOB_MAX_FRACTION <= limit and have == 0:
            if packed + size > limit and pack:
                yield _Unit(tuple(pack))
                pack, packed = [], 0
            pack.append(sha256)
            packed += size
            continue
        yield _Unit((sha256,), have, size)
    if pack:
        yield _Unit(tuple(pack))


def _read(source: Path | bytes, offset: int = 0, size: int | None = None) -> bytes:
    if isinstance(source, bytes):
        return source[offset : None if size is None else offset + size]
    with source.open("rb") as handle:
        handle.seek(offset)
        return handle.read(-1 if size is None else size)


def _send(
    session_factory: Callable[[], HttpSession],
    plan: Plan,
    manifest: Manifest,
    sources: dict[str, Path | bytes],
) -> int:
    """Send what ``plan`` says is missing, on :data:`_SENDERS` connections; the bytes sent."""
    units = list(_units(plan, manifest.sizes()))
    if not units:
        return 0
    idle: queue.SimpleQueue[HttpSession] = queue.SimpleQueue()
    sessions = [session_factory() for _ in range(min(_SENDERS, len(units)))]
    for session in sessions:
        idle.put(session)

    def send(unit: _Unit) -> int:
        session = idle.get()  # one request at a time per connection
        try:
            return _send_unit(session, unit, sources, plan.part_bytes)
        finally:
            idle.put(session)

    try:
        with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
            return sum(pool.map(send, units))
    finally:
        for session in sessions:
            session.close()


def _send_unit(
    session: HttpSession, unit: _Unit, sources: dict[str, Path | bytes], part_bytes: int
) -> int:
    """Send one unit; the bytes sent.  The parts of a large blob go in order; where the server
    has more of it than this client thought (another client sends it too), it goes on from
    what the server has."""
    if unit.total:
        (sha256,) = unit.blobs
        offset, sent, restarted = unit.offset, 0, False
        # Hashed as it is read (when sent from its start), so that a file that changed since
        # the scan is named before its last part, not refused by the server as a blob.
        digest = hashlib.sha256() if offset == 0 else None
        while offset < unit.total:
            data = _read(sources[sha256], offset, part_bytes)
            if digest is not None:
                digest.update(data)
                if offset + len(data) >= unit.total:
                    _check_unchanged(sources[sha256], sha256, digest.hexdigest())
            path = f"/api/v1/blobs/{sha256}?offset={offset}&total={unit.total}"
            try:
                have = session.call("PUT", path, _Have, body=data).have
                if have != offset + len(data):
                    digest = None  # another client sent the bytes between: not read here
                offset = have
            except InvalidRequestError as exc:
                # The server lost what it had of the blob (a prune of abandoned uploads):
                # start it again, once.
                if exc.field != "offset" or restarted:
                    raise
                offset, restarted, digest = 0, True, hashlib.sha256()
            sent += len(data)
        return sent
    chunks: list[bytes] = []
    for sha256 in unit.blobs:
        content = _read(sources[sha256])
        _check_unchanged(sources[sha256], sha256, hashlib.sha256(content).hexdigest())
        chunks.append(f"{sha256} {len(content)}\n".encode())
        chunks.append(content)
    body = b"".join(chunks)
    session.call("POST", "/api/v1/blobs", _Stored, body=body)
    return len(body)


def _check_unchanged(source: Path | bytes, sha256: str, read: str) -> None:
    """Raise :class:`SnapshotError` naming the file if what was read is not what was scanned
    (a log being written, a checkpoint being saved)."""
    if read != sha256:
        what = str(source) if isinstance(source, Path) else "the git diff"
        raise SnapshotError(
            f"{what} changed while the project was being snapshotted; queue again once it is "
            "still, or leave it out (.fetchmlignore)"
        )
