"""The server: one supervisor nursery holding the auth actor, the core actors and the gateway.

Shutdown (SIGINT/SIGTERM, or the ``stop`` event in tests): set ``closing`` so every WebSocket
closes itself with 1001, let hypercorn finish in-flight requests, then cancel the actors.  Running
jobs are not stopped; the next start re-adopts them.
"""

from __future__ import annotations

import gc
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
from ._audit import AuditLog
from ._service import Service

__all__ = ["load_auth", "run_server"]

log = logging.getLogger("fetchml.server")

# Seconds hypercorn gives in-flight HTTP requests to finish at shutdown.
GRACEFUL_TIMEOUT_S = 5.0
# Cyclic-GC thresholds while the server runs (CPython's default is 700, 10, 10).  The server keeps
# every unfinished job in memory, and under load about a thousand requests are in flight at once:
# with the defaults their short-lived objects survive two young collections, reach the oldest
# generation, and trigger a full collection over the whole heap every few thousand requests, so
# the cost of a request grew with the depth of the queue (20,000 queued jobs: a fifth of the CPU
# in full collections; bench/bench_gateway_ws.py).  Collecting the young generations less often
# lets those objects die young; garbage cycles are still collected, later.  The first threshold is
# above the young objects of a thousand busy connections (event fan-out kept it crossing 10,000:
# a collection every ~50 ms and ~15% more CPU per event frame; bench/bench_gateway_fanout.py).
GC_THRESHOLDS = (100_000, 20, 10)
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


class _HypercornConfig(hypercorn.config.Config):
    """hypercorn's config, with listening sockets that job processes do not inherit.

    hypercorn marks its listening sockets inheritable (for its multi-process workers), so every
    job the executor spawns would hold the server's port open: a restart could not bind it while
    a job from before runs, and connections would queue on a socket nobody serves.
    """

    def create_sockets(self) -> hypercorn.config.Sockets:
        sockets = super().create_sockets()
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
            sock.set_inheritable(False)
        return sockets


def _hypercorn_config(config: Config) -> hypercorn.config.Config:
    settings = config.server
    hconfig = _HypercornConfig()
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

    ``handle_signals=False`` leaves the process alone (embedding, tests): its signal handlers
    and its garbage-collector settings, which a server owning its process tunes.

    Raises :class:`ConfigError` / :class:`StoreError` on start-up problems.
    """
    _hypercorn_fix.apply()
    auth = AuthActor(load_auth(config))
    if stop is None:  # not ``stop or ...``: a trio.Event refuses to be used as a bool
        stop = trio.Event()
    store = await Store.open(config.data_path, synchronous=config.store.synchronous)
    gc_thresholds = gc.get_threshold()
    if handle_signals:
        gc.set_threshold(*GC_THRESHOLDS)
    try:
        async with trio.open_nursery() as supervisor:
            await supervisor.start(auth.run)
            scheduler = await start_actors(supervisor, config, store)
            # Everything recovery loaded (every unfinished job) lives as long as the server: move
            # it out of the collector's reach so full collections stop rescanning it.
            if handle_signals:
                gc.freeze()
            closing = trio.Event()
            audit = AuditLog(config.audit_path) if config.audit.enabled else None
            if audit is not None:
                await supervisor.start(audit.run)
            app = create_app(Service(scheduler, auth, audit), config.server, closing)
            hconfig = _hypercorn_config(config)

            async def gateway(*, task_status: trio.TaskStatus[list[str]]) -> None:
                async def shutdown_trigger() -> None:
                    await stop.wait()
                    # WebSockets close themselves with 1001 during hypercorn's graceful wait.
                    closing.set()
                    supervisor.start_soon(_abort_after_grace, hconfig)

                await hypercorn.trio.serve(
                    app, hconfig, shutdown_trigger=shutdown_trigger, task_status=task_status
                )
                supervisor.cancel_scope.cancel()  # the gateway is done: stop the actors

            supervisor.start_soon(_abort_when_cancelled, hconfig)
            binds: list[str] = await supervisor.start(gateway)
            log.info("serving on %s (data in %s)", ", ".join(binds), config.data_path)
            if handle_signals:
                supervisor.start_soon(_stop_on_signal, stop)
            task_status.started(binds)
    finally:
        gc.set_threshold(*gc_thresholds)
        with trio.CancelScope(shield=True):
            await store.aclose()
    log.info("stopped; running jobs keep running and are re-adopted on the next start")


async def _abort_after_grace(hconfig: hypercorn.config.Config) -> None:
    """Close the connections still open just after hypercorn's graceful timeout.

    Only a peer that stopped reading is left by then (hypercorn cannot cancel its writes).
    """
    await trio.sleep(GRACEFUL_TIMEOUT_S + 1)
    closed = _hypercorn_fix.abort_connections(hconfig)
    if closed:
        log.warning("closed %d connection(s) whose client stopped reading", closed)


async def _abort_when_cancelled(hconfig: hypercorn.config.Config) -> None:
    """When the supervisor is cancelled, close every connection left (hypercorn's writes to a
    peer that stopped reading ignore cancellation, and would keep the server from stopping)."""
    try:
        await trio.sleep_forever()
    finally:
        _hypercorn_fix.abort_connections(hconfig)


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            stop.set()
            return
