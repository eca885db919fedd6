"""Rate limits of the gateway: a token bucket per API key, and a ban for addresses that guess keys.

Both are plain synchronous bookkeeping on a monotonic clock (injectable, for tests): a check is a
dict lookup and a little arithmetic, with nothing to await, so it can sit in front of every
WebSocket op.  Memory is bounded: buckets exist only for keys that authenticated and are dropped
once full again (idle), and at most :data:`MAX_ADDRESSES` addresses are tracked, the least
recently seen forgotten first, so a spray of source addresses cannot exhaust memory.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from .._config import LimitsSettings

__all__ = ["MAX_ADDRESSES", "AddressGuard", "Limits", "RateLimiter", "address_key"]

Clock = Callable[[], float]

# Addresses with recent failed keys (or a ban) that are remembered at once.
MAX_ADDRESSES = 10_000
# Seconds between sweeps of idle buckets (a sweep runs only when a new key shows up).
PRUNE_INTERVAL_S = 60.0


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """Token buckets per API key: ``burst`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._next_prune = clock() + PRUNE_INTERVAL_S

    def take(self, user: str, key_id: str) -> float:
        """Count one request of ``user``'s key ``key_id``: 0.0 if it may pass, else the seconds
        until it could (a refused request uses up nothing)."""
        now = self._clock()
        key = (user, key_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            if now >= self._next_prune:
                self._prune(now)
            self._buckets[key] = _Bucket(self.burst - 1.0, now)
            return 0.0
        tokens = bucket.tokens + (now - bucket.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return 0.0
        bucket.tokens = tokens
        return (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        """Forget the buckets that have refilled: a fresh bucket would be the same."""
        full_after = self.burst / self.rate
        idle = [key for key, b in self._buckets.items() if now - b.stamp >= full_after]
        for key in idle:
            del self._buckets[key]
        self._next_prune = now + PRUNE_INTERVAL_S


@functools.lru_cache(maxsize=4096)
def address_key(address: str) -> str:
    """What the ban counts under: the address, or its /64 for IPv6, since one IPv6 host is
    normally handed a whole /64 and could rotate through it."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


class _Address:
    __slots__ = ("banned_until", "checking", "failures")

    def __init__(self, limit: int) -> None:
        self.failures: deque[float] = deque(maxlen=limit)
        self.banned_until = 0.0
        self.checking: dict[bytes, int] = {}  # key digest -> requests waiting on its check


class AddressGuard:
    """Counts failed keys per source address; ``failures`` within ``window_s`` ban it for
    ``ban_s``.  A success does not wipe the count: one valid key must not cover guesses of
    another."""

    def __init__(
        self,
        failures: int,
        window_s: float,
        ban_s: float,
        *,
        clock: Clock = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.ban_s = ban_s
        self._clock = clock
        self._max = max_addresses
        self._table: OrderedDict[str, _Address] = OrderedDict()

    def banned_for(self, address: str) -> float:
        """Seconds left of ``address``'s ban, 0.0 when it is not banned."""
        entry = self._table.get(address_key(address))
        if entry is None or not entry.banned_until:
            return 0.0
        left = entry.banned_until - self._clock()
        return left if left > 0 else 0.0

    def begin_check(self, address: str, digest: bytes) -> bool:
        """Reserve a check (bcrypt) of the key with SHA-256 ``digest`` from ``address``.

        False when the address's recent failures plus the distinct keys being checked for it
        already reach ``failures``: that many guesses would start a ban, so more at once are
        not checked (requests with the same key share one check and one reservation).  Pair
        every True with :meth:`end_check`.
        """
        entry = self._entry(address_key(address))
        if digest in entry.checking:
            entry.checking[digest] += 1
            return True
        now = self._clock()
        recent = sum(1 for t in entry.failures if now - t <= self.window_s)
        if recent + len(entry.checking) >= self.failures:
            return False
        entry.checking[digest] = 1
        return True

    def end_check(self, address: str, digest: bytes) -> None:
        """Release a reservation of :meth:`begin_check`."""
        entry = self._table.get(address_key(address))
        if entry is None or digest not in entry.checking:
            return  # forgotten meanwhile (evicted): nothing to release
        entry.checking[digest] -= 1
        if not entry.checking[digest]:
            del entry.checking[digest]

    def _entry(self, address: str) -> _Address:
        entry = self._table.get(address)
        if entry is None:
            entry = self._table[address] = _Address(self.failures)
            if len(self._table) > self._max:
                self._table.popitem(last=False)
        else:
            self._table.move_to_end(address)
        return entry

    def failed(self, address: str) -> bool:
        """Count a failed key from ``address``; True when this failure starts a ban.

        Failures that arrive while the address is banned (checks already under way when the
        ban began) are not counted.
        """
        now = self._clock()
        entry = self._entry(address_key(address))
        if entry.banned_until > now:
            return False
        times = entry.failures
        times.append(now)
        if len(times) >= self.failures and now - times[0] <= self.window_s:
            times.clear()
            entry.banned_until = now + self.ban_s
            return True
        return False

    def __len__(self) -> int:
        return len(self._table)


class Limits:
    """The gateway's limits from ``limits.*`` (both None when disabled), with refusal counts.

    ``refused`` counts refusals by kind (``key``: a key over its rate, ``ban``: a banned
    address) for ``/metrics``.
    """

    def __init__(self, settings: LimitsSettings | None, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.keys: RateLimiter | None = None
        self.addresses: AddressGuard | None = None
        if settings is not None and settings.enabled:
            self.keys = RateLimiter(settings.requests_per_s, settings.burst, clock=clock)
            self.addresses = AddressGuard(
                settings.auth_failures,
                settings.auth_failure_window_s,
                settings.ban_s,
                clock=clock,
            )
        self.refused = {"key": 0, "ban": 0}
