"""The request id of a frame too deeply nested to decode, so that its error reply can name it.

msgspec (and the standard library) decode nested values recursively and give up past a depth
limit, and so does every skip over a value: a frame whose ``spec`` nests a few thousand lists
cannot be decoded at all, not even to read its ``id``.  These scanners walk the top-level map
iteratively (a counter of values still to skip, never a recursion), read ``id`` and nothing else.
They return None for anything they cannot read; the reply then has ``re: null``.
"""

from __future__ import annotations

import json
import re

__all__ = ["json_request_id", "msgpack_request_id"]

MAX_ID = 2**53

# msgpack: type byte -> (bytes of a length that follows, fixed payload size, is a container).
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_FIXED |= {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin, str: length bytes
_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # ext: length bytes, then a type byte
_ARRAY = {0xDC: 2, 0xDD: 4}
_MAP = {0xDE: 2, 0xDF: 4}


def _number(raw: bytes, pos: int, size: int) -> tuple[int, int]:
    if pos + size > len(raw):
        raise ValueError("truncated")
    return int.from_bytes(raw[pos : pos + size], "big"), pos + size


def _head(raw: bytes, pos: int) -> tuple[int, int]:
    """(values nested in the value at ``pos``, position after its own bytes)."""
    if pos >= len(raw):
        raise ValueError("truncated")
    byte, pos = raw[pos], pos + 1
    if byte <= 0x7F or byte >= 0xE0:
        return 0, pos
    if 0x80 <= byte <= 0x8F:
        return 2 * (byte & 0x0F), pos
    if 0x90 <= byte <= 0x9F:
        return byte & 0x0F, pos
    if 0xA0 <= byte <= 0xBF:
        return 0, pos + (byte & 0x1F)
    if byte in _FIXED:
        return 0, pos + _FIXED[byte]
    if byte in _SIZED:
        length, pos = _number(raw, pos, _SIZED[byte])
        return 0, pos + length
    if byte in _EXT:
        length, pos = _number(raw, pos, _EXT[byte])
        return 0, pos + 1 + length
    if byte in _ARRAY:
        return _number(raw, pos, _ARRAY[byte])
    if byte in _MAP:
        count, pos = _number(raw, pos, _MAP[byte])
        return 2 * count, pos
    raise ValueError("not msgpack")


def _skip(raw: bytes, pos: int) -> int:
    """The position after the value at ``pos`` (and all it nests), without recursion."""
    pending = 1
    while pending:
        nested, pos = _head(raw, pos)
        pending += nested - 1
    return pos


def msgpack_request_id(raw: bytes) -> int | None:
    """The top-level ``id`` of a msgpack map frame, if it is an integer in range."""
    try:
        count, pos = _head(raw, 0)
        if not raw or not (0x80 <= raw[0] <= 0x8F or raw[0] in _MAP):
            return None
        for _ in range(count // 2):
            key_start = pos
            pos = _skip(raw, pos)
            if raw[key_start:pos] == b"\xa2id":
                end = _skip(raw, pos)
                value = _decode_int(raw[pos:end])
                return value if value is not None and 0 <= value <= MAX_ID else None
            pos = _skip(raw, pos)
    except ValueError:
        return None
    return None


def _decode_int(data: bytes) -> int | None:
    if len(data) == 1 and data[0] <= 0x7F:
        return data[0]
    if data and data[0] in (0xCC, 0xCD, 0xCE, 0xCF) and len(data) > 1:
        return int.from_bytes(data[1:], "big")
    return None


_SPACE = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NUMBER = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_SCALAR = re.compile(rb"true|false|null|-?[0-9][0-9.eE+-]*")


def _skip_json(raw: bytes, pos: int) -> int:
    """The position after the JSON value at ``pos``, brackets counted, not recursed into."""
    depth = 0
    while True:
        pos = _SPACE.match(raw, pos).end()  # type: ignore[union-attr]
        if pos >= len(raw):
            raise ValueError("truncated")
        char = raw[pos : pos + 1]
        if char in (b"[", b"{"):
            depth, pos = depth + 1, pos + 1
        elif char in (b"]", b"}"):
            depth, pos = depth - 1, pos + 1
        elif char in (b",", b":"):
            pos += 1
            continue
        else:
            match = (_STRING if char == b'"' else _SCALAR).match(raw, pos)
            if match is None:
                raise ValueError("not JSON")
            pos = match.end()
        if depth <= 0:
            return pos


def json_request_id(raw: bytes) -> int | None:
    """The top-level ``id`` of a JSON object frame, if it is an integer in range."""
    try:
        pos = _SPACE.match(raw).end()  # type: ignore[union-attr]
        if raw[pos : pos + 1] != b"{":
            return None
        pos += 1
        while True:
            pos = _SPACE.match(raw, pos).end()  # type: ignore[union-attr]
            key = _STRING.match(raw, pos)
            if key is None:
                return None
            pos = _SPACE.match(raw, key.end()).end()  # type: ignore[union-attr]
            if raw[pos : pos + 1] != b":":
                return None
            pos = _SPACE.match(raw, pos + 1).end()  # type: ignore[union-attr]
            if json.loads(key.group()) == "id":
                number = _NUMBER.match(raw, pos)
                if number is None or not number.group().lstrip(b"-").isdigit():
                    return None
                value = int(number.group())
                return value if 0 <= value <= MAX_ID else None
            pos = _SPACE.match(raw, _skip_json(raw, pos)).end()  # type: ignore[union-attr]
            if raw[pos : pos + 1] != b",":
                return None
            pos += 1
    except (ValueError, IndexError):
        return None
