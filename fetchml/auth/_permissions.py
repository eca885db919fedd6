"""Permission names and the built-in roles (contract names: keep them exactly)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "ALL_PERMISSIONS",
    "BUILTIN_ROLES",
    "DATASETS_WRITE",
    "JOBS_CREATE",
    "JOBS_READ",
    "JOBS_READ_ALL",
    "JOBS_UPDATE",
    "JOBS_UPDATE_ALL",
    "ROLE_ADMIN",
    "ROLE_ANALYST",
    "ROLE_RESEARCHER",
    "STATUS_READ",
]

JOBS_CREATE: Final = "jobs:create"
JOBS_READ: Final = "jobs:read"
JOBS_READ_ALL: Final = "jobs:read:all"
JOBS_UPDATE: Final = "jobs:update"
JOBS_UPDATE_ALL: Final = "jobs:update:all"
STATUS_READ: Final = "status:read"
DATASETS_WRITE: Final = "datasets:write"  # register datasets (reading them needs a jobs read)

ALL_PERMISSIONS: Final[frozenset[str]] = frozenset(
    {
        JOBS_CREATE,
        JOBS_READ,
        JOBS_READ_ALL,
        JOBS_UPDATE,
        JOBS_UPDATE_ALL,
        STATUS_READ,
        DATASETS_WRITE,
    }
)

ROLE_ADMIN: Final = "admin"
ROLE_RESEARCHER: Final = "researcher"
ROLE_ANALYST: Final = "analyst"

BUILTIN_ROLES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        ROLE_ADMIN: ALL_PERMISSIONS,
        ROLE_RESEARCHER: frozenset(
            {JOBS_CREATE, JOBS_READ, JOBS_UPDATE, STATUS_READ, DATASETS_WRITE}
        ),
        ROLE_ANALYST: frozenset({JOBS_READ_ALL, STATUS_READ}),
    }
)
