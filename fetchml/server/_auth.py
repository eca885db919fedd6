"""The auth config the server runs with: read (or created) at start-up, checked, and watched by
the auth actor, each reload audited."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

from .._config import Config
from ..audit import AuditLog
from ..auth import (
    AuthActor,
    AuthConfig,
    AuthFile,
    ReloadReport,
    ensure_auth_file,
    parse_auth_config,
)
from ..errors import ConfigError

__all__ = ["auth_actor", "load_auth"]

log = logging.getLogger("fetchml.server")

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def load_auth(config: Config, *, announce: bool = True) -> tuple[AuthConfig, AuthFile | None]:
    """The auth config, and the auth file it came from, to be watched (None for an inline
    ``auth:`` section).  ``auth_file`` is created on first start.

    On first start the new admin key is printed once on stderr.  Blocks on file I/O.  Raises
    :class:`ConfigError`, also when auth is disabled on a non-loopback bind or when others may
    write the auth file.
    """
    source: AuthFile | None = None
    if config.auth is not None:
        auth = parse_auth_config(config.auth, source="server config")
        _check_auth(config, auth)
    else:
        path = Path(config.auth_file)
        key = ensure_auth_file(path)
        if key is not None and announce:
            print(
                f"Created {path} with user 'admin'. Its API key, shown only this once:\n\n"
                f"    {key}\n\nKeep it safe: only its bcrypt hash is stored.",
                file=sys.stderr,
                flush=True,
            )
        source = AuthFile(path, validate=functools.partial(_check_auth, config))
        auth = source.load()
    if not auth.enabled:
        log.warning("AUTHENTICATION IS DISABLED: every local client acts as an admin")
    return auth, source


def _check_auth(config: Config, auth: AuthConfig) -> None:
    """Refuse an auth config this server must not run with.  Raises :class:`ConfigError`."""
    if not auth.enabled and config.server.host not in _LOOPBACK:
        raise ConfigError(
            f"auth.enabled: false is only allowed on a loopback bind, not {config.server.host}"
        )


def auth_actor(config: Config, audit: AuditLog | None) -> AuthActor:
    """The auth actor; with an auth file (not an inline section) it reloads it on change.

    Every reload is logged by the actor and audited here: each change (``key.revoke``, …) as
    one entry, a refused file as ``auth.reload`` with the error.
    """

    async def audit_reload(report: ReloadReport) -> None:
        if audit is None:
            return
        source = "auth file, reloaded on " + ("SIGHUP" if report.trigger == "signal" else "change")
        if not report.ok:
            await audit.record(
                "auth.reload",
                user=None,
                outcome="refused",
                code="invalid_config",
                source=source,
                detail={"error": report.error},
            )
            return
        for change in report.changes:
            detail = {"user": change.user, "key_id": change.key_id}
            await audit.record(change.action, user=None, source=source, detail=detail)
        if not report.changes:
            await audit.record("auth.reload", user=None, source=source, detail={"changes": 0})

    initial, source = load_auth(config)
    if source is None:
        return AuthActor(initial)
    return AuthActor(initial, source=source, on_reload=audit_reload)
