"""The server's TLS context: the certificate and key of ``server.tls``, checked at start-up.

hypercorn would load the files itself and fail with a bare ``FileNotFoundError`` or
``ssl.SSLError: [SSL] PEM lib`` that names neither file nor setting; loading them here first turns
each problem into a :class:`ConfigError` naming the setting and the file.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path
from typing import Final

from .._config import TlsSettings
from ..errors import ConfigError

__all__ = ["ALPN_PROTOCOLS", "server_ssl_context"]

log = logging.getLogger("fetchml.server")

# HTTP/1.1 only: WebSockets and the HTTP/1.0 and shutdown fixes (_hypercorn_fix) are written and
# tested against hypercorn's HTTP/1.1 protocol; HTTP/2 would be a second, untested code path.
ALPN_PROTOCOLS: Final = ("http/1.1",)
_CERT_MARK: Final = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK: Final = b"PRIVATE KEY-----"


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The server-side context for ``tls`` (TLS 1.2 or later, ALPN ``http/1.1``).

    Reads both files (blocking, small).  Raises :class:`ConfigError` naming the setting and
    the file when one is unset, unreadable, not PEM, an encrypted key, or a key that does not
    match the certificate.
    """
    cert_file = _readable("cert_file", tls.cert_file, _CERT_MARK, "a PEM certificate")
    key_file = _readable("key_file", tls.key_file, _KEY_MARK, "a PEM private key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    asked: list[bool] = []

    def no_password() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal and hang a service's start.
        asked.append(True)
        return b""

    try:
        context.load_cert_chain(cert_file, key_file, password=no_password)
    except ssl.SSLError as exc:
        raise _load_error(exc, cert_file, key_file, encrypted=bool(asked)) from None
    except OSError as exc:
        raise ConfigError(f"server.tls: cannot load {cert_file}: {exc.strerror or exc}") from None
    _warn_if_readable(key_file)
    return context


def _readable(setting: str, value: str | None, mark: bytes, what: str) -> str:
    """``value`` once it names a readable file that looks like ``what``; else ConfigError."""
    if not value:
        raise ConfigError(f"server.tls.{setting}: required when server.tls.enabled is true")
    try:
        data = Path(value).read_bytes()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"server.tls.{setting}: cannot read {value}: {reason}") from None
    if mark not in data:
        raise ConfigError(f"server.tls.{setting}: {value} is not {what}")
    return value


def _load_error(
    exc: ssl.SSLError, cert_file: str, key_file: str, *, encrypted: bool
) -> ConfigError:
    if encrypted:
        return ConfigError(
            f"server.tls.key_file: {key_file} is encrypted with a passphrase; "
            "the server needs an unencrypted key (keep it mode 0600)"
        )
    if exc.reason == "KEY_VALUES_MISMATCH":
        return ConfigError(
            f"server.tls.key_file: {key_file} is not the private key of the certificate "
            f"in {cert_file}"
        )
    # OpenSSL says "PEM lib" for a broken certificate and a broken key alike: load the
    # certificates alone to tell which file it is.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        return ConfigError(f"server.tls.cert_file: {cert_file} holds a damaged PEM certificate")
    return ConfigError(f"server.tls.key_file: {key_file} holds a damaged or unsupported PEM key")


def _warn_if_readable(key_file: str) -> None:
    try:
        mode = stat.S_IMODE(os.stat(key_file).st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "%s (server.tls.key_file) is readable by others; run: chmod 600 %s", key_file, key_file
        )
