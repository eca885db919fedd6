"""The HTTP requests of the client: what the WebSocket protocol does not carry.

A job's log so far (the WebSocket streams logs only live), the upload of a snapshot (bodies of
megabytes), a job's files and manifest.  :class:`HttpSession` is one keep-alive connection
(``http.client``, over TLS for an https server, trusting ``ca_file`` or else the system's CAs);
it blocks, so async callers run it in a worker thread.  Error bodies become the server's error
classes; a connection that fails is :class:`ServerUnreachableError` naming the URL.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import msgspec

from fetchml.errors import FetchMLError

from ._errors import ServerUnreachableError, answer_error, decode_answer, tls_hint, unreachable
from ._settings import http_url
from ._tls import client_ssl_context

__all__ = ["HttpSession", "fetch_log", "quote_path"]

T = TypeVar("T")


def quote_path(path: str) -> str:
    """A file path as a URL path (each part percent-encoded, ``/`` kept)."""
    return quote(path, safe="/")


class HttpSession:
    """One keep-alive HTTP connection to the server at ``url`` with ``key``.  Reconnects when
    the server closed it between requests.  Not for several threads at once."""

    def __init__(
        self, url: str, key: str | None, *, timeout: float = 60.0, ca_file: str | None = None
    ) -> None:
        self.url = url
        base = urlsplit(http_url(url))
        self._base_path = base.path.rstrip("/")
        self._host = base.hostname or "127.0.0.1"
        self._port = base.port
        self._tls = base.scheme == "https"
        self._timeout = timeout
        self._ca_file = ca_file
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._tls:
                context = client_ssl_context(self._ca_file)
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=context
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> HttpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        job_id: int | None = None,
        ok: tuple[int, ...] = (200, 201, 206),
    ) -> Iterator[http.client.HTTPResponse]:
        """Send one request and yield its response, unread (the body is read as the caller
        goes).  Raises the server's error for a status not in ``ok`` (``job_id``: the job the
        request is about), :class:`ServerUnreachableError` when the connection fails."""
        response = self._send(method, path, body, headers or {})
        try:
            if response.status not in ok:
                raise self._error(response.status, response.read(), job_id)
            yield response
        finally:
            if not response.isclosed():
                response.read()  # so the connection can carry the next request
            if response.will_close:
                self.close()

    def _send(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(
                    method, self._base_path + path, body=body, headers={**self._headers, **headers}
                )
                return connection.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a keep-alive connection the server had closed: once more
                if attempt == 2:
                    closed = f"the server closed the connection{tls_hint(self._tls)}"
                    raise self._unreachable(ConnectionResetError(closed)) from None
            except OSError as exc:
                self.close()
                raise self._unreachable(exc) from None
            except http.client.HTTPException:
                self.close()
                raise self._unreachable(
                    ConnectionError(f"the answer is not HTTP{tls_hint(self._tls)}")
                ) from None
        raise AssertionError("unreachable")

    def _unreachable(self, exc: OSError) -> ServerUnreachableError:
        return unreachable(self.url, exc, host=self._host, ca_file=self._ca_file)

    def _error(self, status: int, body: bytes, job_id: int | None) -> FetchMLError:
        return answer_error(self.url, status, body, job_id)

    def call(
        self,
        method: str,
        path: str,
        type_: type[T],
        *,
        body: bytes | None = None,
        json: Any = None,
        job_id: int | None = None,
    ) -> T:
        """One request whose answer is JSON of ``type_``; ``json`` is encoded as the body."""
        headers = {}
        if json is not None:
            body = msgspec.json.encode(json)
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        with self.stream(method, path, body=body, headers=headers, job_id=job_id) as response:
            data = response.read()
        return decode_answer(data, type_, f"{method} {path}")

    def read(self, path: str, *, job_id: int | None = None) -> bytes:
        """The whole body of a GET."""
        with self.stream("GET", path, job_id=job_id) as response:
            return response.read()


def fetch_log(
    url: str,
    key: str | None,
    job_id: int,
    *,
    offset: int,
    timeout: float,
    ca_file: str | None = None,
) -> bytes:
    """The log of ``job_id`` from byte ``offset``.  Raises the server's error class,
    :class:`ServerUnreachableError` naming the URL, or :class:`ConfigError` for the CA file."""
    with HttpSession(url, key, timeout=timeout, ca_file=ca_file) as session:
        return session.read(f"/api/v1/jobs/{int(job_id)}/logs?offset={int(offset)}", job_id=job_id)
