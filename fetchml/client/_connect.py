"""Opening a connection: settings, the WebSocket handshake, and errors that name the URL."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, cast
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from fetchml.errors import FetchMLError

from ._client import Client
from ._errors import ServerUnreachableError, http_error
from ._settings import Settings, check_key, load_settings, websocket_url
from ._tls import client_ssl_context, describe_tls_failure

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "connect"]

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
# Longest a request waits out rate limiting in total before RateLimitedError reaches the caller;
# a ban (minutes) is never waited out.
DEFAULT_RATE_LIMIT_WAIT_S: Final = 30.0
# Frames up to this size are accepted from the server (a list of many jobs can be large).
MAX_FRAME_BYTES: Final = 64 << 20


@asynccontextmanager
async def connect(
    url: str | None = None,
    key: str | None = None,
    *,
    ca_file: str | None = None,
    config_path: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    rate_limit_wait_s: float = DEFAULT_RATE_LIMIT_WAIT_S,
) -> AsyncIterator[Client]:
    """Connect to a Fetch ML server: ``async with connect(url, key) as client: ...``.

    ``url`` is the server's base URL (``http://127.0.0.1:9103``; ``ws://…/ws`` works too),
    ``key`` an API key and ``ca_file`` a PEM file of the CA certificates to trust for an
    ``https``/``wss`` server (default: the system's); each left out comes from
    ``FETCHML_URL`` / ``FETCHML_API_KEY`` / ``FETCHML_CA_FILE``, then the client config file
    (see :func:`load_settings`).  The server's certificate and host name are always verified.

    A request the server refuses as ``rate_limited`` is sent again after the wait it names, as
    long as the waits of that request add up to at most ``rate_limit_wait_s`` (0: never): a
    script that queues thousands of jobs is slowed to the server's rate instead of failing.

    Raises :class:`ServerUnreachableError` (naming the URL, and for a certificate that is not
    trusted, how to trust it) when no connection can be made, :class:`AuthError` for a rejected
    key, :class:`ConfigError` for a bad URL, config file or CA file.
    """
    settings = load_settings(url=url, key=key, ca_file=ca_file, config_path=config_path)
    connected = False
    try:
        async with trio.open_nursery() as nursery:
            ws, stream = await _open_websocket(nursery, settings, connect_timeout)
            connected = True
            client = Client(
                ws,
                settings.url,
                nursery,
                key=settings.key,
                stream=stream,
                ca_file=settings.ca_file,
                rate_limit_wait_s=rate_limit_wait_s,
            )
            nursery.start_soon(client._read_frames)
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        # The one place the client's nursery's exception groups are unwrapped: what reaches
        # the caller is the one error inside (the caller's own, or the connection's).
        leaf = _single_leaf(exc)
        if leaf is None:
            raise
        if not connected:
            raise _connect_error(leaf, settings) from None
        if leaf is exc:
            raise
        raise leaf from None


async def _open_websocket(
    nursery: trio.Nursery, settings: Settings, limit_s: float
) -> tuple[WebSocketConnection, trio.abc.AsyncResource]:
    """Open the TCP (or TLS) stream ourselves, so that it is closed whatever goes wrong:
    trio-websocket leaves the socket open when the server rejects the upgrade."""
    headers: list[tuple[bytes, bytes]] = []
    check_key(settings.key)
    if settings.key is not None:
        headers.append((b"authorization", f"Bearer {settings.key}".encode()))
    target = urlsplit(websocket_url(settings.url))
    secure = target.scheme == "wss"
    host = target.hostname or "127.0.0.1"
    port = target.port or (443 if secure else 80)
    host_header = f"[{host}]" if ":" in host else host
    if port not in (80, 443):
        host_header = f"{host_header}:{port}"
    ssl_context = client_ssl_context(settings.ca_file) if secure else None
    with trio.fail_after(limit_s):
        stream = await _open_stream(host, port, ssl_context)
        watch = _HandshakeWatch(nursery)
        try:
            ws = await wrap_client_stream(
                cast(trio.Nursery, watch),
                stream,
                host_header,
                target.path,
                extra_headers=headers,
                max_message_size=MAX_FRAME_BYTES,
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        watch.opened = True
    return ws, stream


async def _open_stream(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    """A TCP stream, or a TLS stream whose handshake (certificate check included) is done.

    The handshake is done here, not left to the first write: trio-websocket turns a failed
    write into a closed connection and loses the reason (an untrusted certificate).  Raises
    OSError, or trio.BrokenResourceError caused by the :class:`ssl.SSLError`.
    """
    if ssl_context is None:
        return await trio.open_tcp_stream(host, port)
    stream = await trio.open_ssl_over_tcp_stream(
        host, port, ssl_context=ssl_context, https_compatible=True
    )
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


class _HandshakeWatch:
    """Stands in for the nursery that trio-websocket starts its reader task in, and fails the
    connection attempt when that task ends before the opening handshake completed.

    trio-websocket waits for the server's handshake reply for ever when the server closes the
    connection without one (a TLS server sent plain text does), so ``connect`` would hang until
    its timeout instead of saying what happened.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.opened = False

    def start_soon(self, function: Callable[[], Awaitable[object]]) -> None:
        self._nursery.start_soon(self._watch, function)

    async def _watch(self, function: Callable[[], Awaitable[object]]) -> None:
        await function()
        if not self.opened:
            raise trio.BrokenResourceError("the server closed the connection during the handshake")


def _single_leaf(exc: BaseException) -> BaseException | None:
    """The one exception inside nested single-member groups (``exc`` itself if it is not a
    group), or None if a group holds several."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def _connect_error(exc: BaseException, settings: Settings) -> BaseException:
    """A connection-phase failure as a Fetch ML error naming the URL (others pass through)."""
    url = settings.url
    prefix = f"cannot reach the Fetch ML server at {url}"
    host = urlsplit(url).hostname or url
    tls_failure = describe_tls_failure(exc, host=host, ca_file=settings.ca_file)
    if tls_failure is not None:
        return ServerUnreachableError(f"{prefix}: {tls_failure}", url=url)
    if isinstance(exc, trio.TooSlowError):
        return ServerUnreachableError(f"{prefix}: no answer in time", url=url)
    if isinstance(exc, ConnectionRejected):
        return _rejected(exc, url)
    if isinstance(exc, OSError):
        return ServerUnreachableError(f"{prefix}: {_os_reason(exc)}", url=url)
    if isinstance(exc, HandshakeError | trio.BrokenResourceError | ConnectionClosed):
        # A TLS server drops a plain-text request without a word.
        hint = "" if url.startswith("https://") else " (if the server uses TLS, use an https URL)"
        return ServerUnreachableError(f"{prefix}: the WebSocket handshake failed{hint}", url=url)
    return exc


def _rejected(exc: ConnectionRejected, url: str) -> FetchMLError:
    error = http_error(exc.body) if exc.status_code in (401, 403, 429) else None
    if error is not None:
        return error
    return ServerUnreachableError(
        f"the server at {url} refused the WebSocket connection (HTTP {exc.status_code}); "
        "is this the URL of a Fetch ML server?",
        url=url,
    )


def _os_reason(exc: OSError) -> str:
    """``connection refused`` and the like; trio.open_tcp_stream hides the per-address errors
    in an exception group as ``__cause__``."""
    errors: list[BaseException] = [exc]
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        errors = [*cause.exceptions, exc]
    for error in errors:
        if isinstance(error, OSError) and error.errno and error.errno > 0:
            return os.strerror(error.errno).lower()
        if isinstance(error, OSError) and error.strerror:
            return error.strerror.lower()
    return str(exc) or type(exc).__name__
