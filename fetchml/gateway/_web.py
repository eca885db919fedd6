"""The web dashboard: ``/`` (the page) and ``/static/<version>/<path>`` (its scripts, styles).

The page holds no secret and needs no key: it asks for one and speaks the same WebSocket and HTTP
API as every other client.  Its responses carry a Content-Security-Policy that allows only the
server's own scripts, styles and connections (no inline code, no ``eval``), on top of the other
security headers every response gets (``_security.py``: they are set only where missing).
Assets under the current version are cached for a year (``immutable``): their URL changes with
their contents.  Each is sent gzipped to a browser that accepts it, compressed once at start-up.
"""

from __future__ import annotations

import functools

from quart import Quart, Response, request

from ..errors import NotFoundError
from ..web import Asset, Assets, load_assets

__all__ = ["WEB_CSP", "register_web"]

WEB_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_IMMUTABLE = "public, max-age=31536000, immutable"
# The page itself: always asked again (cheaply, by ETag), so a new release is picked up.
_REVALIDATE = "no-cache"
# Read and compressed once per process (test suites build many apps).
_package_assets = functools.cache(load_assets)


def _send(asset: Asset, cache_control: str) -> Response:
    """``asset`` as a response: 304 on a matching ``If-None-Match``, gzipped when accepted."""
    headers = {
        "Content-Security-Policy": WEB_CSP,
        "Cache-Control": cache_control,
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return Response(b"", status=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, content_type=asset.content_type, headers=headers)


def register_web(app: Quart, assets: Assets | None = None) -> None:
    """Serve the dashboard from ``assets`` (default: the package's own, read now)."""
    web = assets or _package_assets()

    @app.get("/")
    async def index() -> Response:
        return _send(web.index, _REVALIDATE)

    @app.get("/static/<version>/<path:path>")
    async def web_asset(version: str, path: str) -> Response:
        asset = web.files.get(path)
        if asset is None:
            raise NotFoundError(f"no such file: {path[:200]}")
        # An old page asking for its old version gets today's file, not to be kept for ever.
        return _send(asset, _IMMUTABLE if version == web.version else _REVALIDATE)
