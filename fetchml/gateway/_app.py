"""The Quart-Trio application: HTTP routes, the WebSocket endpoint and JSON errors."""

from __future__ import annotations

import logging
import math
from typing import Any

import trio
from quart import Response, g, request, websocket
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .._config import ServerSettings
from .._faults import report_internal_error
from ..actors import INTERNAL_MESSAGE
from ..errors import AuthError, FetchMLError, InternalError, RateLimitedError
from ..protocol import CLOSE_INTERNAL_ERROR, ErrorBody, ErrorEnvelope
from ._datasets import register_datasets
from ._files import register_files
from ._http import api_key_from, json_response, register_http
from ._metrics import Metrics
from ._pacing import FramePacer
from ._security import install_security
from ._service import Service
from ._snapshots import body_limit, register_snapshots
from ._tracking import register_tracking
from ._web import register_web
from ._ws import Connection

__all__ = ["create_app"]

log = logging.getLogger("fetchml.gateway")


def create_app(
    service: Service, settings: ServerSettings, closing: trio.Event, metrics: Metrics | None = None
) -> QuartTrio:
    """Build the app around running actors.

    ``closing`` is set by the server before it stops hypercorn, so every WebSocket closes itself
    with 1001 instead of being dropped.
    """
    app = QuartTrio("fetchml")
    # A file path such as //etc/passwd is the route's to refuse (404), not a redirect to merge.
    app.url_map.merge_slashes = False
    app.request_class = _request_class(settings.max_body_bytes, service)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = 60
    metrics = metrics or Metrics()
    install_security(app, settings, service)
    register_http(app, service, metrics, closing)
    register_snapshots(app, service)
    register_files(app, service)
    register_tracking(app, service)
    register_datasets(app, service)
    register_web(app)
    pacer = FramePacer()  # one tick for every batching subscriber of this server

    @app.websocket("/ws")
    async def ws() -> Response | None:
        key = api_key_from(websocket.headers)
        principal = None
        if key is not None:
            try:
                principal = await service.authenticate(key)
                # The upgrade is a request of the key's like any other.
                if retry_after_s := service.over_limit(principal):
                    await service.refuse_rate(principal, "websocket", retry_after_s)
            except (AuthError, RateLimitedError) as exc:
                return _error_response(exc)
        await websocket.accept()
        metrics.websockets.inc()
        try:
            await Connection(
                service,
                closing,
                principal,
                subscriber_buffer=settings.subscriber_buffer,
                pacer=pacer,
            ).serve()
        except Exception as exc:  # a fault of ours in this connection's own tasks
            user = principal.user if principal is not None else "a client"
            report_internal_error("gateway", exc, f"a WebSocket of {user}", logger=log)
            await websocket.close(CLOSE_INTERNAL_ERROR, "internal server error")
        finally:
            metrics.websockets.dec()
        return None

    @app.errorhandler(FetchMLError)
    async def fetchml_error(exc: FetchMLError) -> Response:
        return _error_response(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        status = exc.code or 500
        message = exc.description or exc.name or "error"
        if status == 413:
            message = f"request body larger than {request.max_content_length} bytes"
        body = ErrorEnvelope(error=ErrorBody(code=code, message=message))
        response = json_response(body, status=status)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # RFC 9110
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        user = getattr(g, "fetchml_user", None) or "an unauthenticated client"
        report_internal_error(
            "gateway", exc, f"{request.method} {request.path} by {user}", logger=log
        )
        return _error_response(InternalError(INTERNAL_MESSAGE))

    @app.after_request
    async def count(response: Response) -> Response:
        metrics.requests.labels(str(response.status_code)).inc()
        return response

    return app


def _request_class(default: int, service: Service) -> type[TrioRequest]:
    """Quart's request class with the body limit of each route (``body_limit``): uploads take
    more than ``server.max_body_bytes``; everything else, that.  Quart has no per-route limit,
    but creates every request through ``app.request_class`` with the app's limit."""

    class _Request(TrioRequest):
        def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any):
            snapshots = service.scheduler.config.snapshots
            kwargs["max_content_length"] = body_limit(path, snapshots, default)
            super().__init__(method, scheme, path, *args, **kwargs)

    return _Request


def _error_response(exc: FetchMLError) -> Response:
    response = json_response(ErrorEnvelope(error=ErrorBody.of(exc)), status=exc.status)
    if isinstance(exc, AuthError):
        response.headers["WWW-Authenticate"] = 'Bearer realm="fetchml"'
    elif isinstance(exc, RateLimitedError):
        # Whole seconds (RFC 9110), rounded up so a client that waits that long gets through.
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return response
