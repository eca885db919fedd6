"""API key generation and hashing.

A key of our own format is ``fml_<key_id>_<secret>``: the key id is 12 random base32 characters
(not secret; it lets the server find the one stored hash to check), the secret is 32 random bytes
in URL-safe base64.  Only the bcrypt hash of the whole key is ever stored.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

import bcrypt

__all__ = [
    "DEFAULT_ROUNDS",
    "KEY_ID_LENGTH",
    "KEY_PREFIX",
    "MAX_KEY_BYTES",
    "MAX_ROUNDS",
    "MIN_ROUNDS",
    "bcrypt_hash_problem",
    "generate_key",
    "hash_key",
    "is_key_id",
    "key_id_of",
]

KEY_PREFIX: Final = "fml_"
KEY_ID_LENGTH: Final = 12
KEY_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"
SECRET_BYTES: Final = 32
DEFAULT_ROUNDS: Final = 12
# bcrypt only looks at the first 72 bytes, and bcrypt 5 refuses longer input outright; a key is
# never silently truncated here, so that two keys sharing a prefix can never both match.
MAX_KEY_BYTES: Final = 72

_KEY_ID_RE: Final = re.compile(rf"[{KEY_ID_ALPHABET}]{{{KEY_ID_LENGTH}}}")
MIN_ROUNDS: Final = 4
# Each step doubles the cost: 16 is about 3 s per check here, and a hash above it would hold a
# bcrypt worker thread for minutes on every new key, so it is refused rather than honoured.
MAX_ROUNDS: Final = 16
# The salt is 22 base64 characters for 128 bits, so its last character can only be one of
# ".Oeu"; bcrypt refuses any other ("Invalid salt"), which must surface at config load.
_BCRYPT_RE: Final = re.compile(
    r"\$2[abxy]\$(?P<cost>[0-9]{2})\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}"
)
_SECRET_START: Final = len(KEY_PREFIX) + KEY_ID_LENGTH + 1


def generate_key() -> tuple[str, str]:
    """Return a fresh ``(key_id, key)`` pair from the OS's CSPRNG; waits on nothing, raises nothing.

    The secret part alone carries 256 bits of entropy; the key id adds 60 more but is not secret.
    """
    key_id = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def hash_key(key: str, rounds: int = DEFAULT_ROUNDS) -> str:
    """Return the bcrypt hash of ``key`` at cost ``rounds``.

    Runs bcrypt on the calling thread (about 200 ms at cost 12): call it through
    ``trio.to_thread.run_sync`` from async code.  Raises ``ValueError`` for an empty key, a key
    over 72 bytes in UTF-8, or ``rounds`` outside 4..16.
    """
    raw = key.encode()
    if not raw:
        raise ValueError("an API key cannot be empty")
    if len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"an API key can be at most {MAX_KEY_BYTES} bytes")
    if not MIN_ROUNDS <= rounds <= MAX_ROUNDS:
        raise ValueError(
            f"bcrypt rounds must be between {MIN_ROUNDS} and {MAX_ROUNDS}, not {rounds}"
        )
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds)).decode("ascii")


def key_id_of(key: str) -> str | None:
    """Return the key id carried by a key of our format, or ``None`` for any other string."""
    if not key.startswith(KEY_PREFIX) or len(key) <= _SECRET_START:
        return None
    key_id = key[len(KEY_PREFIX) : _SECRET_START - 1]
    if key[_SECRET_START - 1] != "_" or not _KEY_ID_RE.fullmatch(key_id):
        return None
    return key_id


def is_key_id(value: str) -> bool:
    """Return whether ``value`` has the shape of a key id (12 characters of ``[a-z2-7]``)."""
    return _KEY_ID_RE.fullmatch(value) is not None


def bcrypt_hash_problem(value: str) -> str | None:
    """Return why ``value`` is not a usable bcrypt hash, or ``None`` if it is one.

    The reason never quotes the value: a plaintext key pasted in its place must not reach logs.
    """
    match = _BCRYPT_RE.fullmatch(value)
    if match is None:
        return "not a bcrypt hash (expected '$2b$<cost>$' + 53 characters)"
    cost = int(match["cost"])
    if not MIN_ROUNDS <= cost <= MAX_ROUNDS:
        return f"bcrypt cost {cost} is outside {MIN_ROUNDS}..{MAX_ROUNDS}"
    return None
