"""Who a request acts for, and what that user may do."""

from __future__ import annotations

from typing import Final

import msgspec

from fetchml.errors import PermissionDeniedError

from ._permissions import (
    ALL_PERMISSIONS,
    JOBS_READ,
    JOBS_READ_ALL,
    JOBS_UPDATE,
    JOBS_UPDATE_ALL,
    ROLE_ADMIN,
)

__all__ = ["ANONYMOUS", "Principal"]


class Principal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An authenticated user with the permissions their roles and extras resolve to.

    ``admin`` is true for users with ``admin: true`` or the built-in ``admin`` role; such a user
    holds every permission.  ``key_id`` names the API key that authenticated (one user may hold
    several keys): its public key id, or ``h-`` and a fingerprint of its hash for a hand-written
    key without one; ``expires_at`` is that key's expiry (Unix time) or ``None``.  The struct is
    msgpack-encodable so it can travel between actors.
    """

    user: str
    roles: tuple[str, ...]
    permissions: frozenset[str]
    admin: bool
    key_id: str = ""
    expires_at: float | None = None

    def can(self, permission: str) -> bool:
        """Return whether the user holds ``permission``."""
        return permission in self.permissions

    def require(self, permission: str) -> None:
        """Return if the user holds ``permission``; raise ``PermissionDeniedError`` if not."""
        if permission not in self.permissions:
            raise PermissionDeniedError(f"missing permission {permission}", permission=permission)

    def can_read_job(self, owner: str) -> bool:
        """Return whether the user may see a job owned by ``owner``."""
        if JOBS_READ_ALL in self.permissions:
            return True
        return owner == self.user and JOBS_READ in self.permissions

    def require_read_job(self, owner: str) -> None:
        """Return if the user may see ``owner``'s job; raise ``PermissionDeniedError`` if not."""
        if self.can_read_job(owner):
            return
        if JOBS_READ in self.permissions:
            raise PermissionDeniedError("you can only read your own jobs", permission=JOBS_READ_ALL)
        raise PermissionDeniedError(f"missing permission {JOBS_READ}", permission=JOBS_READ)

    def can_cancel_job(self, owner: str) -> bool:
        """Return whether the user may cancel (or requeue) a job owned by ``owner``."""
        if JOBS_UPDATE_ALL in self.permissions:
            return True
        return owner == self.user and JOBS_UPDATE in self.permissions

    def require_cancel_job(self, owner: str) -> None:
        """Return if the user may cancel ``owner``'s job; raise ``PermissionDeniedError`` if not."""
        if self.can_cancel_job(owner):
            return
        if JOBS_UPDATE in self.permissions:
            raise PermissionDeniedError(
                "you can only cancel your own jobs", permission=JOBS_UPDATE_ALL
            )
        raise PermissionDeniedError(f"missing permission {JOBS_UPDATE}", permission=JOBS_UPDATE)


ANONYMOUS: Final = Principal(
    user="anonymous", roles=(ROLE_ADMIN,), permissions=ALL_PERMISSIONS, admin=True
)
"""The principal every request acts as when auth is disabled (``enabled: false``)."""
