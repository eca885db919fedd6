"""Who may still be connected: the IP allow-list, and sessions that outlive one request.

A WebSocket or a followed log stream is authorized once, when it opens; the auth config may change
under it (a key revoked, expired or given other roles, auth switched on, the allow-list narrowed).
:class:`Sessions` answers, for such a session, whether it still holds and as whom, and waits for
the next moment the answer can change (a reload, or the key's expiry).
"""

from __future__ import annotations

import ipaddress
import math
import time

import trio

from ..auth import AuthActor, AuthConfig, IPNetwork, Principal
from ..errors import AuthError, PermissionDeniedError

__all__ = ["ADDRESS_NOT_ALLOWED", "Sessions", "address_allowed"]

ADDRESS_NOT_ALLOWED = "address not allowed"


def address_allowed(networks: tuple[IPNetwork, ...], address: str | None) -> bool:
    """Whether ``address`` is inside ``networks`` (always, when there are none)."""
    if not networks:
        return True
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c in net for c in candidates for net in networks if c.version == net.version)


class Sessions:
    """The allow-list and session checks against the auth actor's current config."""

    def __init__(self, auth: AuthActor) -> None:
        self._auth = auth
        self._config: AuthConfig | None = None
        self._networks: tuple[IPNetwork, ...] = ()

    def allows(self, address: str | None) -> bool:
        """Whether ``address`` passes ``auth.ip_whitelist`` (re-parsed only after a reload)."""
        config = self._auth.config
        if config is not self._config:
            self._config, self._networks = config, config.networks()
        return address_allowed(self._networks, address)

    def check(self, who: Principal, address: str | None) -> Principal:
        """The session's principal under the current config (its roles may have changed).

        Waits on nothing.  Raises :class:`PermissionDeniedError` when the address is no longer
        allowed, and :class:`AuthError` as :meth:`AuthActor.current` does (a revoked or expired
        key, auth switched on under an anonymous session).
        """
        if not self.allows(address):
            raise PermissionDeniedError(ADDRESS_NOT_ALLOWED)
        return self._auth.current(who)

    async def next_check(self, who: Principal, address: str | None) -> Principal:
        """Wait for the next reload or ``who``'s expiry, whichever is first; then :meth:`check`.

        Raises what :meth:`check` raises.
        """
        changed = self._auth.changed
        left = math.inf if who.expires_at is None else who.expires_at - time.time()
        with trio.move_on_after(max(left, 0.0)):
            await changed.wait()
        return self.check(who, address)

    async def until_invalid(self, who: Principal, address: str | None) -> str:
        """Wait until the session of ``who`` no longer holds; return why (a message).

        For sessions that keep the principal they started with (a followed log): a change of
        roles does not end them, a revoked or expired key, auth switched on, or an address
        taken off the allow-list does.  Raises nothing but cancellation.
        """
        try:
            self.check(who, address)
            while True:
                await self.next_check(who, address)
        except (AuthError, PermissionDeniedError) as exc:
            return exc.message
