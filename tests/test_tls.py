"""TLS end to end: ``fetchml certs new``, HTTPS and WSS on the server's one port, the client's CA
file (``ca_file`` / ``--ca-file`` / ``FETCHML_CA_FILE``), and precise configuration errors.

The certificate is made by the tests with ``fetchml certs new``; every client here verifies it
(stdlib ``ssl``, curl, trio-websocket, ``fetchml.client``, ``ml``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio_websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from helpers.gateway import Ws
from test_client_support import KEYS, ml_env, run_ml, running_server, server_config

import fetchml
from fetchml.cli import main as fetchml_main
from fetchml.cli import ml_main
from fetchml.client import ServerUnreachableError, connect, load_settings, write_config
from fetchml.client._tls import client_ssl_context
from fetchml.errors import ConfigError
from fetchml.server import run_server, server_ssl_context

JOB = {"command": ["sh", "-c", "echo over-tls"], "resources": {"cpus": 1}}
CURL = ["curl", "-s", "--max-time", "5", "-i"]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path

    @property
    def settings(self) -> dict[str, Any]:
        return {"enabled": True, "cert_file": str(self.cert), "key_file": str(self.key)}

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def make_pair(out: Path, *hosts: str) -> Pair:
    argv = ["certs", "new", "--out-dir", str(out)]
    for host in hosts:
        argv += ["--host", host]
    assert fetchml_main(argv) == 0
    return Pair(out / "cert.pem", out / "key.pem")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """The server's certificate: for 127.0.0.1 only, so that ``localhost`` is a wrong name."""
    return make_pair(tmp_path_factory.mktemp("tls"), "127.0.0.1")


@contextlib.asynccontextmanager
async def tls_server(data_dir: Path, pair: Pair) -> AsyncIterator[str]:
    with trio.fail_after(20):
        async with running_server(data_dir, tls=pair.settings) as url:
            assert url.startswith("https://127.0.0.1:"), url
            yield url


async def https_get(
    url: str, path: str, context: ssl.SSLContext, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a verified TLS stream (h11), read to EOF."""
    host, port = url.removeprefix("https://").split(":")
    headers = [("Host", f"{host}:{port}"), ("Connection", "close")]
    headers += [("Authorization", f"Bearer {key}")] if key else []
    conn = h11.Connection(h11.CLIENT)
    status, response_headers, body = 0, {}, b""
    with trio.fail_after(5):
        stream = await trio.open_ssl_over_tcp_stream(
            host, int(port), ssl_context=context, https_compatible=True
        )
        async with stream:
            await stream.send_all(
                conn.send(h11.Request(method="GET", target=path, headers=headers))
            )
            await stream.send_all(conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    return status, response_headers, body


async def handshake(host: str, port: int, context: ssl.SSLContext, *, server_hostname: str) -> None:
    """A TLS handshake with the server, as a client that asked for ``server_hostname``."""
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_hostname, https_compatible=True)
    async with stream:
        await stream.do_handshake()


@contextlib.asynccontextmanager
async def wss_connect(url: str, context: ssl.SSLContext) -> AsyncIterator[Ws]:
    """A trio-websocket client over WSS, closed (and its TCP stream too) within 5 s on exit."""
    wss = url.replace("https://", "wss://", 1) + "/ws"
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(
            wss, ssl_context=context, connect_timeout=5, disconnect_timeout=5
        ) as conn:
            try:
                yield Ws(conn)
            finally:
                await conn._stream.aclose()  # trio-websocket may leave it to the GC


# ---- fetchml certs new -----------------------------------------------------------------------


def test_certs_new_writes_a_ca_certificate_and_a_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tls"
    assert fetchml_main(["certs", "new", "--out-dir", str(out), "--days", "30"]) == 0
    printed = capsys.readouterr().out
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", socket.gethostname().lower()} <= set(
        names.get_values_for_type(x509.DNSName)
    )
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    fingerprint = cert.fingerprint(hashes.SHA256()).hex().upper()
    assert ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)) in printed
    assert f"cert_file: {cert_path}" in printed
    assert f"key_file: {key_path}" in printed
    assert f"ca_file: {cert_path.resolve()}" in printed
    assert "PRIVATE KEY" not in printed
    before = (cert_path.read_bytes(), key_path.read_bytes())

    assert fetchml_main(["certs", "new", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"fetchml certs new: error: {cert_path} exists; use --force to replace it\n"
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before
    assert fetchml_main(["certs", "new", "--out-dir", str(out), "--force"]) == 0
    assert key_path.read_bytes() != before[1]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp files left
    capsys.readouterr()
    assert fetchml_main(["certs", "new", "--out-dir", str(out), "--host", "not a host"]) == 2
    assert "--host 'not a host': not a DNS name or an IP address" in capsys.readouterr().err


# ---- HTTPS and WSS ----------------------------------------------------------------------------


async def test_https_and_wss_on_one_port(data_dir: Path, pair: Pair) -> None:
    context = pair.context()
    async with tls_server(data_dir, pair) as url:
        status, headers, body = await https_get(url, "/health", context)
        assert status == 200
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in headers["content-security-policy"]
        status, _, body = await https_get(url, "/api/v1/whoami", context, KEYS["admin"])
        assert (status, json.loads(body)["user"]) == (200, "admin")
        async with wss_connect(url, context) as ws:
            assert (await ws.ok("auth", key=KEYS["bob"]))["user"] == "bob"
            job = (await ws.ok("submit", spec=JOB))["job"]
            assert job["user"] == "bob"
        with trio.fail_after(8):
            curl = await trio.run_process(
                [*CURL, "--http1.0", "--cacert", str(pair.cert), f"{url}/health"],
                capture_stdout=True,
                check=False,
            )
        assert curl.returncode == 0, curl  # 28: curl's timeout, no EOF came over TLS
        assert curl.stdout.split(b"\r\n")[0].split()[1] == b"200"


async def test_plain_http_and_unverified_clients_are_refused(data_dir: Path, pair: Pair) -> None:
    async with tls_server(data_dir, pair) as url:
        host, port = url.removeprefix("https://").split(":")
        received = b""
        with trio.fail_after(5):
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                with contextlib.suppress(trio.BrokenResourceError):
                    while data := await stream.receive_some(65536):
                        received += data
        assert not received.startswith(b"HTTP/"), received
        with trio.fail_after(8):
            curl = await trio.run_process(
                [*CURL, f"{url}/health"], capture_stdout=True, check=False
            )
        assert curl.returncode == 60  # curl: peer certificate cannot be authenticated
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as refused:
            await handshake(host, int(port), pair.context(), server_hostname="wrong.example")
        assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
        status, _, _ = await https_get(url, "/health", pair.context())
        assert status == 200  # the server lives on


async def test_shutdown_closes_wss_1001_and_http10_reads_to_eof(data_dir: Path, pair: Pair) -> None:
    config = server_config(data_dir, tls=pair.settings)
    context = pair.context()
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await run_server(config, stop=stop, handle_signals=False, task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            url = (await nursery.start(run))[0]
        host, port = url.removeprefix("https://").split(":")
        with trio.fail_after(5):
            stream = await trio.open_ssl_over_tcp_stream(
                host, int(port), ssl_context=context, https_compatible=True
            )
            async with stream:
                await stream.send_all(f"GET /health HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                received = b""
                while data := await stream.receive_some(65536):  # EOF must come
                    received += data
        assert received.startswith(b"HTTP/1.1 200")
        async with wss_connect(url, context) as ws:
            await ws.ok("auth", key=KEYS["carol"])
            started = trio.current_time()
            stop.set()
            assert await ws.closed(within=5) == (1001, "server shutting down")
        with trio.fail_after(5):
            await stopped.wait()
        assert trio.current_time() - started < 4.5  # not hypercorn's 5 s grace


# ---- the client: fetchml.client and ml --------------------------------------------------------


async def test_client_verifies_and_trusts_only_an_explicit_ca_file(
    data_dir: Path, pair: Pair, tmp_path: Path
) -> None:
    nowhere = str(tmp_path / "no-config.yaml")
    async with tls_server(data_dir, pair) as url:
        with trio.fail_after(10):
            async with connect(
                url, KEYS["admin"], ca_file=str(pair.cert), config_path=nowhere
            ) as c:
                assert (await c.whoami()).user == "admin"
                job = await c.submit(JOB)
                assert (await c.wait(job.id)).state == "succeeded"
                assert await c.logs(job.id) == b"over-tls\n"  # HTTPS, same CA file
        with trio.fail_after(5), pytest.raises(ServerUnreachableError) as untrusted:
            async with connect(url, KEYS["admin"], config_path=nowhere):
                pass
        assert str(untrusted.value) == (
            f"cannot reach the Fetch ML server at {url}: certificate verify failed "
            "(self-signed certificate); trust it with --ca-file or ca_file in the client "
            "config (or FETCHML_CA_FILE)"
        )
        localhost = url.replace("127.0.0.1", "localhost")
        with trio.fail_after(5), pytest.raises(ServerUnreachableError) as mismatch:
            async with connect(localhost, KEYS["admin"], ca_file=str(pair.cert)):
                pass
        assert "certificate is not valid for 'localhost'" in str(mismatch.value)
        assert "fetchml certs new --host localhost" in str(mismatch.value)
        plain = url.replace("https://", "http://")
        with trio.fail_after(5), pytest.raises(ServerUnreachableError, match="use an https URL"):
            async with connect(plain, KEYS["admin"], config_path=nowhere):
                pass
        missing = str(tmp_path / "missing.pem")
        with pytest.raises(ConfigError, match=f"CA file {missing}: cannot read: no such file"):
            async with connect(url, KEYS["admin"], ca_file=missing, config_path=nowhere):
                pass

        ml = partial(run_ml, env=ml_env(url, "bob", tmp_path), limit_s=10)
        trusted = await ml("--ca-file", str(pair.cert), "whoami", "--json")
        assert (trusted.rc, trusted.json()["user"]) == (0, "bob"), trusted.err
        by_env = await run_ml(
            "whoami", env=ml_env(url, "bob", tmp_path, FETCHML_CA_FILE=str(pair.cert))
        )
        assert by_env.rc == 0, by_env.err
        refused = await ml("whoami")
        assert refused.rc == 3
        assert refused.err.splitlines() == [
            f"ml: error: cannot reach the Fetch ML server at {url}: certificate verify failed "
            "(self-signed certificate); trust it with --ca-file or ca_file in the client "
            "config (or FETCHML_CA_FILE)"
        ]


def test_ca_file_settings_precedence_and_config_file(
    tmp_path: Path, pair: Pair, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "conf" / "config.yaml"
    write_config(config, url="https://lab:9103", key="k", ca_file="lab-ca.pem")
    from_file = load_settings(config_path=config, env={})
    assert (from_file.ca_file, from_file.ca_file_source) == (
        str(config.parent / "lab-ca.pem"),
        "config",
    )
    env = {"FETCHML_CA_FILE": "/env/ca.pem"}
    from_env = load_settings(config_path=config, env=env)
    assert (from_env.ca_file, from_env.ca_file_source) == ("/env/ca.pem", "env")
    flag = load_settings(ca_file="/flag/ca.pem", config_path=config, env=env)
    assert (flag.ca_file, flag.ca_file_source) == ("/flag/ca.pem", "flag")
    nothing = load_settings(config_path=tmp_path / "none.yaml", env={})
    assert (nothing.ca_file, nothing.ca_file_source) == (None, "none")

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(ConfigError, match=f"CA file {not_pem}: no PEM certificate in it"):
        client_ssl_context(str(not_pem))

    monkeypatch.delenv("FETCHML_CA_FILE", raising=False)
    monkeypatch.chdir(pair.cert.parent)
    monkeypatch.setattr("sys.stdin", io.StringIO("the-key\n"))
    init = tmp_path / "init.yaml"
    argv = ["config", "init", "--config", str(init), "--url", "https://127.0.0.1:1"]
    assert ml_main([*argv, "--key-stdin", "--no-check", "--ca-file", "cert.pem"]) == 0
    capsys.readouterr()
    assert load_settings(config_path=init, env={}).ca_file == str(pair.cert.resolve())
    assert ml_main(["config", "show", "--json", "--config", str(init)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["ca_file"], shown["ca_file_source"]) == (str(pair.cert.resolve()), "config")
    assert ml_main(["config", "show", "--config", str(init), "--ca-file", "/x.pem"]) == 0
    assert "ca file:     /x.pem (from flag, NOT FOUND)" in capsys.readouterr().out


# ---- configuration errors -------------------------------------------------------------------


async def test_tls_config_errors_name_the_setting_and_the_file(
    tmp_path: Path, pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"^settings: server\.tls\.cert_file: required when "):
        fetchml.make_config(tls={"enabled": True})
    yaml_file = tmp_path / "server.yaml"
    yaml_file.write_text(f"server:\n  tls:\n    enabled: true\n    cert_file: {pair.cert}\n")
    with pytest.raises(ConfigError, match=rf"^{yaml_file}: server\.tls\.key_file: required "):
        fetchml.load_config(yaml_file)
    yaml_file.write_text("server:\n  tls:\n    enable: true\n")
    with pytest.raises(ConfigError, match=r"server\.tls\.enable: unknown field"):
        fetchml.load_config(yaml_file)
    assert fetchml.make_config(tls={"cert_file": "x"}).server.tls.enabled is False

    other = make_pair(tmp_path / "other", "127.0.0.1")
    missing = tmp_path / "missing.pem"
    cases = {
        (missing, pair.key): f"server.tls.cert_file: cannot read {missing}: no such file",
        (pair.cert, missing): f"server.tls.key_file: cannot read {missing}: no such file",
        (pair.key, pair.key): f"server.tls.cert_file: {pair.key} is not a PEM certificate",
        (pair.cert, pair.cert): f"server.tls.key_file: {pair.cert} is not a PEM private key",
        (pair.cert, other.key): (
            f"server.tls.key_file: {other.key} is not the private key of the certificate "
            f"in {pair.cert}"
        ),
    }
    for (cert, key), message in cases.items():
        tls = fetchml.make_config(
            tls={"enabled": True, "cert_file": str(cert), "key_file": str(key)}
        )
        with pytest.raises(ConfigError) as error:
            server_ssl_context(tls.server.tls)
        assert str(error.value).startswith(message), (error.value, message)

    # At start-up: the same error, before anything is bound or created.
    config = server_config(tmp_path / "data", tls={**pair.settings, "key_file": str(other.key)})
    with trio.fail_after(5), pytest.raises(ConfigError, match="is not the private key"):
        await run_server(config, handle_signals=False)
    assert not (tmp_path / "data").exists()
    yaml_file.write_text(
        f"server:\n  tls:\n    enabled: true\n    cert_file: {missing}\n    key_file: {pair.key}\n"
    )
    assert fetchml_main(["check-config", "--config", str(yaml_file)]) == 2
    assert capsys.readouterr().err == (
        f"fetchml: error: server.tls.cert_file: cannot read {missing}: no such file or directory\n"
    )


def test_key_file_readable_by_others_is_warned_about(
    tmp_path: Path, pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(pair.key.read_bytes())
    os.chmod(key, 0o644)
    settings = fetchml.make_config(tls={**pair.settings, "key_file": str(key)}).server.tls
    server_ssl_context(settings)
    assert f"{key} (server.tls.key_file) is readable by others" in caplog.text
