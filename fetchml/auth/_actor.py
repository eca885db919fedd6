"""The auth actor: turns an API key into a :class:`Principal`, paying for bcrypt once per key.

Lookup never tries every stored hash: a key of our format names its key id, which selects the one
entry to check.  Only a key that names no known key id is checked against the hand-written entries
that have no key id.  bcrypt runs in worker threads (bounded by a ``CapacityLimiter``) so the event
loop never blocks on it.  Verified keys are cached by the SHA-256 digest of the key, never the key
itself; rejected keys are remembered for a short time in a bounded LRU.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

import bcrypt
import trio

from fetchml.errors import AuthError

from ._config import AuthConfig
from ._keys import MAX_KEY_BYTES, key_id_of
from ._principal import ANONYMOUS, Principal

__all__ = ["BCRYPT_THREADS", "AuthActor"]

# bcrypt at cost 12 is ~200 ms of pure CPU per check; two threads keep a burst of new keys from
# starving the event loop and the jobs running on the same machine.
BCRYPT_THREADS: Final = 2
REJECTED_CACHE_SIZE: Final = 4096
# Long enough to absorb a flood of one bad key, short enough that a fixed config is not remembered
# as broken for long; a key's validity only changes with the config, which resets both caches.
REJECTED_TTL_S: Final = 30.0

INVALID_KEY: Final = "invalid API key"
MISSING_KEY: Final = "missing API key"

_Candidate = tuple[str, bytes]


class _Verified:
    """A cache entry for a verified key: its digest and the principal it authenticates."""

    __slots__ = ("digest", "principal")

    def __init__(self, digest: bytes, principal: Principal) -> None:
        self.digest = digest
        self.principal = principal


class _Pending:
    """One in-flight bcrypt verification that concurrent requests for the same key wait on."""

    __slots__ = ("done", "principal", "rejected")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.principal: Principal | None = None
        self.rejected = False


class _Probe:
    """What the caches need to know about one presented key, computed once per call."""

    __slots__ = ("digest", "key", "key_id", "slot")

    def __init__(self, key: str) -> None:
        self.key = key.encode()
        self.digest = hashlib.sha256(self.key).digest()
        self.key_id = key_id_of(key)
        # Our keys are cached under their public key id and the digest is compared in constant
        # time; other keys are cached under the digest itself, whose lookup timing reveals
        # nothing usable about the key.
        self.slot: str | bytes = self.key_id if self.key_id is not None else self.digest


class AuthActor:
    """Verifies API keys against an :class:`AuthConfig` and resolves them to principals.

    With ``enabled: false`` every call authenticates as :data:`ANONYMOUS` (an admin).
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        bcrypt_threads: int = BCRYPT_THREADS,
        rejected_cache_size: int = REJECTED_CACHE_SIZE,
        rejected_ttl_s: float = REJECTED_TTL_S,
    ) -> None:
        self._config = config
        self._principals = {user: config.principal_for(user) for user in config.api_keys}
        self._by_key_id: dict[str, _Candidate] = {}
        legacy: list[_Candidate] = []
        for user, entry in config.api_keys.items():
            candidate = (user, entry.hash.encode("ascii"))
            if entry.key_id is None:
                legacy.append(candidate)
            else:
                self._by_key_id[entry.key_id] = candidate
        self._without_key_id: tuple[_Candidate, ...] = tuple(legacy)
        self._verified: dict[str | bytes, _Verified] = {}
        self._rejected: OrderedDict[bytes, float] = OrderedDict()
        self._rejected_size = rejected_cache_size
        self._rejected_ttl_s = rejected_ttl_s
        self._inflight: dict[bytes, _Pending] = {}
        self._limiter = trio.CapacityLimiter(bcrypt_threads)
        self._verifications = 0

    @property
    def config(self) -> AuthConfig:
        """The config this actor authenticates against."""
        return self._config

    @property
    def verifications(self) -> int:
        """How many keys a bcrypt worker thread has finished checking (one run per key)."""
        return self._verifications

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run as a supervised actor: report started, then wait until cancelled.

        The actor needs no background work today: ``authenticate`` does all of it in the
        caller's task.  This is where config reloading will live, so the supervisor already
        starts it with ``nursery.start``.  Waits forever; raises only ``trio.Cancelled``.
        """
        task_status.started()
        await trio.sleep_forever()

    def authenticate_cached(self, key: str) -> Principal | None:
        """Answer from the caches alone: a principal, or ``None`` if only bcrypt can tell.

        Waits on nothing.  Raises ``AuthError`` for an empty key, a key too long to be valid, or
        a key that failed verification within the last ``rejected_ttl_s`` seconds.
        """
        if not self._config.enabled:
            return ANONYMOUS
        return self._cached(self._probe(key))

    async def authenticate(self, key: str) -> Principal:
        """Return the principal for ``key``.

        Returns without yielding on a cache hit.  Otherwise waits for one bcrypt check in a worker
        thread; concurrent calls with the same key share that one check.  Raises
        ``AuthError("missing API key")`` for an empty key and ``AuthError("invalid API key")`` for
        a key that matches no user.
        """
        if not self._config.enabled:
            return ANONYMOUS
        probe = self._probe(key)
        while True:
            principal = self._cached(probe)
            if principal is not None:
                return principal
            pending = self._inflight.get(probe.digest)
            if pending is None:
                return await self._verify(probe)
            await pending.done.wait()
            if pending.principal is not None:
                return pending.principal
            if pending.rejected:
                raise AuthError(INVALID_KEY)
            # The verifying task was cancelled before it got an answer: go round and take over.

    def _checkpw(self, key: bytes, hashed: bytes) -> bool:
        """Run one bcrypt comparison; runs in a worker thread.  Subclasses may wrap it."""
        return bcrypt.checkpw(key, hashed)

    def _probe(self, key: str) -> _Probe:
        if not key:
            raise AuthError(MISSING_KEY)
        probe = _Probe(key)
        if len(probe.key) > MAX_KEY_BYTES:
            raise AuthError(INVALID_KEY)
        return probe

    def _cached(self, probe: _Probe) -> Principal | None:
        hit = self._verified.get(probe.slot)
        if hit is not None and hmac.compare_digest(hit.digest, probe.digest):
            return hit.principal
        expires = self._rejected.get(probe.digest)
        if expires is not None:
            if time.monotonic() < expires:
                raise AuthError(INVALID_KEY)
            del self._rejected[probe.digest]
        return None

    async def _verify(self, probe: _Probe) -> Principal:
        """Check ``probe`` with bcrypt as the one task doing so; publish the outcome to waiters."""
        pending = _Pending()
        self._inflight[probe.digest] = pending
        try:
            user = await self._match(probe)
            if user is None:
                self._remember_rejected(probe.digest)
                pending.rejected = True
                raise AuthError(INVALID_KEY)
            principal = self._principals[user]
            self._verified[probe.slot] = _Verified(probe.digest, principal)
            pending.principal = principal
            return principal
        finally:
            del self._inflight[probe.digest]
            pending.done.set()

    async def _match(self, probe: _Probe) -> str | None:
        """Return the user whose hash matches, checking only the candidates the key selects."""
        selected = self._by_key_id.get(probe.key_id) if probe.key_id is not None else None
        candidates = (selected,) if selected is not None else self._without_key_id
        if not candidates:
            return None
        user = await trio.to_thread.run_sync(
            self._match_sync, probe.key, candidates, limiter=self._limiter
        )
        self._verifications += 1
        return user

    def _match_sync(self, key: bytes, candidates: Sequence[_Candidate]) -> str | None:
        for user, hashed in candidates:
            if self._checkpw(key, hashed):
                return user
        return None

    def _remember_rejected(self, digest: bytes) -> None:
        self._rejected[digest] = time.monotonic() + self._rejected_ttl_s
        self._rejected.move_to_end(digest)
        while len(self._rejected) > self._rejected_size:
            self._rejected.popitem(last=False)
