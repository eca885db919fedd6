"""``fetchml serve`` as a real process: signals, restarts, SIGKILL in a submit storm, first start,
disabled auth, ``check-config``, and what the server writes to its log.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from helpers.core import alive, supervisor_pid
from helpers.gateway import (
    HIGH_LIMITS_YAML,
    SERVE_PROGRAM,
    HttpSession,
    Response,
    Users,
    free_port,
    http,
    server_process,
    server_yaml,
    until_job,
    ws_connect,
)
from trio_websocket import ConnectionClosed, HandshakeError

WRONG_KEY = "wrong-key-that-must-never-be-logged-0123456789"
# Runs until the test creates ``go`` in its output dir (its cwd).
GATED_JOB = "echo started; while [ ! -e go ]; do sleep 0.02; done; echo finished"


def write_config(tmp_path: Path, data_dir: Path, users: Users, extra: str = "") -> Path:
    auth_file = users.write(tmp_path / "auth.yaml")
    config = tmp_path / "server.yaml"
    config.write_text(server_yaml(data_dir, auth_file, extra))
    return config


def assert_no_keys(log: str, users: Users) -> None:
    for key in [*users.keys.values(), WRONG_KEY]:
        assert key not in log
    assert "Bearer" not in log


async def _use_every_key(base: str, users: Users) -> None:
    """Requests with every key, a wrong one, and a wrong one over WebSocket, for the log check."""
    async with HttpSession(base) as session:
        for key in [*users.keys.values(), WRONG_KEY]:
            await session.request("GET", "/api/v1/whoami", key=key)
            await session.request("GET", "/api/v1/status", key=key, style="x-api-key")
    async with ws_connect(base) as ws:
        await ws.call("auth", key=WRONG_KEY)


async def _bad_auth_burst(base: str) -> None:
    """Many clients whose auth fails and who leave at once: the server's 1008 close races the
    client's disconnect, which once failed with BusyResourceError (a traceback in the log)."""

    async def one() -> None:
        async with ws_connect(base) as ws:
            reply = await ws.call("auth", key=WRONG_KEY)
            assert reply["error"]["message"] == "invalid API key"

    for _ in range(40):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_websockets_1001_and_jobs_outlive_the_server(
    tmp_path: Path, data_dir: Path, signum: int
) -> None:
    users = Users()
    # SIGTERM's run logs at debug level: not even then may a key reach the log.
    extra = "logging:\n  level: debug\n" if signum == signal.SIGTERM else ""
    # _bad_auth_burst sends 200 wrong keys: that must not ban 127.0.0.1.
    config = write_config(tmp_path, data_dir, users, extra + HIGH_LIMITS_YAML)
    port = free_port()
    async with server_process(["--config", str(config)], cwd=tmp_path, port=port) as server:
        await _use_every_key(server.base, users)
        await _bad_auth_burst(server.base)
        async with HttpSession(server.base) as session:
            created = await session.request(
                "POST",
                "/api/v1/jobs",
                key=users.alice,
                json_body={"command": GATED_JOB, "shell": True},
            )
            job_id = created.json()["job"]["id"]
            await until_job(session, users.alice, job_id, ("running",))
        followed: list[Response] = []

        async def follow() -> None:
            path = f"/api/v1/jobs/{job_id}/logs?follow=1"
            followed.append(await http(server.base, "GET", path, key=users.alice))

        async with (
            ws_connect(server.base, users.alice, auth_op=False) as by_header,
            ws_connect(server.base, users.bob) as by_auth_op,
            trio.open_nursery() as nursery,
        ):
            await by_auth_op.ok("subscribe")
            nursery.start_soon(follow)
            await trio.sleep(0.3)  # the followed log has its first line
            started = time.monotonic()
            server.signal(signum)
            for ws in (by_header, by_auth_op):
                code, reason = await ws.closed(within=5)
                assert (code, reason) == (1001, "server shutting down")
            assert await server.wait(within=5) == 0
            assert time.monotonic() - started < 4.5  # not hypercorn's 5 s grace
        # The followed log ended as a whole response, not cut off in the middle.
        assert followed[0].status == 200
        assert followed[0].body == b"started\n"
        first_log = await server.stderr_to_end()
    assert "received " + signal.Signals(signum).name in first_log
    assert "Traceback" not in first_log, first_log
    assert " ERROR " not in first_log, first_log
    assert_no_keys(first_log, users)
    if signum == signal.SIGINT:
        assert " DEBUG " not in first_log  # no debug noise at the default level
    # The job did not stop with the server.
    supervisor = supervisor_pid(data_dir, job_id)
    assert supervisor is not None
    assert alive(supervisor)
    if signum == signal.SIGINT:
        return
    # The next start (same port: nothing of the old server holds it) re-adopts it, and its end
    # is recorded.
    async with server_process(["--config", str(config)], cwd=tmp_path, port=port) as server:
        async with HttpSession(server.base) as session:
            job = await session.request("GET", f"/api/v1/jobs/{job_id}", key=users.alice)
            assert job.json()["job"]["state"] == "running"
            assert job.json()["job"]["attempts"] == 1
            await trio.Path(data_dir / "jobs" / str(job_id) / "output" / "go").touch()
            done = await until_job(session, users.alice, job_id, ("succeeded", "failed", "lost"))
            assert (done["state"], done["exit_code"], done["attempts"]) == ("succeeded", 0, 1)
            log = await session.request("GET", f"/api/v1/jobs/{job_id}/logs", key=users.alice)
            assert log.body == b"started\nfinished\n"
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        await server.stderr_to_end()
        assert "recovered 0 queued and 1 running" in server.stderr
        assert_no_keys(server.stderr, users)


async def test_acknowledged_submits_survive_sigkill(tmp_path: Path, data_dir: Path) -> None:
    """A storm of pipelined WebSocket submits on several connections, SIGKILL, restart: every
    acknowledged job is there."""
    users = Users()
    config = write_config(tmp_path, data_dir, users, HIGH_LIMITS_YAML)  # a storm, on purpose
    port = free_port()
    acked: list[int] = []
    enough = trio.Event()
    async with server_process(["--config", str(config)], cwd=tmp_path, port=port) as server:

        async def storm(key: str) -> None:
            window = trio.Semaphore(32)
            try:
                async with ws_connect(server.base, key) as ws, trio.open_nursery() as nursery:

                    async def read() -> None:
                        while True:
                            reply = await ws.receive(within=30)
                            assert reply["ok"] is True, reply
                            acked.append(reply["job"]["id"])
                            if len(acked) >= 600:
                                enough.set()
                            window.release()

                    nursery.start_soon(read)
                    while True:
                        await window.acquire()
                        spec = {"command": ["true"], "tags": ["storm"]}
                        await ws.send({"op": "submit", "id": ws.next_id(), "spec": spec})
            except* (ConnectionClosed, HandshakeError, trio.BrokenResourceError, OSError):
                pass  # the server was killed

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for key in (users.alice, users.bob, users.admin, users.alice):
                    nursery.start_soon(storm, key)
                await enough.wait()
                server.signal(signal.SIGKILL)
                assert await server.wait() == -signal.SIGKILL
        first_log = await server.stderr_to_end()
    assert len(acked) >= 600
    assert len(set(acked)) == len(acked)
    async with server_process(["--config", str(config)], cwd=tmp_path, port=port) as server:
        async with HttpSession(server.base) as session:
            for job_id in acked:
                response = await session.request("GET", f"/api/v1/jobs/{job_id}", key=users.admin)
                assert response.status == 200, (job_id, response.body)
                assert response.json()["job"]["id"] == job_id
            listed = await session.request("GET", "/api/v1/jobs?limit=10000", key=users.admin)
            assert {job["id"] for job in listed.json()["jobs"]} >= set(acked)
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        await server.stderr_to_end()
        assert_no_keys(first_log + server.stderr, users)


def _key_in(text: str) -> list[str]:
    return re.findall(r"fml_[a-z2-7]{12}_[A-Za-z0-9_-]{20,}", text)


async def test_first_start_creates_the_auth_file_and_prints_the_key_once(
    tmp_path: Path, data_dir: Path
) -> None:
    """No config, no auth file: the server makes configs/auth.yaml (0600) in its directory."""
    auth_file = tmp_path / "configs" / "auth.yaml"
    port = free_port()
    async with server_process([], cwd=tmp_path, port=port) as server:
        keys = _key_in(server.stderr)
        assert len(keys) == 1, server.stderr
        key = keys[0]
        assert server.stderr.count(key) == 1
        assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
        text = auth_file.read_text()
        assert key not in text
        assert key[len("fml_") + 13 :] not in text  # not even the secret after the key id
        assert re.search(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", text)
        me = await http(server.base, "GET", "/api/v1/whoami", key=key)
        assert me.status == 200
        assert me.json()["user"] == "admin"
        assert (await http(server.base, "GET", "/api/v1/whoami")).status == 401
        assert await trio.Path(
            data_dir
        ).is_dir()  # the default data dir, relative to where it started
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        await server.stderr_to_end()
        assert server.stderr.count(key) == 1
    # The second start keeps the file and prints no key.
    before = auth_file.read_text()
    async with server_process([], cwd=tmp_path, port=port) as server:
        assert (await http(server.base, "GET", "/api/v1/whoami", key=key)).status == 200
        server.signal(signal.SIGINT)
        assert await server.wait() == 0
        await server.stderr_to_end()
        assert _key_in(server.stderr) == []
    assert auth_file.read_text() == before


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FETCHML_CONFIG"}
    return subprocess.run(
        [sys.executable, "-c", SERVE_PROGRAM, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_auth_disabled_on_a_public_bind_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nserver:\n  host: 0.0.0.0\nauth:\n  enabled: false\n"
    )
    result = _run_cli("serve", "--config", str(config), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fetchml: error:")
    assert "0.0.0.0" in lines[0]
    assert "loopback" in lines[0]
    assert not (tmp_path / "data").exists()  # it stopped before touching anything


async def test_auth_disabled_on_loopback_starts_and_warns(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(f"data_dir: {data_dir}\nauth:\n  enabled: false\n")
    async with server_process(["--config", str(config)], cwd=tmp_path) as server:
        me = await http(server.base, "GET", "/api/v1/whoami")
        assert me.status == 200
        assert me.json()["admin"] is True
        created = await http(server.base, "POST", "/api/v1/jobs", json_body={"command": ["true"]})
        assert created.status == 201
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        await server.stderr_to_end()
        warnings = [line for line in server.stderr.splitlines() if "WARNING" in line]
    assert any("AUTHENTICATION IS DISABLED" in line for line in warnings), server.stderr


@pytest.mark.parametrize(
    ("yaml", "named"),
    [
        ("server:\n  prot: 9103\n", "server.prot"),
        ("schedular:\n  cpus: 2\n", "schedular"),
        ("logging:\n  level: info\n  colour: true\n", "logging.colour"),
    ],
)
def test_check_config_names_an_unknown_key(tmp_path: Path, yaml: str, named: str) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(yaml)
    result = _run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "unknown" in lines[0]


def test_check_config_accepts_a_good_config_and_reads_the_auth_file(tmp_path: Path) -> None:
    users = Users()
    config = write_config(tmp_path, tmp_path / "data", users)
    result = _run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    assert "4 user(s)" in result.stdout
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(auth_file.read_text().replace("roles: [researcher]", "rolez: [x]", 1))
    result = _run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "rolez" in result.stderr
    assert_no_keys(result.stdout + result.stderr, users)
    # The server would refuse an auth file others may write: so does the check.
    users.write(auth_file)
    auth_file.chmod(0o664)
    result = _run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "writable by group or others (mode 664)" in result.stderr
