"""One HTTP/1.1 request per connection, on a bare socket: the transport of :class:`HttpClient`.

``http.client`` costs about 25 ms to import (it pulls in the ``email`` package and ``ssl``),
a quarter of what a one-shot ``ml`` command may spend in all.  What such a command needs is
small: send one request with ``Connection: close``, read one answer (``Content-Length``, chunked
or to the end), with JSON bodies only.  ``ssl`` is imported only for an https server.  Uploads,
downloads and keep-alive stay with :class:`~fetchml.client._http.HttpSession`.  Errors are made
by the same functions as there (:mod:`fetchml.client._errors`).
"""

from __future__ import annotations

import socket
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from ._errors import ServerUnreachableError, answer_error, decode_answer, tls_hint, unreachable
from ._settings import http_url

__all__ = ["OneShotSession"]

T = TypeVar("T")

_MAX_HEAD: Final = 64 << 10  # an answer's status line and headers
_MAX_BODY: Final = 256 << 20  # a list of many jobs is large, but not this large


class _NotHttp(Exception):
    """The bytes that came back are not an HTTP answer."""


class OneShotSession:
    """Requests to the server at ``url`` with ``key``, each on its own connection (blocking).

    ``timeout`` bounds the connection and each wait for bytes.  Methods raise the server's
    error class for an error answer, :class:`ServerUnreachableError` naming the URL when the
    connection fails or the answer is not HTTP, :class:`ConfigError` for a bad CA file.
    """

    def __init__(self, url: str, key: str | None, *, timeout: float, ca_file: str | None) -> None:
        self.url = url
        base = urlsplit(http_url(url))
        self._base_path = base.path.rstrip("/")
        self._host = base.hostname or "127.0.0.1"
        self._tls = base.scheme == "https"
        self._port = base.port or (443 if self._tls else 80)
        self._netloc = base.netloc
        self._timeout = timeout
        self._ca_file = ca_file
        self._key = key

    def call(
        self,
        method: str,
        path: str,
        type_: type[T],
        *,
        json: Any = None,
        job_id: int | None = None,
    ) -> T:
        """One request whose answer is JSON of ``type_``; ``json`` is encoded as the body."""
        body = None
        if json is not None:
            import msgspec

            body = msgspec.json.encode(json)
        return decode_answer(self._request(method, path, body, job_id), type_, f"{method} {path}")

    def _request(self, method: str, path: str, body: bytes | None, job_id: int | None) -> bytes:
        """Send one request, wait for the whole answer (at most ``_MAX_BODY``: JSON bodies
        only); its body if the status is 2xx."""
        head = [f"{method} {self._base_path}{path} HTTP/1.1", f"Host: {self._netloc}"]
        head.append("Connection: close")
        if self._key is not None:
            head.append(f"Authorization: Bearer {self._key}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
        try:
            with self._connect() as sock:
                sock.sendall(request)
                status, answer = _read_answer(sock)
        except _NotHttp as exc:
            raise ServerUnreachableError(
                f"cannot reach the Fetch ML server at {self.url}: {exc}{tls_hint(self._tls)}",
                url=self.url,
            ) from None
        except OSError as exc:
            raise unreachable(self.url, exc, host=self._host, ca_file=self._ca_file) from None
        if not 200 <= status < 300:
            raise answer_error(self.url, status, answer, job_id)
        return answer

    def _connect(self) -> socket.socket:
        """A connected socket (with TLS: its handshake, certificate check included, done).
        Raises OSError (ssl.SSLError for a TLS failure)."""
        # An ASCII host as bytes: getaddrinfo would load the idna codec (a few ms) for a str.
        host: Any = self._host.encode() if self._host.isascii() else self._host
        sock = socket.create_connection((host, self._port), timeout=self._timeout)
        if not self._tls:
            return sock
        from ._tls import client_ssl_context

        try:
            return client_ssl_context(self._ca_file).wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and the body of the answer on ``sock``.  Raises _NotHttp, OSError."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk and not data:
            raise _NotHttp("the server closed the connection")
        data += chunk
        if not b"HTTP/".startswith(data[:5]) or len(data) > _MAX_HEAD:
            raise _NotHttp("the answer is not HTTP")  # a TLS alert, say
        if not chunk:
            raise _NotHttp("a cut answer")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, _, code = lines[0].partition(" ")
    if not version.startswith("HTTP/1.") or not code[:3].isdigit():
        raise _NotHttp("the answer is not HTTP")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(sock, rest)
    elif "content-length" in headers:
        body = _read_exactly(sock, rest, _length(headers["content-length"]))
    else:
        body = _read_exactly(sock, rest, None)
    return int(code[:3]), body


def _length(text: str) -> int:
    if not text.isdigit() or int(text) > _MAX_BODY:
        raise _NotHttp(f"an answer of Content-Length {text[:20]!r}")
    return int(text)


def _read_exactly(sock: socket.socket, data: bytes, size: int | None) -> bytes:
    """``size`` bytes (None: up to the end of the stream), ``data`` first."""
    parts, have = [data], len(data)
    while size is None or have < size:
        chunk = sock.recv(65536)
        if not chunk:
            if size is None:
                break
            raise _NotHttp("a cut answer")
        parts.append(chunk)
        have += len(chunk)
        if have > _MAX_BODY:
            raise _NotHttp("an answer too large")
    body = b"".join(parts)
    return body if size is None else body[:size]


def _dechunk(sock: socket.socket, data: bytes) -> bytes:
    """The body of a chunked answer whose first bytes are ``data``."""
    buffer, total = data, 0
    parts: list[bytes] = []
    while True:
        while b"\r\n" not in buffer:
            buffer = _more(sock, buffer)
        line, _, buffer = buffer.partition(b"\r\n")
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _NotHttp("a bad chunk in the answer") from None
        total += size
        if total > _MAX_BODY:
            raise _NotHttp("an answer too large")
        if size == 0:
            return b"".join(parts)  # trailers, if any, are not needed
        while len(buffer) < size + 2:
            buffer = _more(sock, buffer)
        parts.append(buffer[:size])
        buffer = buffer[size + 2 :]


def _more(sock: socket.socket, buffer: bytes) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise _NotHttp("a cut answer")
    return buffer + chunk
