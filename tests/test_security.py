"""Security hardening: headers, CORS, the IP allow-list and the hash-chained audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.gateway import (
    HttpSession,
    Users,
    http,
    make_server_config,
    serve,
    ws_connect,
    ws_upgrade_refusal,
)

from fetchml.audit import GENESIS, verify_chain
from fetchml.auth import parse_auth_config
from fetchml.auth._config import to_builtins
from fetchml.cli import main as fetchml_main
from fetchml.errors import ConfigError

ORIGIN = "https://lab.example.org"
JOB = {"command": ["true"], "resources": {"cpus": 1}}


def with_whitelist(tmp_path: Path, users: Users, cidrs: list[str], **settings: Any) -> Any:
    config = make_server_config(tmp_path, users, **settings)
    auth_file = Path(config.auth_file)
    auth_file.write_text(auth_file.read_text() + f"  ip_whitelist: {json.dumps(cidrs)}\n")
    return config


def audit_lines(config: Any) -> list[dict[str, Any]]:
    """The audit entries of requests (each server start's own entry left out)."""
    entries = [json.loads(line) for line in config.audit_path.read_bytes().splitlines()]
    return [e for e in entries if e["action"] != "server.start"]


# ---- headers and CORS -----------------------------------------------------------------------


async def test_security_headers_on_every_response(tmp_path: Path) -> None:
    users = Users()
    async with serve(make_server_config(tmp_path, users)) as base, HttpSession(base) as s:
        responses = {
            "health": await s.request("GET", "/health"),
            "api": await s.request("GET", "/api/v1/whoami", key=users.alice),
            "401": await s.request("GET", "/api/v1/whoami", key="wrong"),
            "404": await s.request("GET", "/api/v1/jobs/999", key=users.alice),
            "no route": await s.request("GET", "/nowhere"),
            "cors preflight": await s.request(
                "OPTIONS",
                "/api/v1/jobs",
                headers=[("Origin", ORIGIN), ("Access-Control-Request-Method", "POST")],
            ),
        }
    for name, r in responses.items():
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert r.headers["x-frame-options"] == "DENY", name
        assert r.headers["referrer-policy"] == "no-referrer", name
        assert "default-src 'none'" in r.headers["content-security-policy"], name
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], name
        assert "access-control-allow-origin" not in r.headers, name  # CORS off by default
    for name in ("api", "401", "404"):
        assert responses[name].headers["cache-control"] == "no-store", name
    assert responses["cors preflight"].status != 204


async def test_cors_only_for_listed_origins(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users, cors_origins=[ORIGIN])
    preflight = [("Access-Control-Request-Method", "POST")]
    async with serve(config) as base, HttpSession(base) as s:
        ok = await s.request("OPTIONS", "/api/v1/jobs", headers=[("Origin", ORIGIN), *preflight])
        other = await s.request(
            "OPTIONS", "/api/v1/jobs", headers=[("Origin", "https://evil.example"), *preflight]
        )
        get = await s.request(
            "GET", "/api/v1/whoami", key=users.alice, headers=[("Origin", ORIGIN)]
        )
        get_other = await s.request(
            "GET", "/api/v1/whoami", key=users.alice, headers=[("Origin", "https://x.example")]
        )
    assert ok.status == 204
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "Authorization" in ok.headers["access-control-allow-headers"]
    assert other.status != 204
    assert "access-control-allow-origin" not in other.headers
    assert get.status == 200
    assert get.headers["access-control-allow-origin"] == ORIGIN
    assert "origin" in get.headers["vary"].lower()
    assert "access-control-allow-origin" not in get_other.headers


# ---- IP allow-list --------------------------------------------------------------------------


def test_whitelist_config_is_validated() -> None:
    good = parse_auth_config(
        {"ip_whitelist": ["10.0.0.0/8", "127.0.0.1", "fd00::/8", "::1"]}, source="a.yaml"
    )
    assert good.ip_whitelist == ("10.0.0.0/8", "127.0.0.1/32", "fd00::/8", "::1/128")
    assert to_builtins(good)["ip_whitelist"] == list(good.ip_whitelist)
    assert "ip_whitelist" not in to_builtins(parse_auth_config({}, source="a.yaml"))
    for bad, index in ((["10.0.0.0/8", "10.0.0.300/32"], 1), (["10.0.0.1/8"], 0), (["x"], 0)):
        with pytest.raises(ConfigError, match=rf"a\.yaml: auth\.ip_whitelist\[{index}\]: "):
            parse_auth_config({"ip_whitelist": bad}, source="a.yaml")
    with pytest.raises(ConfigError, match=r"auth\.ip_whitelist"):
        parse_auth_config({"ip_whitelist": "10.0.0.0/8"}, source="a.yaml")


async def test_whitelist_excluding_loopback_refuses_before_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    users = Users()
    config = with_whitelist(tmp_path, users, ["10.0.0.0/8", "fd00::/8"])
    async with serve(config) as base:
        for key in (users.admin, "wrong-key", None):
            r = await http(base, "GET", "/api/v1/whoami", key=key)
            assert r.status == 403
            assert r.json() == {"error": {"code": "forbidden", "message": "address not allowed"}}
            assert r.headers["x-frame-options"] == "DENY"
        assert (await http(base, "GET", "/health")).status == 403
        status, body = await ws_upgrade_refusal(base, [("Authorization", f"Bearer {users.admin}")])
        assert status == 403
        assert json.loads(body)["error"] == {"code": "forbidden", "message": "address not allowed"}
    assert any(
        "address not allowed" in rec.getMessage() and rec.levelname == "WARNING"
        for rec in caplog.records
    )
    entries = audit_lines(config)
    assert len(entries) == 5
    assert all(e["outcome"] == "refused" and e["code"] == "forbidden" for e in entries)
    assert {e["source"] for e in entries} == {"127.0.0.1"}
    assert entries[-1]["action"] == "websocket"
    # refused before any key was looked at: no "auth" entry for the wrong key
    assert not any(e["action"] == "auth" for e in entries)


async def test_whitelist_including_loopback_allows(tmp_path: Path) -> None:
    users = Users()
    async with serve(with_whitelist(tmp_path, users, ["10.0.0.0/8", "127.0.0.0/8"])) as base:
        r = await http(base, "GET", "/api/v1/whoami", key=users.alice)
        assert r.status == 200
        assert r.json()["user"] == "alice"
        async with ws_connect(base, users.alice) as ws:
            assert (await ws.ok("whoami"))["user"] == "alice"


# ---- audit log ------------------------------------------------------------------------------


async def test_audit_log_records_actions_and_refusals(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    async with serve(config) as base:
        async with HttpSession(base) as s:
            job = (await s.request("POST", "/api/v1/jobs", key=users.alice, json_body=JOB)).json()
            job_id = job["job"]["id"]
            assert (await s.request("GET", "/api/v1/whoami", key="bad-key-xyz")).status == 401
            r = await s.request("POST", "/api/v1/jobs", key=users.carol, json_body=JOB)
            assert r.status == 403
            r = await s.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=users.bob)
            assert r.status == 403
        async with ws_connect(base, users.alice) as ws:
            # Long enough that the cancel always finds it queued or running (``true`` raced it).
            reply = await ws.ok("submit", spec={**JOB, "command": ["sleep", "30"]})
            ws_job = reply["job"]["id"]
            await ws.ok("cancel", job_id=ws_job)
        async with ws_connect(base) as ws:
            assert (await ws.call("auth", key="bad-key-abc"))["ok"] is False
    text = config.audit_path.read_text()
    for key in [*users.keys.values(), "bad-key-xyz", "bad-key-abc"]:
        assert key not in text
    entries = audit_lines(config)
    summary = [(e["action"], e["user"], e["outcome"], e["code"], e["job_id"]) for e in entries]
    assert summary == [
        ("submit", "alice", "ok", None, job_id),
        ("auth", None, "refused", "unauthorized", None),
        ("submit", "carol", "refused", "forbidden", None),
        ("cancel", "bob", "refused", "forbidden", None),
        ("submit", "alice", "ok", None, ws_job),
        ("cancel", "alice", "ok", None, ws_job),
        ("auth", None, "refused", "unauthorized", None),
    ]
    assert all(e["source"] == "127.0.0.1" and e["ts"] for e in entries)
    first = json.loads(config.audit_path.read_bytes().splitlines()[0])
    assert (first["action"], first["source"], first["prev"]) == ("server.start", "server", GENESIS)
    assert first["detail"]["users"] == 4
    with config.audit_path.open("rb") as f:
        result = verify_chain(f)
    assert result.ok
    assert result.count == 8
    # a restart continues the chain
    async with serve(config) as base:
        await http(base, "GET", "/api/v1/whoami", key="bad")
    with config.audit_path.open("rb") as f:
        result = verify_chain(f)
    assert result.ok
    assert result.count == 10  # the second start's entry and its refusal


async def test_audit_can_be_disabled_or_moved(tmp_path: Path) -> None:
    users = Users()
    moved = tmp_path / "elsewhere" / "audit.jsonl"
    config = make_server_config(tmp_path, users, audit={"file": str(moved)})
    async with serve(config) as base:
        await http(base, "GET", "/api/v1/whoami", key="bad")
    assert config.audit_path == moved
    assert len(moved.read_bytes().splitlines()) == 2  # the start, then the refusal
    off = make_server_config(tmp_path / "off", users, audit={"enabled": False})
    async with serve(off) as base:
        await http(base, "GET", "/api/v1/whoami", key="bad")
    assert not off.audit_path.exists()


def _make_log(tmp_path: Path, n: int) -> tuple[Path, list[bytes]]:
    import hashlib

    prev, lines = GENESIS, []
    for seq in range(1, n + 1):
        entry = {"seq": seq, "user": "alice", "action": "submit", "job_id": seq, "prev": prev}
        line = json.dumps(entry).encode()
        prev = hashlib.sha256(line).hexdigest()
        lines.append(line)
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path, lines


def _run_verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = fetchml_main(["audit", "verify", str(path)])
    return code, capsys.readouterr().out


def test_audit_verify_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _make_log(tmp_path, 6)
    assert _run_verify(path, capsys) == (0, "OK: 6 entries, chain intact\n")
    path.write_bytes(b"")
    assert _run_verify(path, capsys)[0] == 0


@pytest.mark.parametrize("line", [1, 3, 5])
def test_audit_verify_detects_an_edit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: int
) -> None:
    path, lines = _make_log(tmp_path, 6)
    lines[line - 1] = lines[line - 1].replace(b'"alice"', b'"mallory"')
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    code, out = _run_verify(path, capsys)
    assert code == 1
    assert f"line {line}:" in out
    assert "edited" in out


@pytest.mark.parametrize("line", [1, 3, 5])
def test_audit_verify_detects_a_deletion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: int
) -> None:
    path, lines = _make_log(tmp_path, 6)
    del lines[line - 1]
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    code, out = _run_verify(path, capsys)
    assert code == 1
    assert f"line {line}:" in out
    assert "removed or reordered" in out


@pytest.mark.parametrize("line", [1, 4])
def test_audit_verify_detects_a_swap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: int
) -> None:
    path, lines = _make_log(tmp_path, 6)
    lines[line - 1], lines[line] = lines[line], lines[line - 1]
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    code, out = _run_verify(path, capsys)
    assert code == 1
    assert f"line {line}:" in out
    assert "removed or reordered" in out


def test_audit_verify_real_chain_tampered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Edit a line of a log the server wrote (json with separators, real hashes)."""
    import trio

    from fetchml.audit import AuditLog

    path = tmp_path / "audit.log"

    async def write() -> None:
        async with trio.open_nursery() as nursery:
            log = AuditLog(path)
            await nursery.start(log.run)
            for n in range(5):
                await log.record("submit", user="alice", job_id=n, source="10.0.0.1")
            nursery.cancel_scope.cancel()

    trio.run(write)
    assert _run_verify(path, capsys) == (0, "OK: 5 entries, chain intact\n")
    lines = path.read_bytes().splitlines()
    lines[1] = lines[1].replace(b'"job_id":1', b'"job_id":9')
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    code, out = _run_verify(path, capsys)
    assert code == 1
    assert "line 2:" in out
