"""Snapshots on the server: the blob store and the registry behind one async interface.

The upload of a snapshot is three steps, each one request: :meth:`Snapshots.plan` (the manifest:
checked against the caps and the user's quota before anything is sent; the answer lists the
blobs the server lacks, with what it has of each), :meth:`receive_pack` and :meth:`receive_part`
(the missing blobs, verified on receipt), and :meth:`commit` (the manifest again: every blob must
be there; everything is made durable, then the snapshot is registered for the user).  A blob may
be sent only after a plan of the same user named it, so nobody fills the disk with blobs no
snapshot needs.  An interrupted upload resumes by planning again: only what is still missing is
asked for.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import trio

from .._config import SnapshotSettings
from ..errors import InvalidRequestError, InvalidSpecError, JobStartError, QuotaExceededError
from ._blobs import BlobStore
from ._manifest import Manifest, Plan, SnapshotInfo, check_manifest, snapshot_id
from ._registry import Registry
from ._workcopy import make_working_copy

__all__ = ["Snapshots"]

T = TypeVar("T")
# Blobs a user announced in a plan stay sendable this long.
ANNOUNCED_S = 24 * 3600.0


class Snapshots:
    """The server's snapshots under ``data_dir`` (``blobs/`` and ``snapshots.db``)."""

    def __init__(self, data_dir: Path, settings: SnapshotSettings, *, synchronous: str = "full"):
        self.settings = settings
        self.blobs = BlobStore(data_dir / "blobs")
        self.registry = Registry(data_dir, synchronous=synchronous)
        # user -> blob -> (when announced, size announced)
        self._announced: dict[str, dict[str, tuple[float, int]]] = {}

    def close(self) -> None:
        self.registry.close()

    @staticmethod
    async def _run(fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn)

    def _checked(self, manifest: Manifest) -> Manifest:
        settings = self.settings
        return check_manifest(manifest, max_files=settings.max_files, max_bytes=settings.max_bytes)

    async def plan(self, manifest: Manifest, user: str) -> Plan:
        """Check ``manifest`` and say what to send.  Raises InvalidRequestError naming the
        entry, TooLargeError naming the cap, QuotaExceededError with the user's usage.  Waits
        on the registry and the blob store (worker threads)."""
        canonical = self._checked(manifest)
        await self._check_quota(canonical, user)
        missing = await self._run(lambda: self.blobs.missing(canonical.blobs()))
        announced = self._announced.setdefault(user, {})
        now = time.monotonic()
        sizes = canonical.sizes()
        for sha256 in missing:
            announced[sha256] = (now, sizes[sha256])
        for sha256 in [s for s, (when, _) in announced.items() if now - when > ANNOUNCED_S]:
            del announced[sha256]
        return Plan(
            id=snapshot_id(canonical),
            files=len(canonical.files),
            bytes=canonical.bytes,
            missing=missing,
            part_bytes=self.settings.part_bytes,
        )

    async def _check_quota(self, manifest: Manifest, user: str) -> None:
        limit = self.settings.max_user_bytes
        used = await self._run(functools.partial(self.registry.usage, user, manifest))
        if used > limit:
            raise QuotaExceededError(
                f"with this snapshot your snapshots would keep {used} bytes on the server, more "
                f"than snapshots.max_user_bytes ({limit}); prune old jobs or ask an admin"
            )

    def _wanted(self, user: str) -> set[str]:
        return set(self._announced.get(user, {}))

    def _announced_size(self, sha256: str, user: str) -> int:
        """The size ``user``'s plan gave blob ``sha256``.  Raises InvalidRequestError (field
        ``sha256``) for a blob no plan of theirs named."""
        entry = self._announced.get(user, {}).get(sha256)
        if entry is None:
            raise InvalidRequestError(
                f"sha256: blob {sha256} is in no snapshot you announced (plan it first)",
                field="sha256",
            )
        return entry[1]

    async def receive_pack(self, data: bytes, user: str) -> tuple[int, int]:
        """Store a pack of blobs ``user`` announced; (blobs, bytes) newly stored.  Raises as
        :meth:`BlobStore.store_pack` does."""
        wanted = self._wanted(user)
        return await self._run(lambda: self.blobs.store_pack(data, wanted))

    async def receive_part(
        self, sha256: str, offset: int, total: int, data: bytes, user: str
    ) -> int:
        """Store a part of a large blob ``user`` announced; the bytes the server has of it.
        Raises InvalidRequestError for a blob not announced or a ``total`` other than the size
        announced, and what :meth:`BlobStore.store_part` raises."""
        size = self._announced_size(sha256, user)
        if total != size:
            raise InvalidRequestError(
                f"total: blob {sha256} was announced with {size} bytes, not {total}",
                field="total",
            )
        return await self._run(lambda: self.blobs.store_part(sha256, offset, total, data))

    async def commit(self, manifest: Manifest, user: str) -> SnapshotInfo:
        """Register ``manifest`` for ``user`` once every blob it needs is stored (made durable
        first).  Raises InvalidRequestError naming the missing blobs, and what :meth:`plan`
        raises."""
        canonical = self._checked(manifest)
        await self._check_quota(canonical, user)

        def register() -> SnapshotInfo:
            missing, wrong = self.blobs.survey(canonical.sizes())
            if missing:
                raise InvalidRequestError(
                    f"blobs: the server lacks {len(missing)} blob(s) of this snapshot: "
                    f"{_some(missing)}; send them first",
                    field="blobs",
                )
            if wrong:
                raise InvalidRequestError(
                    f"files: the manifest misstates the size of {_named(canonical, wrong)}",
                    field="files",
                )
            self.blobs.sync()
            return self.registry.register(canonical, user)

        info = await self._run(register)
        announced = self._announced.get(user, {})
        for sha256 in canonical.blobs():
            announced.pop(sha256, None)
        return info

    async def usable(self, sid: str, user: str, *, any_owner: bool) -> SnapshotInfo:
        """The snapshot ``sid`` if ``user`` may run it: one of its owners, or ``any_owner``
        (who may read every job).  Raises InvalidSpecError (field ``snapshot``) otherwise, the
        same for one that does not exist, so ids cannot be probed."""

        def look() -> SnapshotInfo | None:
            if not any_owner and not self.registry.owns(sid, user):
                return None
            return self.registry.info(sid)

        info = await self._run(look)
        if info is None:
            raise InvalidSpecError(f"snapshot: unknown snapshot {sid}", field="snapshot")
        return info

    async def manifest(self, sid: str) -> Manifest | None:
        return await self._run(lambda: self.registry.manifest(sid))

    def make_working_copy(self, sid: str, dest: Path, cwd: str | None = None) -> Manifest:
        """Lay snapshot ``sid`` out under ``dest`` for one run, with the folder ``cwd`` in it
        even where the snapshot has no file there; its manifest.  Blocks (a worker thread).
        Raises JobStartError for a snapshot or blob that is gone, or a ``cwd`` that is a
        file."""
        manifest = self.registry.manifest(sid)
        if manifest is None:
            raise JobStartError(f"its snapshot {sid} is no longer on the server")
        make_working_copy(manifest, self.blobs, dest)
        if cwd is not None:
            try:
                (dest / cwd).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JobStartError(f"cannot make its cwd {cwd}: {exc.strerror}") from None
        return manifest

    def forget(self, keep: set[str], created_before: float, *, dry_run: bool) -> list[str]:
        """Forget the snapshots made before ``created_before`` that are not in ``keep``; their
        ids.  Blocks (a worker thread)."""
        return self.registry.forget(keep, created_before, dry_run=dry_run)

    def drop_unneeded_blobs(
        self, older_than: float, *, dry_run: bool, forgotten: Iterable[str] = ()
    ) -> tuple[int, int]:
        """Remove the blobs (and partial uploads) written before ``older_than`` that no
        snapshot needs; (blobs, bytes).  A dry run counts the snapshots ``forgotten`` (by the
        same dry run) as gone.  Blocks (a worker thread)."""
        needed = self.registry.needed_blobs(without=forgotten if dry_run else ())
        unneeded = [
            (sha256, size)
            for sha256, size, mtime in self.blobs.inventory()
            if sha256 not in needed and mtime < older_than
        ]
        if dry_run:
            return len(unneeded), sum(size for _, size in unneeded)
        self.blobs.drop_partials(older_than)
        return self.blobs.delete(sha256 for sha256, _ in unneeded)


def _some(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _named(manifest: Manifest, blobs: list[str]) -> str:
    """The paths (or attachment names) of ``blobs`` in ``manifest``, a few of them."""
    wanted = set(blobs)
    names = [entry.path for entry in manifest.files if entry.sha256 in wanted]
    names += [name for name, a in manifest.attachments.items() if a.sha256 in wanted]
    return _some(sorted(names))
