"""The role matrix: every HTTP route and every WebSocket op as admin, two researchers, an analyst,
a wrong key and no key, against one server (in a thread) with an auth file written by hand.

alice and bob are researchers, carol is an analyst.  A researcher sees and cancels only their own
jobs, and another user's job is "not found" (never "forbidden", which would leak that it exists),
except on cancel, where the contract says 403 "you can only cancel your own jobs".
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.core import kill_everything_under
from helpers.gateway import (
    HIGH_LIMITS,
    HttpSession,
    ServerThread,
    Users,
    Ws,
    auth_headers,
    http,
    make_server_config,
    until_job,
    ws_connect,
    ws_upgrade_refusal,
)
from trio_websocket import ConnectionClosed

CALLERS = ["admin", "alice", "bob", "carol", "wrong", "none"]
USERS = ["admin", "alice", "bob", "carol"]
RESEARCHERS = ["alice", "bob"]
INVALID = ("unauthorized", "invalid API key")
MISSING = ("unauthorized", "missing API key")
OWN_ONLY = ("forbidden", "you can only cancel your own jobs")
NO_CREATE = ("forbidden", "missing permission jobs:create")
NO_UPDATE = ("forbidden", "missing permission jobs:update")
WRONG_KEY = "wrong-" + secrets.token_urlsafe(24)


@dataclass
class World:
    """The server, its users, and jobs made once for the module."""

    base: str
    users: Users
    blockers: dict[str, int]  # per user: a running job the user's parked jobs depend on
    parked: dict[str, int]  # per researcher: a queued job that stays queued
    done: dict[str, int]  # per researcher: a finished job whose log says "<user>-log"

    def key(self, caller: str) -> str | None:
        if caller == "wrong":
            return WRONG_KEY
        if caller == "none":
            return None
        return self.users.keys[caller]

    def parked_spec(self, user: str) -> dict[str, Any]:
        """A job that stays queued: it waits for ``user``'s own blocker, which never ends."""
        return {"command": ["/bin/true"], "depends_on": [self.blockers[user]]}


async def _seed(base: str, users: Users) -> World:
    world = World(base=base, users=users, blockers={}, parked={}, done={})
    async with HttpSession(base) as session:

        async def submit(user: str, spec: dict[str, Any]) -> int:
            response = await session.request(
                "POST", "/api/v1/jobs", key=users.keys[user], json_body=spec
            )
            assert response.status == 201, response.body
            job_id: int = response.json()["job"]["id"]
            return job_id

        for user in ("admin", *RESEARCHERS):
            world.blockers[user] = await submit(user, {"command": ["sleep", "300"]})
        for user in RESEARCHERS:
            world.parked[user] = await submit(user, world.parked_spec(user))
            world.done[user] = await submit(user, {"command": ["echo", f"{user}-log"]})
        for job_id in world.done.values():
            await until_job(session, users.admin, job_id, ("succeeded",))
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("roles")
    users = Users()
    try:
        # Many tests here send wrong keys on purpose: that must not ban 127.0.0.1.
        config = make_server_config(tmp, users, limits=HIGH_LIMITS)
        with ServerThread(config) as server:
            yield trio.run(_seed, server.base, users)
    finally:
        kill_everything_under(tmp)


def unauthenticated(caller: str) -> tuple[str, str] | None:
    return {"wrong": INVALID, "none": MISSING}.get(caller)


# ---- HTTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
async def test_http_submit(world: World, caller: str) -> None:
    owner = caller if caller in world.blockers else "admin"
    response = await http(
        world.base,
        "POST",
        "/api/v1/jobs",
        key=world.key(caller),
        json_body=world.parked_spec(owner),
    )
    if caller in ("admin", *RESEARCHERS):
        assert response.status == 201, response.body
        job = response.json()["job"]
        assert job["user"] == caller
        assert job["state"] == "queued"
        return
    if caller == "carol":
        assert response.status == 403
        assert response.error == {
            "code": "forbidden",
            "message": "missing permission jobs:create",
            "permission": "jobs:create",
        }
        return
    assert response.status == 401
    code, message = unauthenticated(caller) or ("", "")
    assert response.error == {"code": code, "message": message}
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("caller", CALLERS)
async def test_http_list(world: World, caller: str) -> None:
    response = await http(world.base, "GET", "/api/v1/jobs?limit=10000", key=world.key(caller))
    if caller in ("wrong", "none"):
        assert response.status == 401
        assert (response.error["code"], response.error["message"]) == unauthenticated(caller)
        return
    assert response.status == 200, response.body
    owners = {job["user"] for job in response.json()["jobs"]}
    if caller in RESEARCHERS:
        assert owners == {caller}
    else:
        assert owners >= {"admin", "alice", "bob"}


@pytest.mark.parametrize("caller", USERS)
async def test_http_list_of_another_user(world: World, caller: str) -> None:
    """``?user=`` narrows an admin's or analyst's list; a researcher cannot ask for another's."""
    response = await http(world.base, "GET", "/api/v1/jobs?user=bob", key=world.key(caller))
    if caller == "alice":
        assert response.status == 403
        assert response.error["code"] == "forbidden"
        assert "jobs:read:all" in response.error["message"]
        return
    assert response.status == 200, response.body
    jobs = response.json()["jobs"]
    assert jobs
    assert {job["user"] for job in jobs} == {"bob"}


@pytest.mark.parametrize("target", RESEARCHERS)
@pytest.mark.parametrize("caller", CALLERS)
async def test_http_get(world: World, caller: str, target: str) -> None:
    job_id = world.parked[target]
    response = await http(world.base, "GET", f"/api/v1/jobs/{job_id}", key=world.key(caller))
    if caller in ("wrong", "none"):
        assert response.status == 401
        assert (response.error["code"], response.error["message"]) == unauthenticated(caller)
    elif caller in RESEARCHERS and caller != target:
        # Exactly what a job id that does not exist gets: nothing tells the job exists.
        missing = await http(world.base, "GET", "/api/v1/jobs/999999", key=world.key(caller))
        assert response.status == missing.status == 404
        assert response.error == {"code": "not_found", "message": f"no job with id {job_id}"}
        assert missing.error == {"code": "not_found", "message": "no job with id 999999"}
    else:
        assert response.status == 200, response.body
        job = response.json()["job"]
        assert (job["id"], job["user"], job["state"]) == (job_id, target, "queued")


@pytest.mark.parametrize("target", RESEARCHERS)
@pytest.mark.parametrize("caller", CALLERS)
async def test_http_logs(world: World, caller: str, target: str) -> None:
    job_id = world.done[target]
    response = await http(world.base, "GET", f"/api/v1/jobs/{job_id}/logs", key=world.key(caller))
    if caller in ("wrong", "none"):
        assert response.status == 401
        assert (response.error["code"], response.error["message"]) == unauthenticated(caller)
    elif caller in RESEARCHERS and caller != target:
        assert response.status == 404
        assert response.error == {"code": "not_found", "message": f"no job with id {job_id}"}
        assert f"{target}-log".encode() not in response.body
    else:
        assert response.status == 200
        assert response.body == f"{target}-log\n".encode()
        assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("caller", CALLERS)
async def test_http_cancel(world: World, caller: str) -> None:
    """Each caller tries to cancel a queued job of alice's."""
    alice = world.users.alice
    async with HttpSession(world.base) as session:
        created = await session.request(
            "POST", "/api/v1/jobs", key=alice, json_body=world.parked_spec("alice")
        )
        job_id = created.json()["job"]["id"]
        response = await session.request(
            "POST", f"/api/v1/jobs/{job_id}/cancel", key=world.key(caller)
        )
        after = await session.request("GET", f"/api/v1/jobs/{job_id}", key=alice)
    if caller in ("admin", "alice"):
        assert response.status == 200, response.body
        assert response.json()["job"]["state"] == "cancelled"
        assert after.json()["job"]["state"] == "cancelled"
        return
    if caller == "bob":
        assert response.status == 403
        assert (response.error["code"], response.error["message"]) == OWN_ONLY
    elif caller == "carol":
        assert response.status == 403
        assert (response.error["code"], response.error["message"]) == NO_UPDATE
        assert response.error["permission"] == "jobs:update"
    else:
        assert response.status == 401
        assert (response.error["code"], response.error["message"]) == unauthenticated(caller)
    assert after.json()["job"]["state"] == "queued"


@pytest.mark.parametrize("caller", RESEARCHERS)
async def test_http_cancel_own_and_missing(world: World, caller: str) -> None:
    key = world.key(caller)
    async with HttpSession(world.base) as session:
        created = await session.request(
            "POST", "/api/v1/jobs", key=key, json_body=world.parked_spec(caller)
        )
        job_id = created.json()["job"]["id"]
        cancelled = await session.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=key)
        again = await session.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=key)
        missing = await session.request("POST", "/api/v1/jobs/999999/cancel", key=key)
    assert cancelled.status == 200
    assert cancelled.json()["job"]["state"] == "cancelled"
    assert again.status == 409
    assert again.error["code"] == "conflict"
    assert missing.status == 404
    assert missing.error["code"] == "not_found"


@pytest.mark.parametrize("caller", CALLERS)
async def test_http_status(world: World, caller: str) -> None:
    response = await http(world.base, "GET", "/api/v1/status", key=world.key(caller))
    if caller in ("wrong", "none"):
        assert response.status == 401
        assert (response.error["code"], response.error["message"]) == unauthenticated(caller)
        return
    assert response.status == 200, response.body
    status = response.json()["status"]
    assert status["counts"]["running"] >= 3
    by_user = {**status["running_by_user"], **status["queued_by_user"]}
    if caller in RESEARCHERS:
        # The summary of the machine, but no other user's activity.
        assert set(by_user) == {caller}
    else:
        assert set(by_user) >= {"admin", "alice", "bob"}


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
@pytest.mark.parametrize("caller", CALLERS)
async def test_http_whoami(world: World, caller: str, style: str) -> None:
    response = await http(world.base, "GET", "/api/v1/whoami", key=world.key(caller), style=style)
    if caller in ("wrong", "none"):
        assert response.status == 401
        assert (response.error["code"], response.error["message"]) == unauthenticated(caller)
        return
    assert response.status == 200
    me = response.json()
    assert me["user"] == caller
    expected_roles = {"admin": ["admin"], "carol": ["analyst"]}.get(caller, ["researcher"])
    assert me["roles"] == expected_roles
    assert me["admin"] is (caller == "admin")
    if caller == "carol":
        assert me["permissions"] == ["jobs:read:all", "status:read"]


@pytest.mark.parametrize("caller", CALLERS)
async def test_http_open_routes(world: World, caller: str) -> None:
    """/health, /metrics and the OpenAPI document need no key, whatever key is sent."""
    async with HttpSession(world.base) as session:
        health = await session.request("GET", "/health", key=world.key(caller))
        metrics = await session.request("GET", "/metrics", key=world.key(caller))
        openapi = await session.request("GET", "/api/v1/openapi.json", key=world.key(caller))
    assert health.status == 200
    assert health.json() == {"status": "ok"}
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"fetchml_jobs{" in metrics.body
    assert openapi.status == 200
    assert openapi.json()["openapi"].startswith("3.")


async def test_http_bearer_scheme_is_case_insensitive_and_other_schemes_are_not_keys(
    world: World,
) -> None:
    ok = await http(
        world.base,
        "GET",
        "/api/v1/whoami",
        headers=[("Authorization", f"bearer {world.users.alice}")],
    )
    assert ok.status == 200
    assert ok.json()["user"] == "alice"
    basic = await http(
        world.base, "GET", "/api/v1/whoami", headers=[("Authorization", "Basic Zm9vOmJhcg==")]
    )
    assert basic.status == 401
    assert basic.error["message"] == "missing API key"


# ---- WebSocket ------------------------------------------------------------------------------

WS_OPS = ["auth", "whoami", "submit", "get", "list", "cancel", "subscribe", "unsubscribe", "status"]


async def _perform(ws: Ws, world: World, op: str, caller: str) -> dict[str, Any]:
    """Send ``op`` as the connection's caller and return its reply (``auth`` re-authenticates)."""
    match op:
        case "auth":
            return await ws.call("auth", key=world.key(caller))
        case "submit":
            owner = caller if caller in world.blockers else "admin"
            return await ws.call("submit", spec=world.parked_spec(owner))
        case "get":
            return await ws.call("get", job_id=world.parked["alice"])
        case "list":
            return await ws.call("list", limit=10000)
        case "cancel":
            created = await http(
                world.base,
                "POST",
                "/api/v1/jobs",
                key=world.users.alice,
                json_body=world.parked_spec("alice"),
            )
            return await ws.call("cancel", job_id=created.json()["job"]["id"])
        case "subscribe":
            return await ws.call("subscribe", job_id=world.parked["alice"], since=0)
        case "unsubscribe":
            sub = await ws.ok("subscribe")
            return await ws.call("unsubscribe", sub=sub["sub"])
        case _:
            return await ws.call(op)


# What a user gets for each op: "ok", or (error code, message) (None: any message).
EXPECTED: dict[str, dict[str, Any]] = {
    "auth": dict.fromkeys(USERS, "ok"),
    "whoami": dict.fromkeys(USERS, "ok"),
    "submit": {"admin": "ok", "alice": "ok", "bob": "ok", "carol": NO_CREATE},
    "get": {"admin": "ok", "alice": "ok", "bob": ("not_found", None), "carol": "ok"},
    "list": dict.fromkeys(USERS, "ok"),
    "cancel": {"admin": "ok", "alice": "ok", "bob": OWN_ONLY, "carol": NO_UPDATE},
    "subscribe": {"admin": "ok", "alice": "ok", "bob": ("not_found", None), "carol": "ok"},
    "unsubscribe": dict.fromkeys(USERS, "ok"),
    "status": dict.fromkeys(USERS, "ok"),
}


@pytest.mark.parametrize("op", WS_OPS)
@pytest.mark.parametrize("caller", USERS)
async def test_ws_op(world: World, caller: str, op: str) -> None:
    async with ws_connect(world.base, world.key(caller)) as ws:
        reply = await _perform(ws, world, op, caller)
        expected = EXPECTED[op][caller]
        if expected != "ok":
            code, message = expected
            assert reply["ok"] is False, reply
            assert set(reply) == {"re", "ok", "error"}
            assert reply["error"]["code"] == code
            if message is not None:
                assert reply["error"]["message"] == message
            if code == "not_found":
                assert reply["error"]["message"] == f"no job with id {world.parked['alice']}"
            # The connection goes on after a refused op.
            assert (await ws.ok("whoami"))["user"] == caller
            return
        assert reply["ok"] is True, reply
        match op:
            case "auth" | "whoami":
                assert reply["user"] == caller
            case "submit":
                assert reply["job"]["user"] == caller
            case "get":
                assert reply["job"]["id"] == world.parked["alice"]
            case "list":
                owners = {job["user"] for job in reply["jobs"]}
                assert owners == {caller} if caller in RESEARCHERS else owners >= {"alice", "bob"}
            case "cancel":
                assert reply["job"]["state"] == "cancelled"
            case "subscribe":
                # Replay from the start: only that job's events, and it is alice's.
                event = await ws.event()
                assert event["sub"] == reply["sub"]
                assert event["job"]["id"] == world.parked["alice"]
            case "status":
                by_user = {
                    **reply["status"]["running_by_user"],
                    **reply["status"]["queued_by_user"],
                }
                assert (
                    set(by_user) == {caller}
                    if caller in RESEARCHERS
                    else set(by_user)
                    >= {
                        "alice",
                        "bob",
                    }
                )


@pytest.mark.parametrize("op", WS_OPS)
async def test_ws_op_without_key(world: World, op: str) -> None:
    """Every op but ``auth`` is refused before authentication, and the connection lives on."""
    async with ws_connect(world.base) as ws:
        if op == "auth":
            reply = await ws.call("auth", key="")
            assert reply["ok"] is False
            assert reply["error"] == {"code": "unauthorized", "message": "missing API key"}
            code, _ = await ws.closed()
            assert code == 4001  # authentication failed
            return
        rid = ws.next_id()
        args: dict[str, Any] = {"job_id": world.parked["alice"]} if op in ("get", "cancel") else {}
        args |= {"sub": 1} if op == "unsubscribe" else {}
        args |= {"spec": world.parked_spec("alice")} if op == "submit" else {}
        await ws.send({"op": op, "id": rid, **args})
        reply = await ws.reply(rid)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "unauthorized"
        assert await ws.barrier() == []  # one reply, no events
        # Still alive, and an auth op now works on the same connection.
        assert (await ws.ok("auth", key=world.users.bob))["user"] == "bob"
        assert (await ws.ok("whoami"))["user"] == "bob"
    if op == "cancel":
        job = await http(
            world.base, "GET", f"/api/v1/jobs/{world.parked['alice']}", key=world.users.alice
        )
        assert job.json()["job"]["state"] == "queued"


@pytest.mark.parametrize("op", WS_OPS)
async def test_ws_op_with_wrong_key(world: World, op: str) -> None:
    """A wrong key in the auth op gets one error reply and a 1008 close; a request pipelined
    behind it is never performed."""
    async with ws_connect(world.base) as ws:
        auth_id, op_id = ws.next_id(), ws.next_id()
        await ws.send({"op": "auth", "id": auth_id, "key": WRONG_KEY})
        args: dict[str, Any] = {"job_id": world.parked["alice"]} if op in ("get", "cancel") else {}
        args |= {"spec": world.parked_spec("alice")} if op == "submit" else {}
        args |= {"key": world.users.admin} if op == "auth" else {}
        args |= {"sub": 1} if op == "unsubscribe" else {}
        with contextlib.suppress(ConnectionClosed):  # the server may have closed already
            await ws.send({"op": op, "id": op_id, **args})
        code, _ = await ws.closed()
    assert code == 4001  # authentication failed
    replies = [frame for frames in ws.replies.values() for frame in frames]
    # One reply, to the auth op; the request behind it was never read.
    assert replies == [
        {
            "re": auth_id,
            "ok": False,
            "error": {"code": "unauthorized", "message": "invalid API key"},
        }
    ]
    assert not ws.events
    if op == "cancel":
        job = await http(
            world.base, "GET", f"/api/v1/jobs/{world.parked['alice']}", key=world.users.alice
        )
        assert job.json()["job"]["state"] == "queued"


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
@pytest.mark.parametrize("caller", USERS)
async def test_ws_header_auth(world: World, caller: str, style: str) -> None:
    async with ws_connect(world.base, world.key(caller), style=style, auth_op=False) as ws:
        assert (await ws.ok("whoami"))["user"] == caller
        listed = await ws.ok("list", limit=10000)
        owners = {job["user"] for job in listed["jobs"]}
        assert owners == {caller} if caller in RESEARCHERS else owners >= {"alice", "bob"}


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
async def test_ws_upgrade_with_wrong_key_is_rejected(world: World, style: str) -> None:
    status, body = await ws_upgrade_refusal(world.base, auth_headers(WRONG_KEY, style))
    assert status == 401
    assert json.loads(body) == {"error": {"code": "unauthorized", "message": "invalid API key"}}
    # An upgrade with no key at all is accepted: the client may still send an ``auth`` op.
    async with ws_connect(world.base) as ws:
        reply = await ws.call("whoami")
        assert reply["error"]["code"] == "unauthorized"


# ---- events ---------------------------------------------------------------------------------


async def _events_until(ws: Ws, sub: int, job_id: int) -> list[dict[str, Any]]:
    """Job events of subscription ``sub`` up to the terminal event of ``job_id``."""
    got = []
    with trio.fail_after(15):
        while True:
            event = await ws.event()
            if event.get("ev") != "job" or event["sub"] != sub:
                continue
            got.append(event)
            job = event["job"]
            if job["id"] == job_id and job["state"] in ("succeeded", "failed"):
                return got


async def test_events_are_filtered_by_what_the_subscriber_may_read(world: World) -> None:
    users = world.users
    async with (
        ws_connect(world.base, users.admin) as admin,
        ws_connect(world.base, users.alice) as alice,
        ws_connect(world.base, users.bob) as bob,
        ws_connect(world.base, users.carol) as carol,
    ):
        subs = {
            name: (await ws.ok("subscribe"))["sub"]
            for name, ws in (("admin", admin), ("alice", alice), ("bob", bob), ("carol", carol))
        }
        async with HttpSession(world.base) as session:

            async def run(user: str) -> int:
                response = await session.request(
                    "POST",
                    "/api/v1/jobs",
                    key=users.keys[user],
                    json_body={"command": ["echo", f"{user}-event"]},
                )
                return int(response.json()["job"]["id"])

            admin_job, bob_job, alice_job = await run("admin"), await run("bob"), await run("alice")
            # Sentinels, one per subscriber, submitted after everything else has ended.
            for job_id in (admin_job, bob_job, alice_job):
                await until_job(session, users.admin, job_id, ("succeeded",))
            alice_end, bob_end = await run("alice"), await run("bob")
        seen = {
            "admin": await _events_until(admin, subs["admin"], bob_end),
            "carol": await _events_until(carol, subs["carol"], bob_end),
            "alice": await _events_until(alice, subs["alice"], alice_end),
            "bob": await _events_until(bob, subs["bob"], bob_end),
        }
    for name in ("alice", "bob"):
        assert {e["job"]["user"] for e in seen[name]} == {name}
    assert {e["job"]["id"] for e in seen["alice"]} >= {alice_job, alice_end}
    assert {e["job"]["id"] for e in seen["bob"]} >= {bob_job, bob_end}
    for name in ("admin", "carol"):
        ids = {e["job"]["id"] for e in seen[name]}
        assert ids >= {admin_job, bob_job, alice_job, alice_end}
        seqs = [e["seq"] for e in seen[name]]
        assert seqs == sorted(set(seqs))


async def test_replayed_events_are_filtered_too(world: World) -> None:
    """A researcher's ``since=0`` replays only their own history from the store."""
    async with ws_connect(world.base, world.users.bob) as bob:
        sub = (await bob.ok("subscribe", since=0))["sub"]
        events = await _events_until(bob, sub, world.done["bob"])
    assert {e["job"]["user"] for e in events} == {"bob"}
    assert world.blockers["bob"] in {e["job"]["id"] for e in events}


@pytest.mark.parametrize("logs", [False, True])
async def test_subscribing_to_another_users_job_is_not_found(world: World, logs: bool) -> None:
    job_id = world.done["alice"]
    async with ws_connect(world.base, world.users.bob) as bob:
        reply = await bob.call("subscribe", job_id=job_id, since=0, logs=logs)
        assert reply["ok"] is False
        assert reply["error"] == {"code": "not_found", "message": f"no job with id {job_id}"}
        assert await bob.quiet(0.2) == []
        assert (await bob.ok("whoami"))["user"] == "bob"


async def test_depends_on_cannot_probe_another_users_job(world: World) -> None:
    """A researcher's dependency on bob's job is refused exactly like one on a missing job."""
    for target in (world.blockers["bob"], 10**9):
        response = await http(
            world.base,
            "POST",
            "/api/v1/jobs",
            key=world.key("alice"),
            json_body={"command": ["/bin/true"], "depends_on": [target]},
        )
        assert response.status == 400, response.body
        assert response.error == {
            "code": "invalid_spec",
            "message": f"depends_on[0]: unknown job {target}",
            "field": "depends_on[0]",
        }
    # The admin may see bob's job, so may depend on it.
    response = await http(
        world.base,
        "POST",
        "/api/v1/jobs",
        key=world.key("admin"),
        json_body={"command": ["/bin/true"], "depends_on": [world.blockers["bob"]]},
    )
    assert response.status == 201, response.body
