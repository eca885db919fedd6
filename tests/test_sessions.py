"""Sessions that outlive one request (WebSockets, followed logs) against auth changes made while
they are open: a second key on a connection, new roles, auth switched on, a narrower allow-list,
a revoked key under a followed log."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trio
from helpers.auth_files import WITHIN, edit, keys_cli, new_key, until
from helpers.gateway import HttpSession, Users, http, make_server_config, serve, ws_connect

from fetchml.auth import EXPIRED_KEY

SLEEPER = {"command": ["sh", "-c", "echo started; sleep 30"], "resources": {"cpus": 1}}


async def test_a_second_auth_op_watches_the_new_key_and_keeps_the_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    auth_file = Path(config.auth_file)
    soon = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)).isoformat()
    _, short_key = new_key(auth_file, capsys, "--user", "alice", "--expires", soon)
    async with serve(config) as base, ws_connect(base, users.alice) as ws:
        # Another user's key on the same connection is refused; the connection lives on.
        refused = await ws.call("auth", key=users.bob)
        assert refused["error"]["code"] == "invalid_request"
        assert "authenticated as 'alice'" in refused["error"]["message"]
        assert (await ws.ok("whoami"))["user"] == "alice"
        # Another key of the same user: from now on the connection lives as long as that key.
        assert (await ws.ok("auth", key=short_key))["user"] == "alice"
        code, reason = await ws.closed(within=2 + WITHIN)
        assert (code, reason) == (1008, EXPIRED_KEY)


async def test_new_roles_apply_to_later_ops_and_end_subscriptions(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    auth_file = Path(config.auth_file)
    async with (
        serve(config) as base,
        ws_connect(base, users.carol) as plain,
        ws_connect(base, users.carol) as subscribed,
    ):
        await subscribed.ok("subscribe")
        assert (await plain.ok("status"))["status"] is not None
        edit(auth_file, "      roles: [analyst]\n", "      roles: []\n")
        code, reason = await subscribed.closed(within=WITHIN)
        assert (code, reason) == (1008, "roles changed: reconnect")
        reply = await plain.call("status")
        assert reply["error"]["code"] == "forbidden"  # the same connection, the new roles


async def test_switching_auth_on_closes_anonymous_websockets(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    auth_file = Path(config.auth_file)
    edit(auth_file, "  enabled: true\n", "  enabled: false\n")
    async with serve(config) as base, ws_connect(base, "") as ws:  # an empty auth op
        assert (await ws.ok("whoami"))["user"] == "anonymous"
        edit(auth_file, "  enabled: false\n", "  enabled: true\n")
        code, reason = await ws.closed(within=WITHIN)
        assert (code, reason) == (1008, "authentication is now required")
        assert (await http(base, "GET", "/api/v1/whoami")).status == 401


async def test_narrowing_the_allow_list_closes_websockets_from_outside(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    auth_file = Path(config.auth_file)
    async with serve(config) as base, ws_connect(base, users.alice) as ws:
        await ws.ok("whoami")
        edit(auth_file, "  roles: {}\n", '  roles: {}\n  ip_whitelist: ["10.0.0.0/8"]\n')
        code, reason = await ws.closed(within=WITHIN)
        assert (code, reason) == (1008, "address not allowed")


async def test_a_followed_log_ends_when_its_key_is_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = Users()
    config = make_server_config(tmp_path, users)
    auth_file = Path(config.auth_file)
    async with serve(config) as base, HttpSession(base) as s:
        job = (await s.request("POST", "/api/v1/jobs", key=users.alice, json_body=SLEEPER)).json()
        job_id = job["job"]["id"]
        path = f"/api/v1/jobs/{job_id}/logs?follow=1"
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def follow() -> None:
                response = await http(base, "GET", path, key=users.alice, within=WITHIN + 5)
                got.append(response.body)

            nursery.start_soon(follow)
            await trio.sleep(1.0)  # the stream is open and waiting for more
            assert not got
            assert keys_cli(auth_file, capsys, "revoke", "--user", "alice")[0] == 0
            await until(lambda: bool(got), within=WITHIN)
        assert got[0].startswith(b"started")
        await s.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=users.admin)
