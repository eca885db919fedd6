"""Authentication and authorization: API keys, users, roles and permissions.

Keys are high-entropy random strings (``fml_<key_id>_<secret>``) of which only bcrypt hashes are
stored; :class:`AuthActor` verifies a key once (off the event loop) and caches the outcome.
A verified key resolves to a :class:`Principal`, which answers permission questions.
"""

from ._actor import (
    AUTH_REQUIRED,
    BCRYPT_THREADS,
    EXPIRED_KEY,
    INVALID_KEY,
    MISSING_KEY,
    REVOKED_KEY,
    AuthActor,
)
from ._config import (
    NAME_RULE,
    AuthConfig,
    IPNetwork,
    KeyEntry,
    UserEntry,
    derived_key_id,
    is_valid_name,
    parse_auth_config,
    with_user,
)
from ._file import ensure_auth_file, load_auth_file, parse_auth_text, write_auth_file
from ._keys import (
    DEFAULT_ROUNDS,
    KEY_PREFIX,
    MAX_KEY_BYTES,
    MAX_ROUNDS,
    MIN_ROUNDS,
    generate_key,
    hash_key,
    key_id_of,
)
from ._permissions import (
    ALL_PERMISSIONS,
    BUILTIN_ROLES,
    DATASETS_WRITE,
    JOBS_CREATE,
    JOBS_READ,
    JOBS_READ_ALL,
    JOBS_UPDATE,
    JOBS_UPDATE_ALL,
    ROLE_ADMIN,
    ROLE_ANALYST,
    ROLE_RESEARCHER,
    STATUS_READ,
)
from ._principal import ANONYMOUS, Principal
from ._reload import POLL_INTERVAL_S, AuthChange, AuthFile, ReloadReport, diff_configs

__all__ = [
    "ALL_PERMISSIONS",
    "ANONYMOUS",
    "AUTH_REQUIRED",
    "BCRYPT_THREADS",
    "BUILTIN_ROLES",
    "DATASETS_WRITE",
    "DEFAULT_ROUNDS",
    "EXPIRED_KEY",
    "INVALID_KEY",
    "JOBS_CREATE",
    "JOBS_READ",
    "JOBS_READ_ALL",
    "JOBS_UPDATE",
    "JOBS_UPDATE_ALL",
    "KEY_PREFIX",
    "MAX_KEY_BYTES",
    "MAX_ROUNDS",
    "MIN_ROUNDS",
    "MISSING_KEY",
    "NAME_RULE",
    "POLL_INTERVAL_S",
    "REVOKED_KEY",
    "ROLE_ADMIN",
    "ROLE_ANALYST",
    "ROLE_RESEARCHER",
    "STATUS_READ",
    "AuthActor",
    "AuthChange",
    "AuthConfig",
    "AuthFile",
    "IPNetwork",
    "KeyEntry",
    "Principal",
    "ReloadReport",
    "UserEntry",
    "derived_key_id",
    "diff_configs",
    "ensure_auth_file",
    "generate_key",
    "hash_key",
    "is_valid_name",
    "key_id_of",
    "load_auth_file",
    "parse_auth_config",
    "parse_auth_text",
    "with_user",
    "write_auth_file",
]
