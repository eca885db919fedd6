"""Key lifecycle: several keys per user, expiry, listing and revoking, and hot reload of the auth
file (on change and on SIGHUP) that closes a revoked or expired key's WebSockets."""

from __future__ import annotations

import datetime
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.auth_files import (
    WITHIN,
    audit_lines,
    audited,
    edit,
    hashed,
    keys_cli,
    new_key,
    until,
)
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
    AuthConfig,
    AuthFile,
    ReloadReport,
    derived_key_id,
    load_auth_file,
    parse_auth_config,
)
from fetchml.errors import AuthError

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


def make_unreachable(folder: Path) -> None:
    """Put a file where the auth file's folder was: the file cannot even be looked at."""
    folder.rename(folder.with_name("moved"))
    folder.write_text("")


class _CountedFile(AuthFile):
    """The auth file, counting the actor's polls (each one reads it, from a worker thread)."""

    polls = 0

    def read_if_changed(self, *, force: bool) -> AuthConfig | None:
        self.polls += 1
        return super().read_if_changed(force=force)


async def test_the_actor_survives_a_failed_audit_and_an_unreadable_file(tmp_path: Path) -> None:
    users = Users()
    path = users.write(tmp_path / "conf" / "auth.yaml")
    reports: list[ReloadReport] = []
    source = _CountedFile(path)

    async def on_reload(report: ReloadReport) -> None:
        reports.append(report)
        raise OSError(28, "No space left on device")

    actor = AuthActor(
        load_auth_file(path), source=source, on_reload=on_reload, poll_interval_s=0.05
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            edit(path, "roles: [researcher]", "roles: [analyst]")
            await until(lambda: len(reports) == 1)
            assert reports[0].ok  # applied, though it could not be recorded
            path.chmod(0o620)  # group-writable: anyone in the group could make themselves admin
            await until(lambda: len(reports) == 2)
            assert not reports[1].ok
            assert reports[1].error is not None
            assert "writable by group or others (mode 620)" in reports[1].error
            make_unreachable(path.parent)
            await until(lambda: len(reports) == 3)
            assert "cannot read" in (reports[2].error or "")
            # Polls run one after the other: once a third one after this has begun, two whole
            # polls of the same unreadable file have come and gone.
            polled = source.polls
            await until(lambda: source.polls >= polled + 3)
            assert len(reports) == 3  # the same problem is reported once, not every poll
            nursery.cancel_scope.cancel()
    assert (await actor.authenticate(users.alice)).roles == ("analyst",)


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
