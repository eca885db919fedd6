"""The auth actor: turns an API key into a :class:`Principal`, paying for bcrypt once per key.

Lookup never tries every stored hash: a key of our format names its key id, which selects the one
entry to check.  Only a key that names no known key id is checked against the hand-written entries
that have no key id.  bcrypt runs in worker threads (bounded by a ``CapacityLimiter``) so the event
loop never blocks on it.  Verified keys are cached by the SHA-256 digest of the key, never the key
itself; rejected keys are remembered for a short time in a bounded LRU.

With an auth file to watch, the actor reloads it when it changes or on :meth:`request_reload`
(SIGHUP): a valid file replaces the config at once (keys still present stay cached, revoked ones
stop working), a broken one is refused and the last good config stays in force.  Each reload is
reported to ``on_reload``; :attr:`changed` wakes whoever holds a session open on a key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import bcrypt
import trio

from fetchml._faults import report_internal_error
from fetchml._models import text_problem
from fetchml.errors import AuthError, ConfigError

from ._config import AuthConfig
from ._keys import MAX_KEY_BYTES, key_id_of
from ._principal import ANONYMOUS, Principal
from ._reload import POLL_INTERVAL_S, AuthChange, AuthFile, ReloadReport, diff_configs

__all__ = [
    "AUTH_REQUIRED",
    "BCRYPT_THREADS",
    "EXPIRED_KEY",
    "INVALID_KEY",
    "REVOKED_KEY",
    "AuthActor",
]

log = logging.getLogger("fetchml.auth")

# bcrypt at cost 12 is ~200 ms of pure CPU per check; two threads keep a burst of new keys from
# starving the event loop and the jobs running on the same machine.
BCRYPT_THREADS: Final = 2
REJECTED_CACHE_SIZE: Final = 4096
# Long enough to absorb a flood of one bad key, short enough that a fixed config is not remembered
# as broken for long; a key's validity only changes with the config, which resets both caches.
REJECTED_TTL_S: Final = 30.0

INVALID_KEY: Final = "invalid API key"
MISSING_KEY: Final = "missing API key"
EXPIRED_KEY: Final = "API key expired"
REVOKED_KEY: Final = "API key revoked"
AUTH_REQUIRED: Final = "authentication is now required"

# (key id, bcrypt hash) of one stored key
_Candidate = tuple[str, bytes]
OnReload = Callable[[ReloadReport], Awaitable[None]]


class _Verified:
    """A cache entry for a verified key: its digest, its stored hash and its principal."""

    __slots__ = ("digest", "hashed", "principal")

    def __init__(self, digest: bytes, hashed: bytes, principal: Principal) -> None:
        self.digest = digest
        self.hashed = hashed
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

    With ``enabled: false`` every call authenticates as :data:`ANONYMOUS` (an admin).  Given
    ``source`` (the auth file), :meth:`run` reloads it on change (polled every
    ``poll_interval_s``) and on :meth:`request_reload`.
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        source: AuthFile | None = None,
        on_reload: OnReload | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        bcrypt_threads: int = BCRYPT_THREADS,
        rejected_cache_size: int = REJECTED_CACHE_SIZE,
        rejected_ttl_s: float = REJECTED_TTL_S,
    ) -> None:
        self._source = source
        self._on_reload = on_reload
        self._poll_interval_s = poll_interval_s
        self._reload_requested = trio.Event()
        self._changed = trio.Event()
        self._verified: dict[str | bytes, _Verified] = {}
        self._rejected: OrderedDict[bytes, float] = OrderedDict()
        self._rejected_size = rejected_cache_size
        self._rejected_ttl_s = rejected_ttl_s
        self._inflight: dict[bytes, _Pending] = {}
        self._limiter = trio.CapacityLimiter(bcrypt_threads)
        self._verifications = 0
        self._generation = 0
        self._verified_hashes: dict[str, bytes] = {}  # key id -> the hash that verified it
        self._install(config)

    @property
    def config(self) -> AuthConfig:
        """The config this actor authenticates against (the last good one)."""
        return self._config

    @property
    def verifications(self) -> int:
        """How many keys a bcrypt worker thread has finished checking (one run per key)."""
        return self._verifications

    @property
    def changed(self) -> trio.Event:
        """An event set at the next config change (each change brings a fresh event)."""
        return self._changed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run as a supervised actor: report started, then reload the auth file until cancelled.

        Without a ``source`` it only waits.  Waits on the poll interval and on reload requests;
        file reading and parsing run in a worker thread.  A fault while reloading is reported as an
        internal error and the last good config stays in force.  Raises only ``trio.Cancelled``.
        """
        task_status.started()
        if self._source is None:
            await trio.sleep_forever()
        while True:
            with trio.move_on_after(self._poll_interval_s):
                await self._reload_requested.wait()
            forced = self._reload_requested.is_set()
            self._reload_requested = trio.Event()
            try:
                await self.reload(force=forced)
            except Exception as exc:  # a fault of ours: the last good config stays in force
                report_internal_error("auth", exc, "reloading the auth file", logger=log)

    def request_reload(self) -> None:
        """Ask :meth:`run` to re-read the auth file now (what SIGHUP does).  Waits on nothing."""
        self._reload_requested.set()

    async def reload(self, *, force: bool = True) -> ReloadReport | None:
        """Re-read the auth file; apply it if it is valid, keep the current config if not.

        Without ``force`` an unchanged file is not re-read.  Returns the report (also passed to
        ``on_reload``), or ``None`` when nothing was read or nothing changed.  Waits on a worker
        thread (file I/O) and on ``on_reload``; an OSError of ``on_reload`` is logged.  Raises
        only cancellation.
        """
        source = self._source
        if source is None:
            return None
        trigger = "signal" if force else "file"
        try:
            config = await trio.to_thread.run_sync(
                functools.partial(source.read_if_changed, force=force)
            )
        except ConfigError as exc:
            log.error("auth file refused, the last good one stays in force: %s", exc.message)
            report = ReloadReport(ok=False, trigger=trigger, error=exc.message)
        else:
            if config is None:
                return None
            changes = self.replace(config)
            if not changes and not force:
                return None
            log.info("auth file reloaded: %d change(s)", len(changes))
            report = ReloadReport(ok=True, trigger=trigger, changes=changes)
        if self._on_reload is not None:
            try:
                await self._on_reload(report)
            except OSError as exc:
                # The reload stands (the file says so); failing to record it must not take the
                # server down with it.
                log.error("could not record an auth reload: %s", exc)
        return report

    def replace(self, config: AuthConfig) -> tuple[AuthChange, ...]:
        """Authenticate against ``config`` from now on; return what changed.  Waits on nothing.

        Verified keys whose user and hash are unchanged stay cached (with their new principal),
        so a reload costs no bcrypt; removed or changed keys stop authenticating at once, and
        :attr:`changed` is set so that sessions opened with them can end.
        """
        changes = diff_configs(self._config, config)
        self._install(config)
        self._generation += 1
        self._verified = {
            slot: _Verified(hit.digest, hit.hashed, self._principals[hit.principal.key_id])
            for slot, hit in self._verified.items()
            if self._by_ref.get(hit.principal.key_id) == hit.hashed
        }
        self._verified_hashes = {
            ref: hashed
            for ref, hashed in self._verified_hashes.items()
            if self._by_ref.get(ref) == hashed
        }
        self._rejected.clear()  # a key rejected before may be one that was just added
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return changes

    def current(self, principal: Principal) -> Principal:
        """The principal as the current config sees it (roles may have changed).

        For sessions that outlive one request: call it when :attr:`changed` fires or the key's
        expiry passes.  Waits on nothing.  Raises ``AuthError`` when the key was revoked (or its
        hash replaced) or has expired, or when auth was switched on under an anonymous session.
        """
        if not self._config.enabled:
            return principal
        if principal is ANONYMOUS:
            raise AuthError(AUTH_REQUIRED)
        ref = principal.key_id
        hashed = self._verified_hashes.get(ref)
        if hashed is None or self._by_ref.get(ref) != hashed:
            raise AuthError(REVOKED_KEY)
        now = self._principals[ref]
        if now.user != principal.user:
            raise AuthError(REVOKED_KEY)
        return self._unexpired(now)

    def authenticate_cached(self, key: str) -> Principal | None:
        """Answer from the caches alone: a principal, or ``None`` if only bcrypt can tell.

        Waits on nothing.  Raises ``AuthError`` for an empty key, a key too long to be valid, a
        key that failed verification within the last ``rejected_ttl_s`` seconds, or an expired
        key.
        """
        if not self._config.enabled:
            return ANONYMOUS
        return self._cached(self._probe(key))

    async def authenticate(self, key: str) -> Principal:
        """Return the principal for ``key``.

        Returns without yielding on a cache hit.  Otherwise waits for one bcrypt check in a worker
        thread; concurrent calls with the same key share that one check.  Raises
        ``AuthError("missing API key")`` for an empty key, ``AuthError("invalid API key")`` for a
        key that matches no user and ``AuthError("API key expired")`` for an expired one.
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
                principal = await self._verify(probe)
                if principal is not None:
                    return principal
                continue  # the config changed during the check: check against the new one
            await pending.done.wait()
            if pending.rejected:
                raise AuthError(INVALID_KEY)
            # Verified (now in the cache, unless a reload since dropped it), cancelled, or
            # raced by a reload: go round, asking the cache and the current config again.

    def _install(self, config: AuthConfig) -> None:
        """Index ``config``'s keys: by key id, the hand-written ones, and every principal."""
        self._config = config
        self._by_ref: dict[str, bytes] = {}
        self._principals: dict[str, Principal] = {}
        self._by_key_id: dict[str, _Candidate] = {}
        legacy: list[_Candidate] = []
        for user, key in config.all_keys():
            candidate = (key.ref, key.hash.encode("ascii"))
            self._by_ref[key.ref] = candidate[1]
            self._principals[key.ref] = config.principal_for(user, key)
            if key.key_id is None:
                legacy.append(candidate)
            else:
                self._by_key_id[key.key_id] = candidate
        self._without_key_id: tuple[_Candidate, ...] = tuple(legacy)

    def _checkpw(self, key: bytes, hashed: bytes) -> bool:
        """Run one bcrypt comparison; runs in a worker thread.  Subclasses may wrap it."""
        return bcrypt.checkpw(key, hashed)

    def _probe(self, key: str) -> _Probe:
        if not key:
            raise AuthError(MISSING_KEY)
        if text_problem(key) is not None:
            raise AuthError(INVALID_KEY)  # no key has a NUL or a lone surrogate
        probe = _Probe(key)
        if len(probe.key) > MAX_KEY_BYTES:
            raise AuthError(INVALID_KEY)
        return probe

    def _cached(self, probe: _Probe) -> Principal | None:
        hit = self._verified.get(probe.slot)
        if hit is not None and hmac.compare_digest(hit.digest, probe.digest):
            return self._unexpired(hit.principal)
        expires = self._rejected.get(probe.digest)
        if expires is not None:
            if time.monotonic() < expires:
                raise AuthError(INVALID_KEY)
            del self._rejected[probe.digest]
        return None

    @staticmethod
    def _unexpired(principal: Principal) -> Principal:
        if principal.expires_at is not None and time.time() >= principal.expires_at:
            raise AuthError(EXPIRED_KEY)
        return principal

    async def _verify(self, probe: _Probe) -> Principal | None:
        """Check ``probe`` with bcrypt as the one task doing so; publish the outcome to waiters.

        Returns ``None`` (and publishes nothing) if the config was replaced during the check.
        """
        pending = _Pending()
        self._inflight[probe.digest] = pending
        generation = self._generation
        try:
            match = await self._match(probe)
            if generation != self._generation:
                return None
            if match is None:
                self._remember_rejected(probe.digest)
                pending.rejected = True
                raise AuthError(INVALID_KEY)
            ref, hashed = match
            principal = self._principals[ref]
            self._verified[probe.slot] = _Verified(probe.digest, hashed, principal)
            self._verified_hashes[ref] = hashed
            pending.principal = principal
            return self._unexpired(principal)
        finally:
            del self._inflight[probe.digest]
            pending.done.set()

    async def _match(self, probe: _Probe) -> _Candidate | None:
        """Return the stored key whose hash matches, checking only those the key selects."""
        selected = self._by_key_id.get(probe.key_id) if probe.key_id is not None else None
        candidates = (selected,) if selected is not None else self._without_key_id
        if not candidates:
            return None
        match = await trio.to_thread.run_sync(
            self._match_sync, probe.key, candidates, limiter=self._limiter
        )
        self._verifications += 1
        return match

    def _match_sync(self, key: bytes, candidates: Sequence[_Candidate]) -> _Candidate | None:
        for candidate in candidates:
            if self._checkpw(key, candidate[1]):
                return candidate
        return None

    def _remember_rejected(self, digest: bytes) -> None:
        self._rejected[digest] = time.monotonic() + self._rejected_ttl_s
        self._rejected.move_to_end(digest)
        while len(self._rejected) > self._rejected_size:
            self._rejected.popitem(last=False)
