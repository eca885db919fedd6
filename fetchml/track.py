"""Log metrics, params, tags and a summary from inside a Fetch ML job.

    from fetchml import track
    track.log_params({"lr": 3e-4})
    for step in range(100):
        track.log({"loss": loss, "val/acc": acc}, step=step)
    track.summary({"best_acc": best})

Standard library only, so a job's own Python needs none of the server's dependencies.  Inside a
job the server names a file in ``FETCHML_TRACK_FILE``; each call adds one JSON line to it (the
line protocol of the README, which a job in any language may write itself), buffered up to
64 KiB or 0.1 s and flushed at exit.  The job never waits on the server and needs no API key:
the server reads the file as it grows and can lose no point, even if it restarts.  Outside a job
nothing is kept, and the first call says so once on stderr.

Values must be finite numbers: a NaN or infinity is dropped with one warning per metric name.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "flush",
    "log",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "set_tags",
    "summary",
]

ENV_FILE = "FETCHML_TRACK_FILE"
_BUFFER_BYTES = 64 * 1024
_FLUSH_S = 0.1


class _Writer:
    """Appends lines to the track file; one ``write`` per flush on an ``O_APPEND`` descriptor,
    so a line is never split between writers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path = os.environ.get(ENV_FILE)
        self._buffer: list[bytes] = []
        self._size = 0
        self._last_flush = time.monotonic()
        self._step = -1
        self._warned: set[str] = set()
        self._timer: threading.Timer | None = None
        if self._path:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self._path, flags, 0o644)
            atexit.register(self.flush)

    def warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print(f"fetchml.track: {message}", file=sys.stderr, flush=True)

    def next_step(self, step: int | None) -> int:
        with self._lock:
            self._step = self._step + 1 if step is None else int(step)
            return self._step

    def add(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            self.warn(
                "outside",
                f"not inside a Fetch ML job (no {ENV_FILE}): nothing is kept; set {ENV_FILE} "
                "to a file to keep the lines",
            )
            return
        line = json.dumps(record, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        with self._lock:
            self._buffer.append(line)
            self._size += len(line)
            due = time.monotonic() - self._last_flush >= _FLUSH_S
            if self._size >= _BUFFER_BYTES or due:
                self._flush_locked()
            elif self._timer is None:
                # A job that logs once and then computes for minutes is still seen live.
                self._timer = threading.Timer(_FLUSH_S, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._last_flush = time.monotonic()
        self._timer = None
        if not self._buffer or self._fd is None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]


_writer: _Writer | None = None
_writer_lock = threading.Lock()


def _get() -> _Writer:
    global _writer
    if _writer is None:
        with _writer_lock:
            if _writer is None:
                _writer = _Writer()
    return _writer


def _finite(writer: _Writer, metrics: Mapping[str, Any]) -> dict[str, float]:
    kept: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            try:
                value = float(value)  # numpy and torch scalars
            except (TypeError, ValueError):
                raise TypeError(f"{name}: a metric value must be a number, not {value!r}") from None
        if not math.isfinite(value):
            writer.warn(f"nan:{name}", f"{name}: {value} is not a finite number: not kept")
            continue
        kept[str(name)] = value
    return kept


def log(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log ``metrics`` (name -> number) at ``step`` (default: one more than the last step, from
    0).  Raises TypeError for a value that is not a number."""
    writer = _get()
    kept = _finite(writer, metrics)
    at = writer.next_step(step)
    if kept:
        writer.add({"step": at, "time": time.time(), "metrics": kept})


def log_metric(key: str, value: float, step: int | None = None) -> None:
    """MLflow's ``log_metric``: one metric at ``step``."""
    log({key: value}, step=step)


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """MLflow's ``log_metrics``: several metrics at one ``step``."""
    log(metrics, step=step)


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or isinstance(value, bool | int | str):
            plain[str(key)] = value
        elif isinstance(value, float):
            plain[str(key)] = value if math.isfinite(value) else str(value)
        else:
            plain[str(key)] = str(value)
    return plain


def log_params(params: Mapping[str, Any]) -> None:
    """Record the run's parameters (strings, numbers, booleans; others as their ``str``)."""
    _get().add({"params": _plain(params)})


def log_param(key: str, value: Any) -> None:
    """MLflow's ``log_param``: one parameter."""
    log_params({key: value})


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tag the run (``key -> value``)."""
    _get().add({"tags": _plain(tags)})


def summary(values: Mapping[str, Any]) -> None:
    """Record summary values of the run (e.g. the best accuracy), replacing earlier ones of the
    same name."""
    _get().add({"summary": _plain(values)})


def flush() -> None:
    """Write out what is buffered now (it is also written at exit)."""
    _get().flush()
