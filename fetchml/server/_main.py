"""The server: one supervisor nursery holding the auth actor, the core actors, the audit log and
the gateway (served by hypercorn).

Shutdown (SIGINT/SIGTERM, or the ``stop`` event in tests): set ``closing`` so every WebSocket
closes itself with 1001, let hypercorn finish in-flight requests, then cancel the actors.  Running
jobs are not stopped; the next start re-adopts them.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import signal
import ssl
import sys
from typing import Any

import hypercorn.config
import hypercorn.trio
import msgspec
import trio

from .._config import Config
from ..actors import Scheduler, prepare_runtime, serve_actors
from ..audit import AuditLog
from ..auth import AuthActor
from ..gateway import Service, abort_connections, apply_hypercorn_fixes, create_app
from ..store import Store
from ._auth import auth_actor, load_auth
from ._tls import server_ssl_context

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
# How long the event loop's thread may hold the GIL while another thread waits for it (CPython's
# default is 5 ms).  The store commits and the run records are written in worker threads, and each
# of their calls into SQLite or the file system gives the GIL up and waits to get it back: while
# the loop is busy (a tick of a thousand subscribers' frames) each of those waits took up to 5 ms,
# so commits, and with them every state change, slowed down just when the fan-out had most to do
# (1,000 subscribers at 100 events/s: 59-66 events/s generated at 5 ms, 75-100 at 1 ms, p99 about
# halved; bench/bench_gateway_fanout.py).
SWITCH_INTERVAL_S = 0.001
# Seconds a new TLS connection has to finish its handshake (hypercorn's default is 60): a peer
# that connects and says nothing holds a connection task and a file descriptor until then.
TLS_HANDSHAKE_TIMEOUT_S = 10.0


class _HypercornConfig(hypercorn.config.Config):
    """hypercorn's config, with listening sockets that job processes do not inherit, and the
    TLS context that :func:`server_ssl_context` built and checked (hypercorn would load the
    files again, with its own settings and errors that name no file).

    hypercorn marks its listening sockets inheritable (for its multi-process workers), so every
    job the executor spawns would hold the server's port open: a restart could not bind it while
    a job from before runs, and connections would queue on a socket nobody serves.
    """

    tls_context: ssl.SSLContext | None = None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.tls_context if self.ssl_enabled else None

    def create_sockets(self) -> hypercorn.config.Sockets:
        sockets = super().create_sockets()
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
            sock.set_inheritable(False)
        return sockets


def _hypercorn_config(
    config: Config, tls_context: ssl.SSLContext | None = None
) -> hypercorn.config.Config:
    """hypercorn's settings for ``config``; with ``tls_context`` it serves only TLS (HTTPS and
    WSS) on the bound port, and the URLs it reports are ``https://``."""
    settings = config.server
    hconfig = _HypercornConfig()
    if tls_context is not None:
        # hypercorn serves TLS on ``bind`` when both are set; the files were already loaded
        # into tls_context, which create_ssl_context hands out instead of loading them again.
        hconfig.certfile = settings.tls.cert_file
        hconfig.keyfile = settings.tls.key_file
        hconfig.tls_context = tls_context
        hconfig.ssl_handshake_timeout = TLS_HANDSHAKE_TIMEOUT_S
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
    """Run until SIGINT/SIGTERM (or ``stop``); ``task_status.started`` gets the bound URLs
    (``https://`` with ``server.tls`` on).

    ``handle_signals=False`` leaves the process alone (embedding, tests): its signal handlers,
    its garbage-collector settings and its thread switch interval, which a server owning its
    process tunes.

    Raises :class:`ConfigError` / :class:`StoreError` on start-up problems (a TLS certificate
    or key that cannot be used included, before anything is bound or written).
    """
    apply_hypercorn_fixes()
    tls = config.server.tls
    tls_context = server_ssl_context(tls) if tls.enabled else None
    audit = AuditLog(config.audit_path) if config.audit.enabled else None
    auth = auth_actor(config, audit)
    if stop is None:  # not ``stop or ...``: a trio.Event refuses to be used as a bool
        stop = trio.Event()
    runtime = await prepare_runtime(config)
    try:
        store = await Store.open(config.data_path, synchronous=config.store.synchronous)
    except BaseException:
        runtime.close()
        raise
    gc_thresholds = gc.get_threshold()
    switch_interval = sys.getswitchinterval()
    if handle_signals:
        gc.set_threshold(*GC_THRESHOLDS)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        async with trio.open_nursery() as supervisor:
            await supervisor.start(auth.run)
            scheduler: Scheduler = await supervisor.start(serve_actors, config, store, runtime)
            # Everything recovery loaded (every unfinished job) lives as long as the server: move
            # it out of the collector's reach so full collections stop rescanning it.
            if handle_signals:
                gc.freeze()
            closing = trio.Event()
            if audit is not None:
                await supervisor.start(audit.run)
                await audit.record(
                    "server.start", user=None, source="server", detail=_start_detail(config, auth)
                )
            service = Service(scheduler, auth, audit, limits=config.limits)
            app = create_app(service, config.server, closing)
            hconfig = _hypercorn_config(config, tls_context)

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
                supervisor.start_soon(_handle_signals, stop, auth)
            task_status.started(binds)
    finally:
        gc.set_threshold(*gc_thresholds)
        sys.setswitchinterval(switch_interval)
        with trio.CancelScope(shield=True):
            await store.aclose()
        runtime.close()
    log.info("stopped; running jobs keep running and are re-adopted on the next start")


def _start_detail(config: Config, auth: AuthActor) -> dict[str, Any]:
    """What a start is audited with: digests of the server and auth config in force, so that a
    change made while the server was down shows between two starts (no key material: the auth
    digest covers hashes, which the audit log never holds)."""
    auth_config = auth.config
    return {
        "config_sha256": hashlib.sha256(msgspec.json.encode(config)).hexdigest(),
        "auth_sha256": hashlib.sha256(msgspec.json.encode(auth_config)).hexdigest(),
        "users": len(auth_config.api_keys),
        "keys": sum(1 for _ in auth_config.all_keys()),
    }


async def _abort_after_grace(hconfig: hypercorn.config.Config) -> None:
    """Close the connections still open just after hypercorn's graceful timeout.

    Only a peer that stopped reading is left by then (hypercorn cannot cancel its writes).
    """
    await trio.sleep(GRACEFUL_TIMEOUT_S + 1)
    closed = abort_connections(hconfig)
    if closed:
        log.warning("closed %d connection(s) whose client stopped reading", closed)


async def _abort_when_cancelled(hconfig: hypercorn.config.Config) -> None:
    """When the supervisor is cancelled, close every connection left (hypercorn's writes to a
    peer that stopped reading ignore cancellation, and would keep the server from stopping)."""
    try:
        await trio.sleep_forever()
    finally:
        abort_connections(hconfig)


async def _handle_signals(stop: trio.Event, auth: AuthActor) -> None:
    """SIGINT/SIGTERM: set ``stop`` and return.  SIGHUP: reload the auth file now."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("received SIGHUP; reloading the auth file")
                auth.request_reload()
                continue
            log.info("received %s; shutting down", signal.Signals(signum).name)
            stop.set()
            return
