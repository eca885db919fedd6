"""The line protocol of track files: one JSON object per line, as ``fetchml.track`` writes it.

``{"step": 3, "time": 1764700000.5, "metrics": {"loss": 0.31}}``, ``{"params": {...}}``,
``{"tags": {...}}``, ``{"summary": {...}}``; ``step`` and ``time`` are optional.  A line that is
not one of these (bad JSON, a name that is empty, longer than :data:`MAX_NAME` or has control
characters, a value that is not a finite number, an unknown key) is counted and skipped: a job
that writes a bad line is never stopped for it.  A last line without its newline is left for
the next read (the job may be writing it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgspec

__all__ = ["MAX_NAME", "MAX_TEXT", "Batch", "name_problem", "parse_lines"]

MAX_NAME = 250
MAX_TEXT = 1000
_MAX_STEP = 2**62
_decoder = msgspec.json.Decoder(dict[str, Any])
_KEYS = frozenset({"step", "time", "metrics", "params", "tags", "summary"})


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a metric, param or tag, or None."""
    if not isinstance(name, str) or not name:
        return "a name must be a non-empty string"
    if len(name) > MAX_NAME:
        return f"a name is at most {MAX_NAME} characters"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        return "a name has no control characters"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return "a name is valid text (no lone surrogate)"
    return None


@dataclass
class Batch:
    """What a read of a track file holds: points ``(name, step, value, time)`` in order, and
    the latest params, tags and summary values; ``invalid`` lines skipped; ``consumed`` bytes."""

    points: list[tuple[str, int, float, float]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    invalid: int = 0
    consumed: int = 0


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _values(raw: object) -> dict[str, Any] | None:
    """Params, tags or summary values: names to strings, finite numbers, booleans or null."""
    if not isinstance(raw, dict):
        return None
    for key, value in raw.items():
        if name_problem(key) is not None:
            return None
        if isinstance(value, str):
            if len(value) > MAX_TEXT or "\0" in value:
                return None
        elif value is not None and not isinstance(value, bool) and _number(value) is None:
            return None
    return raw


def _line(record: dict[str, Any], batch: Batch, next_step: int, now: float) -> int | None:
    """Add one decoded line to ``batch``; the next default step, or None if it is invalid."""
    if not record or not _KEYS.issuperset(record):
        return None
    step = record.get("step", next_step)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
        return None
    when = _number(record.get("time", now))
    metrics = record.get("metrics", {})
    if when is None or not isinstance(metrics, dict):
        return None
    points = []
    for name, value in metrics.items():
        number = _number(value)
        if number is None or name_problem(name) is not None:
            return None
        points.append((name, step, number, when))
    extras = [(key, _values(record[key])) for key in ("params", "tags", "summary") if key in record]
    if any(values is None for _, values in extras):
        return None
    batch.points += points
    for key, values in extras:
        getattr(batch, key).update(values)
    return step + 1 if points else next_step


def parse_lines(data: bytes, next_step: int, now: float) -> tuple[Batch, int]:
    """The complete lines of ``data``; and the next default step (``next_step`` is the step of
    a metrics line without one)."""
    batch = Batch()
    end = data.rfind(b"\n") + 1
    batch.consumed = end
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            record = _decoder.decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            batch.invalid += 1
            continue
        step = _line(record, batch, next_step, now)
        if step is None:
            batch.invalid += 1
        else:
            next_step = step
    return batch, next_step
