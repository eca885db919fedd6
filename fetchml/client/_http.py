"""The one HTTP request the client makes: a job's log so far (``GET /api/v1/jobs/{id}/logs``).

The WebSocket protocol streams logs only live (``subscribe`` with ``logs``), which never ends while
the job runs; reading the log up to now is a plain HTTP GET.  Blocking: run it in a thread.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from fetchml.errors import FetchMLError

from ._errors import ServerUnreachableError, http_error
from ._settings import http_url
from ._tls import client_ssl_context, describe_tls_failure

__all__ = ["fetch_log"]


def fetch_log(
    url: str,
    key: str | None,
    job_id: int,
    *,
    offset: int,
    timeout: float,
    ca_file: str | None = None,
) -> bytes:
    """The log of ``job_id`` from byte ``offset`` (over TLS for an https server, trusting
    ``ca_file``, else the system's CAs).  Raises the server's error class,
    :class:`ServerUnreachableError` naming the URL, or :class:`ConfigError` for the CA file."""
    base = urlsplit(http_url(url))
    host = base.hostname or "127.0.0.1"
    connection: http.client.HTTPConnection
    if base.scheme == "https":
        context = client_ssl_context(ca_file)
        connection = http.client.HTTPSConnection(host, base.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, base.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    path = f"{base.path}/api/v1/jobs/{int(job_id)}/logs?offset={int(offset)}"
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        reason = describe_tls_failure(exc, host=host, ca_file=ca_file) or (
            (exc.strerror or str(exc) or type(exc).__name__).lower()
        )
        raise ServerUnreachableError(
            f"cannot reach the Fetch ML server at {url}: {reason}", url=url
        ) from None
    finally:
        connection.close()
    if response.status == 200:
        return body
    raise _http_error(response.status, body, job_id)


def _http_error(status: int, body: bytes, job_id: int) -> FetchMLError:
    error = http_error(body, job_id=job_id)
    return error if error is not None else FetchMLError(f"the server answered HTTP {status}")
