"""Key lifecycle: several keys per user, expiry, listing and revoking, and hot reload of the auth
file (on change and on SIGHUP) that closes a revoked or expired key's WebSockets."""

from __future__ import annotations

import datetime
import json
import signal
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import trio
from helpers.gateway import (
    HttpSession,
    ServerProcess,
    Users,
    free_port,
    make_server_config,
    serve,
    server_yaml,
    ws_connect,
)

from fetchml.auth import (
    EXPIRED_KEY,
    REVOKED_KEY,
    AuthActor,
    AuthFile,
    ReloadReport,
    derived_key_id,
    load_auth_file,
    parse_auth_config,
)
from fetchml.cli import main as fetchml_main
from fetchml.errors import AuthError

# A revoked key's connections close within POLL_INTERVAL_S plus the close; allow for a busy CI.
WITHIN = 5.0


def hashed(key: str) -> str:
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(4)).decode()


def new_key(auth_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    """``fetchml keys new`` for real; returns (key id, key)."""
    code = fetchml_main(["keys", "new", *args, "--auth-file", str(auth_file), "--rounds", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    key = out.strip()
    return key.split("_")[1], key


def keys_cli(auth_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = fetchml_main(["keys", *args, "--auth-file", str(auth_file)])
    out, err = capsys.readouterr()
    return code, out + err


def audit_lines(config: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in config.audit_path.read_bytes().splitlines()]


def audited(config: Any, action: str, key_id: str) -> bool:
    """Whether the audit log has ``action`` for ``key_id`` (the server applied the change)."""
    entries = audit_lines(config) if config.audit_path.exists() else []
    return any(
        e["action"] == action and (e.get("detail") or {}).get("key_id") == key_id for e in entries
    )


async def until(predicate: Any, within: float = WITHIN) -> None:
    with trio.fail_after(within):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)


def edit(path: Path, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` once in the file; return the text it had before."""
    text = path.read_text()
    path.write_text(text.replace(old, new, 1))
    return text


# ---- the auth config and the actor --------------------------------------------------------------


async def test_several_keys_per_user_and_expiry() -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    config = parse_auth_config(
        {
            "api_keys": {
                "alice": {
                    "roles": ["researcher"],
                    "keys": [
                        {"hash": hashed("one"), "created": "2026-01-01T00:00:00Z"},
                        {"hash": hashed("two"), "expires": "2099-01-01"},
                        {"hash": hashed("old"), "expires": past.isoformat()},
                    ],
                }
            }
        },
        source="t",
    )
    keys = config.api_keys["alice"].keys
    assert keys[1].expires == datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)
    actor = AuthActor(config)
    with trio.fail_after(10):
        one, two = await actor.authenticate("one"), await actor.authenticate("two")
        assert one.user == two.user == "alice"
        assert (one.key_id, two.key_id) == (keys[0].ref, keys[1].ref)
        assert two.expires_at == keys[1].expires_at
        with pytest.raises(AuthError, match=EXPIRED_KEY):
            await actor.authenticate("old")
        with pytest.raises(AuthError, match=EXPIRED_KEY):  # from the cache, the same answer
            actor.authenticate_cached("old")


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"hash": "H", "keys": []}, "auth.api_keys.a.hash: give either 'keys'"),
        ({"roles": []}, "auth.api_keys.a.hash: missing field (or 'keys'"),
        ({"keys": [{"hash": "H", "expires": "soon"}]}, "auth.api_keys.a.keys[0].expires: 'soon'"),
        ({"keys": [{"hash": "H", "owner": "x"}]}, "auth.api_keys.a.keys[0].owner: unknown field"),
        ({"keys": [{"hash": "H"}, {"hash": "H"}]}, "hash already used by user 'a'"),
    ],
)
def test_key_list_errors_name_the_field(user: dict[str, Any], message: str) -> None:
    good = hashed("k")
    data = json.loads(json.dumps(user).replace('"H"', json.dumps(good)))
    with pytest.raises(Exception, match=r"^t: ") as info:
        parse_auth_config({"api_keys": {"a": data}}, source="t")
    assert message in str(info.value)


async def test_replace_keeps_unchanged_keys_verified_and_drops_revoked_ones() -> None:
    def config(*users: str) -> Any:
        return parse_auth_config(
            {"api_keys": {u: {"hash": hashes[u], "roles": ["researcher"]} for u in users}},
            source="t",
        )

    hashes = {u: hashed(u + "-key") for u in ("alice", "bob")}
    actor = AuthActor(config("alice", "bob"))
    with trio.fail_after(10):
        alice = await actor.authenticate("alice-key")
        bob = await actor.authenticate("bob-key")
    assert actor.verifications == 2
    changed = actor.changed
    changes = actor.replace(config("alice"))
    assert changed.is_set()
    assert [(c.action, c.user) for c in changes] == [("key.revoke", "bob"), ("user.remove", "bob")]
    assert changes[0].key_id == derived_key_id(hashes["bob"])
    assert actor.authenticate_cached("alice-key") == alice  # kept: no bcrypt again
    assert actor.current(alice) == alice
    with pytest.raises(AuthError, match=REVOKED_KEY):
        actor.current(bob)
    with trio.fail_after(10), pytest.raises(AuthError, match="invalid API key"):
        await actor.authenticate("bob-key")
    assert actor.verifications == 3


async def test_reload_applies_a_valid_file_and_refuses_a_broken_one(tmp_path: Path) -> None:
    users = Users()
    path = users.write(tmp_path / "auth.yaml")
    reports: list[ReloadReport] = []

    async def on_reload(report: ReloadReport) -> None:
        reports.append(report)

    actor = AuthActor(load_auth_file(path), source=AuthFile(path), on_reload=on_reload)
    with trio.fail_after(10):
        assert await actor.reload(force=False) is None  # first look: same content, no change
        good = path.read_text()
        path.write_text(good.replace("roles: [researcher]", "roles: [nosuch]", 1))
        report = await actor.reload(force=False)
        assert report is not None
        assert not report.ok
        assert report.error is not None
        assert "auth.api_keys.alice.roles[0]: unknown role 'nosuch'" in report.error
        assert (await actor.authenticate(users.alice)).roles == ("researcher",)  # last good
        assert await actor.reload(force=False) is None  # the same broken file: reported once
        path.unlink()
        report = await actor.reload(force=False)
        assert report is not None
        assert report.error == f"{path}: file not found"
        path.write_text(good.replace("roles: [researcher]", "roles: [analyst]", 1))
        report = await actor.reload(force=False)
        assert report is not None
        assert report.ok
        assert [(c.action, c.user) for c in report.changes] == [("user.update", "alice")]
        assert (await actor.authenticate(users.alice)).roles == ("analyst",)
    assert reports == [r for r in reports if r is not None]
    assert len(reports) == 3


# ---- the CLI ------------------------------------------------------------------------------------


def test_keys_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "auth.yaml"
    first, _ = new_key(path, capsys, "--user", "alice", "--role", "researcher")
    second, _ = new_key(path, capsys, "--user", "alice", "--expires", "30d")
    new_key(path, capsys, "--user", "bob", "--role", "analyst", "--expires", "2099-01-01")
    text = path.read_text()

    code, out = keys_cli(path, capsys, "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["user"], r["key_id"], r["status"]) for r in rows] == [
        ("alice", first, "active"),
        ("alice", second, "active"),
        ("bob", rows[2]["key_id"], "active"),
    ]
    assert rows[2]["expires"] == "2099-01-01T00:00:00Z"
    expires = datetime.datetime.fromisoformat(rows[1]["expires"])
    assert abs(expires.timestamp() - (time.time() + 30 * 86400)) < 120
    code, table = keys_cli(path, capsys, "list")
    assert code == 0
    assert first in table
    assert "researcher" in table
    for secret_ish in ("$2b$", "fml_"):
        assert secret_ish not in out + table

    code, out = keys_cli(path, capsys, "revoke", first)
    assert code == 0
    assert f"revoked key {first} of 'alice'" in out
    assert [k.ref for k in load_auth_file(path).api_keys["alice"].keys] == [second]
    code, out = keys_cli(path, capsys, "revoke", "--user", "bob")
    assert code == 0
    assert load_auth_file(path).api_keys["bob"].keys == ()
    assert load_auth_file(path).api_keys["bob"].roles == ("analyst",)
    code, out = keys_cli(path, capsys, "list", "--json")
    assert json.loads(out)[-1]["status"] == "no key"
    assert text != path.read_text()

    before = path.read_text()
    for args, message in [
        (("revoke", first), f"no key with id {first!r}"),
        (("revoke",), "name the key ids to revoke"),
        (("revoke", "--user", "bob"), "user 'bob' has no key to revoke"),
        (("revoke", "--user", "zed"), "no user 'zed'"),
    ]:
        code, out = keys_cli(path, capsys, *args)
        assert code == 2
        assert message in out
    code, out = keys_cli(path, capsys, "new", "--user", "c", "--role", "analyst", "--expires", "x")
    assert code == 2
    assert "--expires: 'x' is not a duration" in out
    assert path.read_text() == before


# ---- a live server ------------------------------------------------------------------------------


async def test_revoking_a_key_closes_its_websockets_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    auth_file = Path(config.auth_file)
    async with serve(config) as base:
        old_id, old_key = new_key(auth_file, capsys, "--user", "alice", "--role", "researcher")
        new_id, new = new_key(auth_file, capsys, "--user", "alice")
        # The server picks the new keys up from the file, without a restart.
        await until(lambda: audited(config, "key.add", new_id))
        async with (
            ws_connect(base, old_key) as doomed,
            ws_connect(base, new) as rotated,
            ws_connect(base, users.bob) as bystander,
        ):
            await doomed.ok("whoami")
            started = trio.current_time()
            assert keys_cli(auth_file, capsys, "revoke", old_id)[0] == 0
            code, reason = await doomed.closed(within=WITHIN)
            assert (code, reason) == (1008, REVOKED_KEY)
            assert trio.current_time() - started < WITHIN
            assert (await rotated.ok("whoami"))["user"] == "alice"
            assert (await bystander.ok("whoami"))["user"] == "bob"
        async with HttpSession(base) as s:
            refused = await s.request("GET", "/api/v1/whoami", key=old_key)
            assert refused.status == 401
            assert (await s.request("GET", "/api/v1/whoami", key=new)).status == 200
    actions = [(e["action"], e.get("detail")) for e in audit_lines(config)]
    assert ("key.add", {"user": "alice", "key_id": new_id}) in actions
    assert ("key.revoke", {"user": "alice", "key_id": old_id}) in actions
    assert old_key not in config.audit_path.read_text()


async def test_an_expiring_key_stops_working_and_its_websocket_closes(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    auth_file = Path(config.auth_file)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    edit(auth_file, "    carol:\n", f"    carol:\n      expires: '{soon.isoformat()}'\n")
    async with serve(config) as base, ws_connect(base, users.carol) as ws:
        async with HttpSession(base) as s:
            assert (await s.request("GET", "/api/v1/whoami", key=users.carol)).status == 200
        code, reason = await ws.closed(within=2 + WITHIN)
        assert (code, reason) == (1008, EXPIRED_KEY)
        assert time.time() >= soon.timestamp()
        async with HttpSession(base) as s:
            refused = await s.request("GET", "/api/v1/whoami", key=users.carol)
            assert refused.status == 401
            assert refused.error["message"] == EXPIRED_KEY


async def test_a_broken_auth_file_is_refused_and_the_last_good_one_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    auth_file = Path(config.auth_file)
    async with serve(config) as base, ws_connect(base, users.alice) as ws:
        edit(auth_file, "  roles: {}\n", "  roles: {}\n  surprise: 1\n")
        await until(lambda: any(e["action"] == "auth.reload" for e in audit_lines(config)))
        refused = next(e for e in audit_lines(config) if e["action"] == "auth.reload")
        assert refused["outcome"] == "refused"
        assert "auth.surprise: unknown field" in refused["detail"]["error"]
        assert (await ws.ok("whoami"))["user"] == "alice"  # nothing was dropped
        async with HttpSession(base) as s:
            assert (await s.request("GET", "/api/v1/whoami", key=users.bob)).status == 200
            edit(auth_file, "  surprise: 1\n", "")
            key_id, key = new_key(auth_file, capsys, "--user", "dave", "--role", "analyst")
            await until(lambda: audited(config, "key.add", key_id))
            assert (await s.request("GET", "/api/v1/whoami", key=key)).status == 200
        assert (await ws.ok("whoami"))["user"] == "alice"


async def test_sighup_reloads_the_auth_file(tmp_path: Path) -> None:
    users = Users()
    auth_file = users.write(tmp_path / "auth.yaml")
    config_file = tmp_path / "server.yaml"
    config_file.write_text(server_yaml(tmp_path / "data", auth_file))
    server = ServerProcess(["--config", str(config_file)], cwd=tmp_path, port=free_port())
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        try:
            server.signal(signal.SIGHUP)
            audit = tmp_path / "data" / "audit.log"

            def reloaded() -> bool:
                lines = audit.read_text().splitlines() if audit.exists() else []
                return any('"auth.reload"' in line for line in lines)

            await until(reloaded)
            entry = next(
                json.loads(line)
                for line in audit.read_text().splitlines()
                if '"auth.reload"' in line
            )
            assert (entry["outcome"], entry["source"]) == ("ok", "auth file, reloaded on SIGHUP")
            assert "received SIGHUP" in server.stderr
            server.signal(signal.SIGTERM)
            assert await server.wait() == 0
        finally:
            await server.kill()
