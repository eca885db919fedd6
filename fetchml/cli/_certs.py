"""``fetchml certs new``: a self-signed TLS certificate for a lab that has none.

The certificate is its own CA (``basicConstraints CA:TRUE``), so the same ``cert.pem`` that the
server presents is the file clients trust (``ml --ca-file``, ``ca_file`` in the client config,
``curl --cacert``).  The private key is written with mode 0600 and never printed.  Errors are one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import re
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .._files import write_atomic

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["DEFAULT_DAYS", "DEFAULT_OUT_DIR", "register"]

DEFAULT_OUT_DIR: Final = "configs/tls"
# The longest validity Apple platforms accept for a TLS server certificate (and the CA/Browser
# Forum's limit until 2020): long enough not to expire mid-project, short enough to be accepted.
DEFAULT_DAYS: Final = 825
EXIT_ERROR: Final = 2
CERT_NAME: Final = "cert.pem"
KEY_NAME: Final = "key.pem"
# Clocks of a lab's machines disagree by a little: a certificate that starts "now" is refused as
# "not yet valid" by a client whose clock runs behind.
_BACKDATE: Final = datetime.timedelta(minutes=5)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?")


class _UsageError(Exception):
    """A problem with the command's input or the output files, reported as one line."""


@dataclass(frozen=True)
class _Names:
    """The names a certificate is valid for: DNS names and IP addresses, in the given order."""

    dns: tuple[str, ...]
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]

    @property
    def all(self) -> list[str]:
        return [*self.dns, *(str(ip) for ip in self.ips)]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` command (``certs new``) to a parser's subcommands."""
    certs = subparsers.add_parser("certs", help="make a self-signed TLS certificate")
    commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    new = commands.add_parser(
        "new",
        help="write a self-signed certificate and key for the server (HTTPS and WSS)",
        description="Write cert.pem and key.pem (the key with mode 0600): an ECDSA P-256 "
        "self-signed certificate that is its own CA, so clients trust it by its cert.pem.",
    )
    new.add_argument(
        "--out-dir",
        default=DEFAULT_OUT_DIR,
        metavar="DIR",
        help=f"where to write cert.pem and key.pem (default: {DEFAULT_OUT_DIR})",
    )
    new.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME_OR_IP",
        help="a DNS name or IP address clients use to reach the server (repeatable; default: "
        "localhost, 127.0.0.1, ::1 and this machine's hostname)",
    )
    new.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        help=f"days the certificate is valid (default: {DEFAULT_DAYS})",
    )
    new.add_argument("--force", action="store_true", help="replace existing cert.pem and key.pem")
    new.set_defaults(func=_run_new)


def _run_new(args: argparse.Namespace) -> int:
    """Handle ``certs new``; blocks on key generation and file I/O; returns 0, or 2 after one
    error line on stderr."""
    try:
        if args.days < 1:
            raise _UsageError(f"--days must be at least 1, not {args.days}")
        names = _parse_names(args.hosts or _default_hosts())
        out_dir = Path(args.out_dir)
        cert_path, key_path = out_dir / CERT_NAME, out_dir / KEY_NAME
        if not args.force:
            for path in (cert_path, key_path):
                if path.exists():
                    raise _UsageError(f"{path} exists; use --force to replace it")
        cert_pem, key_pem, cert = _make_certificate(names, days=args.days)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            # The key first: a cert.pem without its key would be useless to the server.
            for path, data, mode in ((key_path, key_pem, 0o600), (cert_path, cert_pem, 0o644)):
                if not write_atomic(path, data, mode=mode, replace=args.force):
                    raise _UsageError(f"{path} exists; use --force to replace it")
        except OSError as exc:
            where = exc.filename or out_dir
            raise _UsageError(f"cannot write {where}: {exc.strerror or exc}") from None
    except _UsageError as exc:
        print(f"fetchml certs new: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    _report(cert_path, key_path, cert, names)
    return 0


def _default_hosts() -> list[str]:
    hosts = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    if hostname and hostname not in hosts:
        hosts.append(hostname)
    return hosts


def _parse_names(hosts: list[str]) -> _Names:
    """Split ``hosts`` into DNS names and IP addresses; raise ``_UsageError`` for a bad one."""
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for host in hosts:
        text = host.strip().strip("[]")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            if not text.isascii() or not _DNS_NAME.fullmatch(text) or len(text) > 253:
                raise _UsageError(f"--host {host!r}: not a DNS name or an IP address") from None
            name = text.rstrip(".").lower()
            if name not in dns:
                dns.append(name)
            continue
        if ip not in ips:
            ips.append(ip)
    return _Names(tuple(dns), tuple(ips))


def _make_certificate(names: _Names, *, days: int) -> tuple[bytes, bytes, x509.Certificate]:
    """A new P-256 key and a self-signed CA certificate for ``names``: (cert PEM, key PEM,
    certificate).  Blocks for a few milliseconds of CPU."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    common_name = names.all[0] if names.all else "Fetch ML server"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fetch ML (self-signed)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    cert = _with_extensions(builder, key.public_key(), names).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert


def _with_extensions(
    builder: x509.CertificateBuilder, public: ec.EllipticCurvePublicKey, names: _Names
) -> x509.CertificateBuilder:
    """The extensions of a server certificate that is also its own CA (what OpenSSL's strict
    checks ask of both: critical basic constraints and key usage, key identifiers)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names.dns]
    alt_names += [x509.IPAddress(ip) for ip in names.ips]
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        # CA:TRUE lets the certificate itself be the trust anchor clients are given.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        # Were it ever trusted as a CA beyond Fetch ML (a system trust store), its key could
        # otherwise vouch for any host; constrained, it vouches for its own names only.
        .add_extension(_name_constraints(names), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )


def _name_constraints(names: _Names) -> x509.NameConstraints:
    from cryptography import x509

    subtrees: list[x509.GeneralName] = [x509.DNSName(name) for name in names.dns]
    subtrees += [x509.IPAddress(ipaddress.ip_network(ip)) for ip in names.ips]
    return x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None)


def _report(cert_path: Path, key_path: Path, cert: x509.Certificate, names: _Names) -> None:
    """Print the paths, the fingerprint and the config lines for the server and the clients."""
    from cryptography.hazmat.primitives import hashes

    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    fingerprint = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    # The machine's own name reads best in a client's URL; localhost only works on the server.
    host = next((n for n in names.all if n != "localhost"), next(iter(names.all), "HOST"))
    url_host = f"[{host}]" if ":" in host else host
    ca_file = cert_path.resolve()
    print(
        f"wrote {cert_path} (the certificate; clients trust it as their CA file)\n"
        f"wrote {key_path} (the private key, mode 0600: keep it on the server only)\n"
        f"valid for {', '.join(names.all)} until {until}\n"
        f"SHA-256 fingerprint: {fingerprint}\n"
        "\n"
        "Add to the server config (server.yaml):\n"
        "  server:\n"
        "    tls:\n"
        "      enabled: true\n"
        f"      cert_file: {cert_path}\n"
        f"      key_file: {key_path}\n"
        "\n"
        f"Copy {cert_path} to each client machine and add to its client config\n"
        "(~/.config/fetchml/config.yaml):\n"
        f"  url: https://{url_host}:9103\n"
        f"  ca_file: {ca_file}\n"
        f"(or pass --ca-file {ca_file} to ml, or set FETCHML_CA_FILE)\n"
        f"Try it: curl --cacert {cert_path} https://{url_host}:9103/health"
    )
