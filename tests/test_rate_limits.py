"""Rate limits: the per-key token bucket, the ban of addresses that send wrong keys, and their
settings (``limits.*``), over HTTP, WebSocket, the client library and ``ml``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.gateway import (
    HttpSession,
    Users,
    http,
    make_server_config,
    serve,
    ws_connect,
    ws_upgrade_refusal,
)
from test_client_support import ml_env, run_ml

import fetchml
from fetchml import RateLimitedError
from fetchml.auth._actor import AuthActor
from fetchml.client import connect
from fetchml.errors import ConfigError
from fetchml.gateway._limits import AddressGuard, Limits, RateLimiter

# Small limits so a test reaches them at once and sees them lift within a second.
RATE = {"requests_per_s": 2, "burst": 5, "auth_failures": 1_000_000}
BAN = {"requests_per_s": 1e6, "burst": 1_000_000, "auth_failures": 3}
WHOAMI = "/api/v1/whoami"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def audit_summary(config: fetchml.Config) -> list[tuple[Any, ...]]:
    lines = config.audit_path.read_bytes().splitlines()
    entries = [json.loads(line) for line in lines]
    return [(e["action"], e["user"], e["outcome"], e["code"]) for e in entries]


async def rate_limited_total(base: str, kind: str) -> int:
    text = (await http(base, "GET", "/metrics")).body.decode()
    match = re.search(rf'(?m)^fetchml_rate_limited_total{{kind="{kind}"}} (\S+)$', text)
    assert match, text
    return int(float(match.group(1)))


# ---- the bookkeeping, on a fake clock -------------------------------------------------------


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, 5, clock=clock)
    assert [limiter.take("alice", "k1") for _ in range(5)] == [0.0] * 5
    assert limiter.take("alice", "k1") == pytest.approx(0.5)
    assert limiter.take("alice", "k1") == pytest.approx(0.5)  # a refusal uses up nothing
    # Other keys, of the same user or another, have buckets of their own.
    assert limiter.take("alice", "k2") == 0.0
    assert limiter.take("bob", "k1") == 0.0
    clock.now += 0.25
    assert limiter.take("alice", "k1") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.take("alice", "k1") == 0.0
    assert limiter.take("alice", "k1") == pytest.approx(0.5)
    # Idle for long: a full burst again, never more.
    clock.now += 3600
    assert [limiter.take("alice", "k1") for _ in range(5)] == [0.0] * 5
    assert limiter.take("alice", "k1") > 0


def test_idle_buckets_are_pruned() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, 10, clock=clock)
    for n in range(100):
        limiter.take(f"user{n}", "k")
    assert len(limiter) == 100
    clock.now += 61  # past the sweep interval, and every bucket has refilled
    limiter.take("alice", "k")  # a new key triggers the sweep
    assert len(limiter) == 1


def test_failed_keys_within_the_window_ban_the_address() -> None:
    clock = FakeClock()
    guard = AddressGuard(3, 10.0, 60.0, clock=clock)
    assert guard.banned_for("10.0.0.1") == 0.0
    assert [guard.failed("10.0.0.1") for _ in range(2)] == [False, False]
    assert guard.banned_for("10.0.0.1") == 0.0
    assert guard.failed("10.0.0.2") is False  # another address counts apart
    assert guard.failed("10.0.0.1") is True
    assert guard.banned_for("10.0.0.1") == pytest.approx(60.0)
    assert guard.banned_for("10.0.0.2") == 0.0
    clock.now += 20
    assert guard.failed("10.0.0.1") is False  # checks under way as the ban began: not counted
    assert guard.banned_for("10.0.0.1") == pytest.approx(40.0)
    clock.now += 40
    assert guard.banned_for("10.0.0.1") == 0.0
    # The ban wiped the count: it takes three new failures to ban again.
    assert [guard.failed("10.0.0.1") for _ in range(3)] == [False, False, True]


def test_failures_spread_wider_than_the_window_do_not_ban() -> None:
    clock = FakeClock()
    guard = AddressGuard(3, 10.0, 60.0, clock=clock)
    for _ in range(10):
        assert guard.failed("10.0.0.1") is False
        clock.now += 5.1
    assert guard.banned_for("10.0.0.1") == 0.0


def test_a_spray_of_addresses_stays_bounded() -> None:
    clock = FakeClock()
    guard = AddressGuard(2, 10.0, 60.0, clock=clock, max_addresses=100)
    guard.failed("10.0.0.1")
    guard.failed("10.0.0.1")
    for n in range(1000):
        guard.failed(f"10.1.{n // 256}.{n % 256}")
    assert len(guard) == 100
    # The least recently seen went first.
    assert guard.banned_for("10.0.0.1") == 0.0
    assert guard.failed("10.1.3.231") is True


def test_ipv6_addresses_of_one_64_share_a_ban() -> None:
    clock = FakeClock()
    guard = AddressGuard(3, 10.0, 60.0, clock=clock)
    assert guard.failed("2001:db8:1:2::1") is False
    assert guard.failed("2001:db8:1:2:ffff::9") is False
    assert guard.failed("2001:db8:1:2:abcd::7") is True  # the third from the same /64
    assert guard.banned_for("2001:db8:1:2::42") > 0
    assert guard.banned_for("2001:db8:1:3::1") == 0.0  # the next /64 is someone else
    assert guard.banned_for("::ffff:10.0.0.1") == guard.banned_for("10.0.0.1") == 0.0


def test_concurrent_key_checks_are_bounded_by_the_failures_left() -> None:
    clock = FakeClock()
    guard = AddressGuard(3, 10.0, 60.0, clock=clock)
    guard.failed("10.0.0.1")
    assert guard.begin_check("10.0.0.1", b"a")
    assert guard.begin_check("10.0.0.1", b"a")  # the same key shares its check
    assert guard.begin_check("10.0.0.1", b"b")
    assert not guard.begin_check("10.0.0.1", b"c")  # 1 failure + 2 under way = 3
    assert guard.begin_check("10.0.0.2", b"c")  # another address is not affected
    guard.end_check("10.0.0.1", b"b")
    assert guard.begin_check("10.0.0.1", b"c")
    clock.now += 10.1  # the failure leaves the window
    assert guard.begin_check("10.0.0.1", b"d")


def test_limits_settings_defaults_and_validation(tmp_path: Path) -> None:
    settings = fetchml.Config().limits
    assert settings.enabled is True
    assert (settings.requests_per_s, settings.burst) == (50.0, 500)
    assert (settings.auth_failures, settings.auth_failure_window_s, settings.ban_s) == (10, 60, 300)
    assert Limits(fetchml.make_config(limits={"enabled": False}).limits).keys is None
    assert Limits(None).addresses is None
    with pytest.raises(ConfigError, match=r"limits\.burts"):
        fetchml.make_config(limits={"burts": 3})
    with pytest.raises(ConfigError, match=r"limits\.burst"):
        fetchml.make_config(limits={"burst": 0})
    path = tmp_path / "server.yaml"
    path.write_text("limits:\n  requests_per_s: 5\n  ban_seconds: 3\n")
    with pytest.raises(ConfigError, match=r"server\.yaml: limits\.ban_seconds"):
        fetchml.load_config(path)


# ---- per key, over HTTP and WebSocket -------------------------------------------------------


async def until_refused(session: HttpSession, key: str, *, at_most: int = 20) -> tuple[int, Any]:
    """Send whoami until the first refusal: (requests that passed, the refusal)."""
    for passed in range(at_most):
        response = await session.request("GET", WHOAMI, key=key)
        if response.status != 200:
            return passed, response
    raise AssertionError(f"no refusal in {at_most} requests")


async def test_http_gets_429_after_the_burst_and_recovers(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users, limits=RATE)
    async with serve(config) as base, HttpSession(base) as s:
        passed, refused = await until_refused(s, users.alice)
        assert 5 <= passed <= 7  # the burst (and what refilled meanwhile)
        assert refused.status == 429
        assert refused.error["code"] == "rate_limited"
        assert "too many requests with this API key" in refused.error["message"]
        retry_after = refused.error["retry_after"]
        assert 0 < retry_after <= 0.5
        assert refused.headers["retry-after"] == "1"  # whole seconds, rounded up
        # Another user's key is not affected, nor are the endpoints that need no key.
        assert (await s.request("GET", WHOAMI, key=users.bob)).status == 200
        for _ in range(20):
            assert (await s.request("GET", "/health")).status == 200
        assert await rate_limited_total(base, "key") == 1
        # Wait as told: the key works again.
        await trio.sleep(retry_after)
        assert (await s.request("GET", WHOAMI, key=users.alice)).status == 200
    assert ("GET /api/v1/whoami", "alice", "refused", "rate_limited") in audit_summary(config)


async def test_ws_op_gets_rate_limited_and_the_connection_lives_on(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users, limits=RATE)
    async with serve(config) as base, ws_connect(base, users.alice) as ws:  # auth op: free
        ids = [ws.next_id() for _ in range(10)]
        for rid in ids:  # pipelined: all arrive before the bucket refills much
            await ws.send({"op": "whoami", "id": rid})
        replies = [await ws.reply(rid) for rid in ids]
        passed = [r for r in replies if r["ok"]]
        refused = [r for r in replies if not r["ok"]]
        assert 5 <= len(passed) <= 7
        assert refused, replies
        error = refused[0]["error"]
        assert error["code"] == "rate_limited"
        assert 0 < error["retry_after"] <= 0.5
        # HTTP and WebSocket share the key's budget.
        assert (await http(base, "GET", WHOAMI, key=users.alice)).status == 429
        await trio.sleep(0.5)
        assert (await ws.ok("whoami"))["user"] == "alice"
    summary = audit_summary(config)
    assert summary.count(("whoami", "alice", "refused", "rate_limited")) == len(refused)


async def test_client_library_waits_out_a_short_limit(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users, limits=RATE)
    async with serve(config) as base, connect(base, users.bob) as client:
        with trio.fail_after(10):
            started = trio.current_time()
            for _ in range(9):
                assert (await client.whoami()).user == "bob"
            # The burst passes at once; the rest at the key's rate, each after its wait.
            assert (
                trio.current_time() - started >= 0.9 * (9 - RATE["burst"]) / RATE["requests_per_s"]
            )
    refused = [e for e in audit_summary(config) if e[3] == "rate_limited"]
    assert refused, "the client never hit the limit: the test proves nothing"


async def test_client_library_raises_rate_limited_error(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users, limits=RATE)
    async with serve(config) as base, connect(base, users.bob, rate_limit_wait_s=0) as client:

        async def hammer() -> None:
            for _ in range(20):
                await client.whoami()

        with pytest.raises(RateLimitedError) as refused:
            await hammer()
        assert refused.value.code == "rate_limited"
        assert 0 < refused.value.retry_after_s <= 0.5
        await trio.sleep(refused.value.retry_after_s)
        assert (await client.whoami()).user == "bob"


async def test_limits_can_be_turned_off(tmp_path: Path) -> None:
    users = Users()
    off = {"enabled": False, "requests_per_s": 1, "burst": 1, "auth_failures": 1}
    config = make_server_config(tmp_path, users, limits=off)
    async with serve(config) as base, HttpSession(base) as s:
        for _ in range(3):
            assert (await s.request("GET", WHOAMI, key="wrong-key")).status == 401
        for _ in range(20):
            assert (await s.request("GET", WHOAMI, key=users.alice)).status == 200
        async with ws_connect(base, users.bob) as ws:
            for _ in range(10):
                await ws.ok("whoami")
        assert await rate_limited_total(base, "key") == 0


# ---- the ban --------------------------------------------------------------------------------


async def test_wrong_keys_ban_the_address_until_the_ban_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = Users()
    config = make_server_config(tmp_path, users, limits={**BAN, "ban_s": 1.0})
    checks: list[bytes] = []
    checkpw = AuthActor._checkpw

    def counted(self: AuthActor, key: bytes, hashed: bytes) -> bool:
        checks.append(key)
        return checkpw(self, key, hashed)

    monkeypatch.setattr(AuthActor, "_checkpw", counted)
    async with serve(config) as base, HttpSession(base) as s:
        for _ in range(5):  # no key at all is no guess: not counted
            assert (await s.request("GET", WHOAMI)).status == 401
        for n in range(3):
            assert (await s.request("GET", WHOAMI, key=f"wrong-key-{n}")).status == 401
        checks.clear()
        # Banned: even a valid key is refused before it is looked at.
        refused = await s.request("GET", WHOAMI, key=users.carol)
        assert refused.status == 429
        assert refused.error["code"] == "rate_limited"
        assert "temporarily banned" in refused.error["message"]
        assert 0 < refused.error["retry_after"] <= 1.0
        assert refused.headers["retry-after"] == "1"
        status, body = await ws_upgrade_refusal(base, [("Authorization", f"Bearer {users.carol}")])
        assert status == 429
        assert json.loads(body)["error"]["code"] == "rate_limited"
        async with ws_connect(base) as ws:
            reply = await ws.call("auth", key=users.carol)
            assert reply["error"]["code"] == "rate_limited"
            assert reply["error"]["retry_after"] > 0
            code, _ = await ws.closed(within=5)
            assert code == 4001  # authentication failed
        assert checks == []  # no bcrypt work for a banned address
        assert (await s.request("GET", "/health")).status == 200
        assert await rate_limited_total(base, "ban") == 3
        await trio.sleep(refused.error["retry_after"])
        assert (await s.request("GET", WHOAMI, key=users.carol)).status == 200
    # Every refusal is audited: the 401s (missing and wrong keys), the ban, and the 429s.
    summary = audit_summary(config)
    ban = summary.index(("ban", None, "refused", "rate_limited"))
    assert summary[ban - 8 : ban] == [("auth", None, "refused", "unauthorized")] * 8
    assert summary[ban + 1 :] == [("auth", None, "refused", "rate_limited")] * 3


async def test_concurrent_wrong_keys_cost_no_more_checks_than_the_ban_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = Users()
    config = make_server_config(tmp_path, users, limits={**BAN, "ban_s": 60.0})
    checked: set[bytes] = set()
    checkpw = AuthActor._checkpw

    def counted(self: AuthActor, key: bytes, hashed: bytes) -> bool:
        checked.add(key)
        return checkpw(self, key, hashed)

    monkeypatch.setattr(AuthActor, "_checkpw", counted)
    statuses: list[int] = []
    async with serve(config) as base:

        async def guess(n: int) -> None:
            statuses.append((await http(base, "GET", WHOAMI, key=f"guess-{n}")).status)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for n in range(30):
                    nursery.start_soon(guess, n)
    assert len(checked) <= BAN["auth_failures"]  # bcrypt ran for at most that many guesses
    assert statuses.count(401) == len(checked)
    assert statuses.count(429) == 30 - len(checked)


async def test_a_banned_address_gets_a_clear_message_from_ml(tmp_path: Path) -> None:
    users = Users()
    config = make_server_config(tmp_path, users, limits={**BAN, "ban_s": 60.0})
    async with serve(config) as base:
        # Wrong keys by an auth op and on the upgrade count alike.
        async with ws_connect(base) as ws:
            assert (await ws.call("auth", key="wrong-key-0"))["ok"] is False
            assert (await ws.closed())[0] == 4001  # authentication failed
        for n in (1, 2):
            with pytest.raises(fetchml.AuthError):
                async with connect(base, f"wrong-key-{n}"):
                    pass
        with pytest.raises(RateLimitedError) as refused:
            async with connect(base, users.alice):
                pass
        assert 50 < refused.value.retry_after_s <= 60
        env = ml_env(base, None, tmp_path, FETCHML_API_KEY=users.alice)
        result = await run_ml("whoami", env=env)
    assert result.rc == 1, result
    match = re.match(r"ml: error: rate limited: retry in (\d+) s \(this address is", result.err)
    assert match, result.err
    assert 50 < int(match.group(1)) <= 60
