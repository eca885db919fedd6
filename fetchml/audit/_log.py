"""The tamper-evident audit log: one JSON line per state-changing action and per refused attempt.

Each line is a JSON object with ``seq`` (its 1-based line number), ``ts``, ``user`` (or null),
``source`` (the client's address), ``action``, ``outcome`` (``ok`` or ``refused``), ``code`` (the
error code of a refusal), ``job_id`` where there is one, and ``prev``: the SHA-256 (hex) of the
previous line's bytes, without its newline (64 zeros for the first line).  Key material is never
written.  Editing, removing or reordering a line breaks the chain; :func:`verify_chain` names the
first line where it breaks.

Writes are batched: callers queue entries and wait; one writer task encodes, chains and appends
every queued entry with a single write and flush in a worker thread, then wakes them.  So an
entry is on disk (in the OS) before the action it records is acknowledged, and a burst of submits
costs one write.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import trio

__all__ = ["GENESIS", "AuditLog", "VerifyResult", "verify_chain"]

GENESIS = "0" * 64
# Entries waiting for one write before further callers wait for it to finish.
MAX_BATCH = 4096
_encoder = msgspec.json.Encoder()


class _Batch:
    """Entries waiting for the writer, and the event their callers wait on together."""

    __slots__ = ("done", "entries", "error")

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.done = trio.Event()
        self.error: OSError | None = None


class AuditLog:
    """Appends hash-chained entries to ``path``; run :meth:`run` in a nursery (``start``).

    Callers of :meth:`record` add their entry to the current batch and wait on that batch's one
    event; the writer task encodes, chains and appends a whole batch in a worker thread, so the
    event loop pays a dict and a list append per entry, not an encode, a hash and an event.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._prev = GENESIS
        self._seq = 0
        self._batch = _Batch()
        self._wake = trio.Event()
        self._written = trio.Event()  # set after each batch: room for callers held back

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the file (continuing its chain) and write batches until cancelled.

        Waits on new entries and on the worker thread that writes them; closes the file when
        cancelled.  A write that fails raises OSError in the callers of that batch, not here.
        """
        await trio.to_thread.run_sync(self._open)
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                batch, self._batch = self._batch, _Batch()
                try:
                    await trio.to_thread.run_sync(self._write, batch.entries)
                except OSError as exc:
                    batch.error = exc
                batch.done.set()
                written, self._written = self._written, trio.Event()
                written.set()
        finally:
            if self._file is not None:
                self._file.close()

    async def record(
        self,
        action: str,
        *,
        user: str | None,
        outcome: str = "ok",
        code: str | None = None,
        job_id: int | None = None,
        source: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one entry and wait until it is written.  Raises OSError if it could not be.

        ``source`` is the client's address (or what else caused the action: ``server``).
        ``detail`` (what a config change touched, or why it was refused) is added when given.
        Waits for the batch it joins to be written, and first, while :data:`MAX_BATCH` entries
        are already waiting, for the batch before to be written.
        """
        while len(self._batch.entries) >= MAX_BATCH:
            await self._written.wait()
        entry: dict[str, Any] = {
            "ts": time.time(),
            "user": user,
            "source": source,
            "action": action,
            "outcome": outcome,
            "code": code,
            "job_id": job_id,
        }
        if detail is not None:
            entry["detail"] = detail
        batch = self._batch
        batch.entries.append(entry)
        self._wake.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _write(self, entries: list[dict[str, Any]]) -> None:
        """Encode, chain and append ``entries``; runs in a worker thread, one batch at a time."""
        assert self._file is not None
        seq, prev = self._seq, self._prev
        lines = []
        for entry in entries:
            seq += 1
            when = datetime.datetime.fromtimestamp(entry["ts"], datetime.UTC)
            entry["ts"] = when.isoformat(timespec="microseconds")
            line = _encoder.encode({"seq": seq, **entry, "prev": prev})
            prev = hashlib.sha256(line).hexdigest()
            lines.append(line)
        lines.append(b"")
        self._file.write(b"\n".join(lines))
        self._file.flush()
        # Only a batch that reached the file moves the chain on: the next one links to it.
        self._seq, self._prev = seq, prev

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        last = _last_line(self.path)
        if last is not None:
            self._prev = hashlib.sha256(last).hexdigest()
            try:
                self._seq = int(json.loads(last)["seq"])
            except (ValueError, KeyError, TypeError):
                self._seq = _count_lines(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab")


def _last_line(path: Path) -> bytes | None:
    """The last non-empty line of ``path`` (without its newline), or None."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            chunk = 4096
            while True:
                start = max(0, size - chunk)
                f.seek(start)
                data = f.read(size - start).rstrip(b"\n")
                if b"\n" in data or start == 0:
                    last = data.rsplit(b"\n", 1)[-1]
                    return last or None
                chunk *= 2
    except FileNotFoundError:
        return None


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


class VerifyResult:
    """What :func:`verify_chain` found: ``count`` entries, and the first broken line if any."""

    def __init__(self, count: int, bad_line: int | None = None, reason: str = "") -> None:
        self.count = count
        self.bad_line = bad_line
        self.reason = reason

    @property
    def ok(self) -> bool:
        return self.bad_line is None


def verify_chain(lines: Iterable[bytes]) -> VerifyResult:
    """Check a hash chain, line by line (1-based numbers in the result).

    A line whose ``prev`` does not match the line before it while its ``seq`` is right means the
    line before was edited; a ``seq`` out of place means a line was removed or reordered there.
    """
    prev = GENESIS
    count = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\n")
        try:
            entry = json.loads(line)
            seq, stored_prev = entry["seq"], entry["prev"]
        except (ValueError, KeyError, TypeError):
            return VerifyResult(count, number, "not a valid audit entry (edited)")
        if seq != number:
            return VerifyResult(
                count,
                number,
                f"entry {seq} found where entry {number} belongs (removed or reordered)",
            )
        if stored_prev != prev:
            if number == 1:
                return VerifyResult(count, 1, "edited (the chain does not start at genesis)")
            return VerifyResult(
                count,
                number - 1,
                f"edited (its hash does not match the 'prev' of line {number})",
            )
        prev = hashlib.sha256(line).hexdigest()
        count += 1
    return VerifyResult(count)
