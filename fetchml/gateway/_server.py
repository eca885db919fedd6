"""The server: one supervisor nursery holding the auth actor, the core actors and the gateway.

Shutdown (SIGINT/SIGTERM, or the ``stop`` event in tests): set ``closing`` so every WebSocket
closes itself with 1001, let hypercorn finish in-flight requests, then cancel the actors.  Running
jobs are not stopped; the next start re-adopts them.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hypercorn.config
import hypercorn.trio
import trio

from .._config import Config
from ..actors import start_actors
from ..auth import AuthActor, AuthConfig, ensure_auth_file, load_auth_file, parse_auth_config
from ..errors import ConfigError
from ..store import Store
from . import _hypercorn_fix
from ._app import create_app
from ._service import Service

__all__ = ["load_auth", "run_server"]

log = logging.getLogger("fetchml.server")

# Seconds hypercorn gives in-flight HTTP requests to finish at shutdown.
GRACEFUL_TIMEOUT_S = 5.0
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def load_auth(config: Config, *, announce: bool = True) -> AuthConfig:
    """The auth config: inline ``auth:`` section, else ``auth_file`` (created on first start).

    On first start the new admin key is printed once on stderr.  Raises :class:`ConfigError`,
    also when auth is disabled on a non-loopback bind.
    """
    if config.auth is not None:
        auth = parse_auth_config(config.auth, source="server config")
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
        auth = load_auth_file(path)
    if not auth.enabled:
        if config.server.host not in _LOOPBACK:
            raise ConfigError(
                f"auth.enabled: false is only allowed on a loopback bind, not {config.server.host}"
            )
        log.warning("AUTHENTICATION IS DISABLED: every local client acts as an admin")
    return auth


def _hypercorn_config(config: Config) -> hypercorn.config.Config:
    settings = config.server
    hconfig = hypercorn.config.Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    hconfig.bind = [f"{host}:{settings.port}"]
    hconfig.websocket_max_message_size = settings.max_frame_bytes
    hconfig.graceful_timeout = GRACEFUL_TIMEOUT_S
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    return hconfig


async def run_server(
    config: Config,
    *,
    stop: trio.Event | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop``); ``task_status.started`` gets the bound URLs.

    ``handle_signals=False`` leaves the process's signals alone (embedding, tests).

    Raises :class:`ConfigError` / :class:`StoreError` on start-up problems.
    """
    _hypercorn_fix.apply()
    auth = AuthActor(load_auth(config))
    stop = stop or trio.Event()
    store = await Store.open(config.data_path, synchronous=config.store.synchronous)
    try:
        async with trio.open_nursery() as supervisor:
            await supervisor.start(auth.run)
            scheduler = await start_actors(supervisor, config, store)
            closing = trio.Event()
            app = create_app(Service(scheduler, auth), config.server, closing)

            async def gateway(*, task_status: trio.TaskStatus[list[str]]) -> None:
                async def shutdown_trigger() -> None:
                    await stop.wait()
                    # WebSockets close themselves with 1001 during hypercorn's graceful wait.
                    closing.set()

                await hypercorn.trio.serve(
                    app,
                    _hypercorn_config(config),
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
                supervisor.cancel_scope.cancel()  # the gateway is done: stop the actors

            binds: list[str] = await supervisor.start(gateway)
            log.info("serving on %s (data in %s)", ", ".join(binds), config.data_path)
            if handle_signals:
                supervisor.start_soon(_stop_on_signal, stop)
            task_status.started(binds)
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
    log.info("stopped; running jobs keep running and are re-adopted on the next start")


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            stop.set()
            return
