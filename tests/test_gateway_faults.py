"""One bad request never takes the server down: hostile specs from outside, faults of the
gateway's own code, and a store that a crash or an older version left behind."""

from __future__ import annotations

import json
import logging
import re
import signal
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers.core import kill_everything_under
from helpers.gateway import (
    HIGH_LIMITS_YAML,
    HttpSession,
    ServerThread,
    Users,
    http,
    make_server_config,
    server_process,
    server_yaml,
    until_job,
    ws_connect,
)

from fetchml.auth import Principal
from fetchml.gateway import Service
from fetchml.protocol import Identity
from fetchml.store import DB_NAME

NORMAL = {"command": ["/bin/true"]}

# (spec, field named in the error) of specs that once crashed the server.
HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"command": ["echo", "a\0b"]}, "command[1]"),
    ({"command": "echo a\0b", "shell": True}, "command"),
    ({"command": ["/bin/true"], "env": {"A": "x\0y"}}, "env.A"),
    ({"command": ["/bin/true"], "cwd": "/tmp/\0"}, "cwd"),
    ({"command": ["/bin/true"], "name": "\0"}, "name"),
    ({"command": ["/bin/true"], "resources": {"cpus": 1e308}}, "resources.cpus"),
    ({"command": ["/bin/true"], "resources": {"memory_mb": 2**62}}, "resources.memory_mb"),
    ({"command": ["/bin/true"], "resources": {"gpus": 10**6}}, "resources.gpus"),
    ({"command": ["/bin/true"], "timeout_s": 1e308}, "timeout_s"),
    ({"command": ["/bin/true"], "env": {"A": "x" * 200_000}}, "env.A"),
]


async def _submit_http(session: HttpSession, key: str, spec: Any) -> dict[str, Any]:
    response = await session.request("POST", "/api/v1/jobs", key=key, json_body=spec)
    body: dict[str, Any] = response.json()
    body["status"] = response.status
    return body


async def _runs_a_normal_job(base: str, key: str) -> None:
    async with HttpSession(base) as session:
        created = await _submit_http(session, key, NORMAL)
        assert created["status"] == 201, created
        job = await until_job(session, key, created["job"]["id"], ("succeeded", "failed"))
        assert job["state"] == "succeeded", job


async def test_hostile_specs_get_a_precise_error_and_a_restart_after_kill_9_comes_up(
    tmp_path: Path,
) -> None:
    users = Users()
    data_dir = tmp_path / "data"
    config = tmp_path / "server.yaml"
    config.write_text(server_yaml(data_dir, users.write(tmp_path / "auth.yaml"), HIGH_LIMITS_YAML))
    try:
        async with server_process(["--config", str(config)], cwd=tmp_path) as server:
            async with HttpSession(server.base) as session:
                for spec, field in HOSTILE:
                    error = await _submit_http(session, users.alice, spec)
                    assert error["status"] == 400, (spec, error)
                    assert (error["error"]["code"], error["error"]["field"]) == (
                        "invalid_spec",
                        field,
                    )
                    assert error["error"]["message"].startswith(f"{field}: ")
                # A lone surrogate can reach JSON only as an escape: named like any other field.
                body = json.dumps({"command": ["echo", "\ud800"]}).encode()
                response = await session.request("POST", "/api/v1/jobs", key=users.alice, body=body)
                assert response.status == 400
                assert response.error == {
                    "code": "invalid_spec",
                    "message": "command[1]: not valid Unicode (a lone surrogate)",
                    "field": "command[1]",
                }
            for text in (False, True):  # msgpack binary frames, then JSON text frames
                async with ws_connect(server.base, users.bob, text=text) as ws:
                    for spec, field in HOSTILE:
                        reply = await ws.call("submit", spec=spec)
                        assert reply["ok"] is False
                        assert reply["error"]["field"] == f"spec.{field}", reply
                    assert (await ws.ok("whoami"))["user"] == "bob"
            await _runs_a_normal_job(server.base, users.alice)
            assert (await http(server.base, "GET", "/health")).status == 200
            server.signal(signal.SIGKILL)
            await server.wait()
        async with server_process(["--config", str(config)], cwd=tmp_path) as again:
            await _runs_a_normal_job(again.base, users.bob)
    finally:
        kill_everything_under(tmp_path)


async def test_a_server_starts_on_a_store_with_rows_it_cannot_use(tmp_path: Path) -> None:
    users = Users()
    data_dir = tmp_path / "data"
    config = tmp_path / "server.yaml"
    config.write_text(server_yaml(data_dir, users.write(tmp_path / "auth.yaml"), HIGH_LIMITS_YAML))
    try:
        async with server_process(["--config", str(config)], cwd=tmp_path) as server:
            await _runs_a_normal_job(server.base, users.alice)  # job 1; creates the store
        bad = msgpack.packb(
            {
                "id": 2,
                "user": "alice",
                "state": "queued",
                "created_at": 1.0,
                "spec": {"command": ["echo", "a\0b"]},
            }
        )
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            rows = [(2, "alice", "queued", 10, bad), (3, "alice", "running", 11, b"\xc1")]
            conn.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?, ?)", rows)
        async with server_process(["--config", str(config)], cwd=tmp_path) as server:
            async with HttpSession(server.base) as session:
                nul = await until_job(session, users.alice, 2, ("failed",))
                assert nul["reason"] == (
                    "could not start: command[1]: contains a NUL byte (at index 1)"
                )
                lost = await until_job(session, users.alice, 3, ("lost",))
                assert "could not be read" in lost["reason"]
            await _runs_a_normal_job(server.base, users.alice)
        assert "set aside" in server.stderr  # reported once, at start-up
    finally:
        kill_everything_under(tmp_path)


@pytest.fixture
def thread_server(tmp_path: Path) -> Any:
    users = Users()
    config = make_server_config(tmp_path, users, limits={"enabled": False})
    with ServerThread(config) as thread:
        yield thread, users
    kill_everything_under(tmp_path)


def _internal_errors_total(metrics: str, where: str) -> float:
    match = re.search(rf'^fetchml_internal_errors_total{{where="{where}"}} (\S+)$', metrics, re.M)
    assert match, metrics
    return float(match.group(1))


async def test_a_fault_in_one_request_answers_it_with_internal_error_and_nothing_else(
    thread_server: Any, monkeypatch: pytest.MonkeyPatch, internal_errors: list[logging.LogRecord]
) -> None:
    thread, users = thread_server
    original = Service.whoami

    def whoami(who: Principal) -> Identity:
        if who.user == "bob":
            raise ZeroDivisionError("a bug that leaks a secret-ish detail")
        return original(who)

    monkeypatch.setattr(Service, "whoami", staticmethod(whoami))
    before = _internal_errors_total(
        (await http(thread.base, "GET", "/metrics")).body.decode(), "gateway"
    )
    response = await http(thread.base, "GET", "/api/v1/whoami", key=users.bob)
    assert response.status == 500
    error = response.error
    assert error["code"] == "internal_error"
    assert "secret" not in response.body.decode()
    assert "Traceback" not in response.body.decode()
    async with ws_connect(thread.base, users.bob, auth_op=False) as ws:
        reply = await ws.call("whoami")
        assert (reply["ok"], reply["error"]["code"]) == (False, "internal_error")
        assert "secret" not in reply["error"]["message"]
        assert (await ws.ok("status"))["status"]["cpus_total"] == 8  # the connection goes on
    assert (await http(thread.base, "GET", "/api/v1/whoami", key=users.alice)).status == 200
    after = _internal_errors_total(
        (await http(thread.base, "GET", "/metrics")).body.decode(), "gateway"
    )
    assert after - before == 2
    messages = [record.getMessage() for record in internal_errors]
    assert any("GET /api/v1/whoami by bob" in m for m in messages)
    assert any("op whoami by bob" in m for m in messages)
