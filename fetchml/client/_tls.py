"""TLS for ``https://`` / ``wss://`` servers: the verifying context, and failures people can act on.

Certificates and host names are always verified; there is no option to turn that off.  A server
with a self-signed certificate is trusted through an explicit CA file (``--ca-file``,
``FETCHML_CA_FILE`` or ``ca_file`` in the client config), typically the ``cert.pem`` that
``fetchml certs new`` wrote.
"""

from __future__ import annotations

import ssl
from typing import Final

from fetchml.errors import ConfigError

__all__ = ["client_ssl_context", "describe_tls_failure"]

_HOSTNAME_MISMATCH: Final = frozenset({62, 64})  # X509_V_ERR_HOSTNAME / IP_ADDRESS_MISMATCH
_EXPIRED: Final = frozenset({9, 10})  # X509_V_ERR_CERT_NOT_YET_VALID / CERT_HAS_EXPIRED
TRUST_HINT: Final = "trust it with --ca-file or ca_file in the client config (or FETCHML_CA_FILE)"


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A context that verifies the server's certificate chain and host name.

    With ``ca_file`` only the certificates in that PEM file are trusted; without it, the
    system's CAs.  Reads the file (blocking, small).  Raises :class:`ConfigError` naming the CA
    file when it cannot be read or holds no PEM certificate.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            raise ConfigError(f"CA file {ca_file}: no PEM certificate in it") from None
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"CA file {ca_file}: cannot read: {reason}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def describe_tls_failure(exc: BaseException, *, host: str, ca_file: str | None) -> str | None:
    """What went wrong in a TLS handshake, and how to fix it, if ``exc`` (or an exception it
    was raised from) is an :class:`ssl.SSLError`; else None."""
    error = _find_ssl_error(exc)
    if error is None:
        return None
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = str(error.verify_message or error.reason or "").rstrip(".")
        if error.verify_code in _HOSTNAME_MISMATCH:
            return (
                f"certificate verify failed ({detail}); connect with a name or address the "
                f"certificate lists, or give the server one made with: fetchml certs new "
                f"--host {host}"
            )
        if error.verify_code in _EXPIRED:
            return f"certificate verify failed ({detail}); the server needs a new certificate"
        if ca_file is not None:
            return (
                f"certificate verify failed ({detail}) with the CA file {ca_file}; "
                "is it the server's certificate (or the CA that signed it)?"
            )
        return f"certificate verify failed ({detail}); {TRUST_HINT}"
    reason = str(error.reason or error).lower().replace("_", " ")
    if error.reason == "WRONG_VERSION_NUMBER":
        return (
            f"the TLS handshake failed ({reason}): the server does not speak TLS on this "
            "port; use an http:// URL"
        )
    return f"the TLS handshake failed ({reason})"


def _find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The SSLError in ``exc``'s chain of causes (trio wraps it in BrokenResourceError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
