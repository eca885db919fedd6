"""The web dashboard's static files (``static/``), shipped in the package: no Node, no build step.

:func:`load_assets` reads them once, compresses each (gzip) and names the whole set by a digest
of its contents.  The page loads its scripts and styles from ``/static/<version>/...``, so a
browser may keep them for ever (``immutable``): a new release has a new version, hence new URLs,
while ``index.html`` itself is always revalidated.  Third-party code lives under
``static/vendor/`` with its licence and version (``vendor/VERSIONS.md``).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["STATIC_DIR", "VERSION_PLACEHOLDER", "Asset", "Assets", "load_assets"]

STATIC_DIR = Path(__file__).parent / "static"
# Written in index.html where the asset version goes; replaced when the page is served.
VERSION_PLACEHOLDER = "__VERSION__"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}
# Compressing what is already compressed (PNG) or tiny gains nothing.
_COMPRESS_MIN = 256


@dataclass(frozen=True)
class Asset:
    """One file: its bytes, their gzip form (None when not worth it), its content type."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


@dataclass(frozen=True)
class Assets:
    """Every static file by its path under ``static/`` (``js/main.js``), and the set's version."""

    version: str
    files: dict[str, Asset]
    index: Asset


def _asset(body: bytes, suffix: str) -> Asset:
    content_type = _TYPES.get(suffix, "application/octet-stream")
    gzipped = None
    if len(body) >= _COMPRESS_MIN and not content_type.startswith("image/png"):
        # mtime=0: the same bytes on every start, so an ETag stays valid across restarts.
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        gzipped = packed if len(packed) < len(body) else None
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body=body, gzipped=gzipped, content_type=content_type, etag=etag)


def load_assets(root: Path = STATIC_DIR) -> Assets:
    """Read and compress every file under ``root``.  Raises OSError if one cannot be read."""
    digest = hashlib.sha256()
    raw: dict[str, bytes] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name.startswith(".") or "/." in name or "__pycache__" in name:
            continue
        raw[name] = path.read_bytes()
        digest.update(name.encode() + b"\0" + hashlib.sha256(raw[name]).digest())
    version = digest.hexdigest()[:16]
    index_body = raw.pop("index.html").replace(VERSION_PLACEHOLDER.encode(), version.encode())
    files = {name: _asset(body, Path(name).suffix) for name, body in raw.items()}
    return Assets(version=version, files=files, index=_asset(index_body, ".html"))
