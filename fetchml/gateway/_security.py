"""Request hooks of the gateway: the IP allow-list, security headers and CORS.

The allow-list (``auth.ip_whitelist``) is checked before anything else on every request and
WebSocket upgrade, before any key is looked at: an address outside it gets 403 ``forbidden``
"address not allowed", a warning in the log and an audit entry.  Every response carries the
security headers below; CORS is off unless ``server.cors_origins`` lists origins, and then only
those origins get ``Access-Control-Allow-Origin`` (and answered preflights).
"""

from __future__ import annotations

import logging

from quart import Quart, Response, request, websocket

from .._config import ServerSettings
from ..errors import PermissionDeniedError
from ..protocol import ErrorBody, ErrorEnvelope
from ._context import source_address
from ._http import json_response
from ._service import Service
from ._sessions import ADDRESS_NOT_ALLOWED

__all__ = ["SECURITY_HEADERS", "install_security"]

log = logging.getLogger("fetchml.gateway")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
# The same, by lower-case name: a response's header names are compared without case.
_SECURITY_BY_LOWER = {name.lower(): (name, value) for name, value in SECURITY_HEADERS.items()}
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, X-API-Key, Content-Type"
CORS_MAX_AGE = "600"


def install_security(app: Quart, settings: ServerSettings, service: Service) -> None:
    """Register the allow-list, header and CORS hooks on ``app`` (before any other hook)."""
    origins = frozenset(settings.cors_origins)

    async def refuse(address: str | None, what: str) -> Response:
        log.warning("refused %s from %s: address not allowed", what, address)
        await service.record(what, user=None, outcome="refused", code="forbidden")
        refusal = PermissionDeniedError(ADDRESS_NOT_ALLOWED)
        return json_response(ErrorEnvelope(error=ErrorBody.of(refusal)), status=403)

    async def check_request() -> Response | None:
        address = request.remote_addr
        source_address.set(address)
        if not service.sessions.allows(address):
            return await refuse(address, f"{request.method} {request.path}")
        if request.method == "OPTIONS" and origins:
            origin = request.headers.get("Origin")
            if origin in origins and request.headers.get("Access-Control-Request-Method"):
                response = Response(b"", status=204)
                response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
                response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
                response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
                return response
        return None

    async def check_websocket() -> Response | None:
        address = websocket.remote_addr
        source_address.set(address)
        if not service.sessions.allows(address):
            return await refuse(address, "websocket")
        return None

    async def add_headers(response: Response) -> Response:
        """Each security header the response does not set itself, ``no-store`` on the API,
        and CORS."""
        headers = response.headers
        # One pass over the response's headers, not one per header (``setdefault`` scans them
        # all each time: a fifth of a submit's cost in this gateway's own code).
        present = {name.lower() for name, _ in headers.items()}
        for lower, (name, value) in _SECURITY_BY_LOWER.items():
            if lower not in present:
                headers.add(name, value)
        if request.path.startswith("/api/"):
            if "cache-control" in present:
                headers["Cache-Control"] = "no-store"
            else:
                headers.add("Cache-Control", "no-store")
        if origins:
            headers.add("Vary", "Origin")
            origin = request.headers.get("Origin")
            if origin in origins:
                headers["Access-Control-Allow-Origin"] = origin
        return response

    app.before_request_funcs.setdefault(None, []).insert(0, check_request)
    app.before_websocket_funcs.setdefault(None, []).insert(0, check_websocket)
    app.after_request(add_headers)
