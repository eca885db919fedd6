"""Tests of fetchml.auth: permission resolution, keys and the auth actor (its caches above all)."""

from __future__ import annotations

import base64
import statistics
import threading
import time
from typing import Any

import bcrypt
import msgspec
import pytest
import trio
import trio.testing

from fetchml.auth import (
    ALL_PERMISSIONS,
    ANONYMOUS,
    DATASETS_WRITE,
    JOBS_CREATE,
    JOBS_READ,
    JOBS_READ_ALL,
    JOBS_UPDATE,
    JOBS_UPDATE_ALL,
    STATUS_READ,
    AuthActor,
    AuthConfig,
    Principal,
    generate_key,
    hash_key,
    key_id_of,
    parse_auth_config,
)
from fetchml.errors import AuthError, PermissionDeniedError

ROUNDS = 4
HAND_KEY = "correct horse battery staple"
SRC = "auth.yaml"


def fast_hash(key: str) -> str:
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(ROUNDS)).decode()


GOOD = fast_hash("x")


@pytest.fixture(scope="module")
def alice_key() -> tuple[str, str]:
    return generate_key()


@pytest.fixture(scope="module")
def config_data(alice_key: tuple[str, str]) -> dict[str, Any]:
    key_id, key = alice_key
    return {
        "enabled": True,
        "api_keys": {
            "alice": {"hash": hash_key(key, ROUNDS), "key_id": key_id, "roles": ["researcher"]},
            "bob": {"hash": fast_hash(HAND_KEY), "roles": ["analyst"]},
            "root": {"hash": fast_hash("root-key"), "admin": True},
            "dora": {
                "hash": fast_hash("dora-key"),
                "roles": ["ops"],
                "permissions": {JOBS_READ_ALL: True, STATUS_READ: False},
            },
        },
        "roles": {"ops": [STATUS_READ, JOBS_UPDATE_ALL]},
    }


@pytest.fixture(scope="module")
def config(config_data: dict[str, Any]) -> AuthConfig:
    return parse_auth_config(config_data, source=SRC)


# ---- config parsing -------------------------------------------------------------------------


def test_parse_happy_path(config: AuthConfig, alice_key: tuple[str, str]) -> None:
    assert config.enabled is True
    assert set(config.api_keys) == {"alice", "bob", "root", "dora"}
    assert config.api_keys["alice"].keys[0].key_id == alice_key[0]
    assert config.api_keys["bob"].keys[0].key_id is None
    assert config.api_keys["alice"].roles == ("researcher",)
    assert config.roles == {"ops": (STATUS_READ, JOBS_UPDATE_ALL)}


# ---- roles and permissions --------------------------------------------------------------------


def test_builtin_roles_resolve(config: AuthConfig) -> None:
    alice = config.principal_for("alice")
    assert alice.permissions == {JOBS_CREATE, JOBS_READ, JOBS_UPDATE, STATUS_READ, DATASETS_WRITE}
    assert alice.admin is False
    bob = config.principal_for("bob")
    assert bob.permissions == {JOBS_READ_ALL, STATUS_READ}
    root = config.principal_for("root")
    assert root.admin is True
    assert root.permissions == ALL_PERMISSIONS


def test_admin_role_means_admin() -> None:
    config = parse_auth_config({"api_keys": {"a": {"hash": GOOD, "roles": ["admin"]}}}, source=SRC)
    principal = config.principal_for("a")
    assert principal.admin is True
    assert principal.permissions == ALL_PERMISSIONS


def test_custom_role_and_extra_permissions(config: AuthConfig) -> None:
    dora = config.principal_for("dora")
    # ops gives status:read + jobs:update:all; extras add jobs:read:all and remove status:read.
    assert dora.permissions == {JOBS_UPDATE_ALL, JOBS_READ_ALL}
    assert dora.roles == ("ops",)


def test_user_without_roles_has_only_extras() -> None:
    config = parse_auth_config(
        {"api_keys": {"a": {"hash": GOOD, "permissions": {STATUS_READ: True}}}}, source=SRC
    )
    assert config.principal_for("a").permissions == {STATUS_READ}


def test_require_names_the_permission(config: AuthConfig) -> None:
    bob = config.principal_for("bob")
    assert bob.can(STATUS_READ)
    assert not bob.can(JOBS_CREATE)
    bob.require(STATUS_READ)
    with pytest.raises(PermissionDeniedError) as info:
        bob.require(JOBS_CREATE)
    assert info.value.message == "missing permission jobs:create"
    assert info.value.permission == JOBS_CREATE
    assert info.value.status == 403


def test_job_read_rules(config: AuthConfig) -> None:
    alice, bob = config.principal_for("alice"), config.principal_for("bob")
    assert alice.can_read_job("alice")
    assert not alice.can_read_job("bob")
    assert bob.can_read_job("alice")
    assert bob.can_read_job("bob")
    alice.require_read_job("alice")
    with pytest.raises(PermissionDeniedError, match="you can only read your own jobs"):
        alice.require_read_job("bob")
    nobody = Principal(user="n", roles=(), permissions=frozenset(), admin=False)
    with pytest.raises(PermissionDeniedError) as info:
        nobody.require_read_job("n")
    assert info.value.message == "missing permission jobs:read"


def test_job_cancel_rules(config: AuthConfig) -> None:
    alice, bob, root = (config.principal_for(u) for u in ("alice", "bob", "root"))
    dora = config.principal_for("dora")
    assert alice.can_cancel_job("alice")
    assert not alice.can_cancel_job("bob")
    assert root.can_cancel_job("alice")
    assert dora.can_cancel_job("alice")  # jobs:update:all alone covers everyone's jobs
    assert not bob.can_cancel_job("bob")
    alice.require_cancel_job("alice")
    with pytest.raises(PermissionDeniedError) as info:
        alice.require_cancel_job("bob")
    assert info.value.message == "you can only cancel your own jobs"
    assert info.value.permission == JOBS_UPDATE_ALL
    with pytest.raises(PermissionDeniedError) as info:
        bob.require_cancel_job("bob")
    assert info.value.message == "missing permission jobs:update"
    assert info.value.permission == JOBS_UPDATE


def test_principal_round_trips_through_msgpack(config: AuthConfig) -> None:
    principal = config.principal_for("dora")
    data = msgspec.msgpack.encode(principal)
    assert msgspec.msgpack.decode(data, type=Principal) == principal


# ---- keys ---------------------------------------------------------------------------------------


def test_generated_key_format_and_entropy() -> None:
    pairs = [generate_key() for _ in range(500)]
    for key_id, key in pairs:
        assert key.startswith(f"fml_{key_id}_")
        assert len(key_id) == 12
        assert set(key_id) <= set("abcdefghijklmnopqrstuvwxyz234567")
        secret = key[len("fml_") + 13 :]
        assert len(base64.urlsafe_b64decode(secret + "=")) >= 32
        assert key_id_of(key) == key_id
        assert len(key.encode()) <= 72
    assert len({key for _, key in pairs}) == len(pairs)
    assert len({key_id for key_id, _ in pairs}) == len(pairs)
    # Every key-id character position takes many values: not a fixed or counter-like id.
    for position in range(12):
        assert len({key_id[position] for key_id, _ in pairs}) > 20


@pytest.mark.parametrize(
    "key",
    ["", "fml_", "fml_short_x", "fml_ABCDEFGHIJKL_secret", "fml_abcdefghijkl-secret", HAND_KEY],
)
def test_key_id_of_other_strings(key: str) -> None:
    assert key_id_of(key) is None


def test_hash_key_verifies() -> None:
    _, key = generate_key()
    hashed = hash_key(key, ROUNDS)
    assert hashed.startswith("$2b$04$")
    assert bcrypt.checkpw(key.encode(), hashed.encode())
    assert not bcrypt.checkpw(b"other", hashed.encode())


@pytest.mark.parametrize(("key", "rounds"), [("", ROUNDS), ("x" * 73, ROUNDS), ("k", 3), ("k", 17)])
def test_hash_key_rejects(key: str, rounds: int) -> None:
    with pytest.raises(ValueError, match=r"empty|72 bytes|rounds"):
        hash_key(key, rounds)


# ---- the auth actor -----------------------------------------------------------------------------


class CountingActor(AuthActor):
    """Counts real bcrypt comparisons; can hold them at a gate to widen race windows."""

    def __init__(self, config: AuthConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.checks = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def _checkpw(self, key: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.checks += 1
        self.gate.wait(timeout=10)
        return super()._checkpw(key, hashed)


async def test_authenticate_our_key_checks_one_hash(
    config: AuthConfig, alice_key: tuple[str, str]
) -> None:
    actor = CountingActor(config)
    with trio.fail_after(10):
        principal = await actor.authenticate(alice_key[1])
    assert principal == config.principal_for("alice", config.api_keys["alice"].keys[0])
    assert actor.checks == 1  # found by key id, though three hashes have no key id


async def test_authenticate_hand_hashed_key(config: AuthConfig) -> None:
    actor = CountingActor(config)
    with trio.fail_after(10):
        principal = await actor.authenticate(HAND_KEY)
    assert principal.user == "bob"
    assert actor.checks == 1  # bob's is the first entry without a key id
    with trio.fail_after(10), pytest.raises(AuthError):
        await actor.authenticate(HAND_KEY + "!")
    assert actor.checks == 1 + 3  # the three entries without a key id; never alice's


async def test_wrong_and_empty_keys(config: AuthConfig, alice_key: tuple[str, str]) -> None:
    actor = AuthActor(config)
    key_id = alice_key[0]
    wrong_secret = f"fml_{key_id}_{generate_key()[1][17:]}"
    with trio.fail_after(10):
        for bad in (wrong_secret, "not a key", generate_key()[1], "x" * 500):
            with pytest.raises(AuthError) as info:
                await actor.authenticate(bad)
            assert info.value.message == "invalid API key"
            assert info.value.status == 401
        with pytest.raises(AuthError, match="missing API key"):
            await actor.authenticate("")


async def test_unknown_key_id_without_hand_entries_costs_no_bcrypt(
    alice_key: tuple[str, str],
) -> None:
    key_id, key = alice_key
    config = parse_auth_config(
        {"api_keys": {"alice": {"hash": hash_key(key, ROUNDS), "key_id": key_id}}}, source=SRC
    )
    actor = CountingActor(config)
    with trio.fail_after(10), pytest.raises(AuthError):
        await actor.authenticate(generate_key()[1])
    assert actor.checks == 0
    assert actor.verifications == 0


async def test_cache_hit_path(config: AuthConfig, alice_key: tuple[str, str]) -> None:
    actor = CountingActor(config)
    key = alice_key[1]
    assert actor.authenticate_cached(key) is None
    with trio.fail_after(10):
        first = await actor.authenticate(key)
        for _ in range(5):
            assert await actor.authenticate(key) is first
    assert actor.authenticate_cached(key) is first
    assert actor.checks == 1
    assert actor.verifications == 1
    # Raw keys are never kept: the cache is keyed by key id (or digest), never by the key.
    assert key not in repr(vars(actor))
    assert all(slot not in (key, key.encode()) for slot in actor._verified)


async def test_cached_authenticate_is_fast(config: AuthConfig, alice_key: tuple[str, str]) -> None:
    actor = AuthActor(config)
    key = alice_key[1]
    with trio.fail_after(10):
        await actor.authenticate(key)
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(2000):
                await actor.authenticate(key)
            samples.append((time.perf_counter() - start) / 2000)
    assert statistics.median(samples) < 50e-6


async def test_concurrent_first_requests_share_one_bcrypt(
    config: AuthConfig, alice_key: tuple[str, str]
) -> None:
    actor = CountingActor(config)
    results: list[Principal] = []

    async def one() -> None:
        results.append(await actor.authenticate(alice_key[1]))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(25):
                nursery.start_soon(one)
    assert len(results) == 25
    assert all(
        r == config.principal_for("alice", config.api_keys["alice"].keys[0]) for r in results
    )
    assert actor.checks == 1
    assert actor.verifications == 1


async def test_concurrent_bad_key_shares_one_bcrypt(
    config: AuthConfig, alice_key: tuple[str, str]
) -> None:
    actor = CountingActor(config)
    bad = f"fml_{alice_key[0]}_{'A' * 43}"
    failures: list[str] = []

    async def one() -> None:
        try:
            await actor.authenticate(bad)
        except AuthError as exc:
            failures.append(exc.message)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(25):
                nursery.start_soon(one)
    assert failures == ["invalid API key"] * 25
    assert actor.checks == 1


async def test_rejected_keys_are_remembered_briefly(config: AuthConfig) -> None:
    actor = CountingActor(config, rejected_cache_size=2)
    with trio.fail_after(10):
        for _ in range(3):
            with pytest.raises(AuthError):
                await actor.authenticate("bad-1")
        assert actor.verifications == 1
        with pytest.raises(AuthError, match="invalid API key"):
            actor.authenticate_cached("bad-1")
        for bad in ("bad-2", "bad-3"):  # the LRU holds two: bad-1 is evicted
            with pytest.raises(AuthError):
                await actor.authenticate(bad)
        assert actor.authenticate_cached("bad-1") is None
        assert actor.verifications == 3


async def test_rejection_expires(config: AuthConfig) -> None:
    actor = AuthActor(config, rejected_ttl_s=0.0)
    with trio.fail_after(10):
        for _ in range(2):
            with pytest.raises(AuthError):
                await actor.authenticate("bad")
    assert actor.verifications == 2


async def test_waiter_takes_over_when_the_verifier_is_cancelled(
    config: AuthConfig, alice_key: tuple[str, str]
) -> None:
    actor = CountingActor(config, bcrypt_threads=1)
    actor.gate.clear()  # the one worker thread blocks inside bcrypt until the gate opens
    leader_scope = trio.CancelScope()
    got: list[Principal] = []

    async def leader() -> None:
        with leader_scope:
            await actor.authenticate(alice_key[1])

    async def follower() -> None:
        got.append(await actor.authenticate(alice_key[1]))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            try:
                nursery.start_soon(_expect_auth_error, actor, HAND_KEY + "-wrong")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(leader)  # waits for the busy thread's limiter token
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(follower)  # waits on the leader's pending check
                await trio.testing.wait_all_tasks_blocked()
                leader_scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
            finally:
                actor.gate.set()
    assert leader_scope.cancelled_caught
    assert got == [config.principal_for("alice", config.api_keys["alice"].keys[0])]
    assert actor.verifications == 2  # the wrong key's, then the follower's own
    assert actor.checks == 3 + 1


async def _expect_auth_error(actor: AuthActor, key: str) -> None:
    with pytest.raises(AuthError):
        await actor.authenticate(key)


async def test_disabled_auth_is_anonymous_admin(config_data: dict[str, Any]) -> None:
    config = parse_auth_config({**config_data, "enabled": False}, source=SRC)
    actor = AuthActor(config)
    assert await actor.authenticate("") is ANONYMOUS
    assert await actor.authenticate("anything") is ANONYMOUS
    assert actor.authenticate_cached("") is ANONYMOUS
    assert ANONYMOUS.user == "anonymous"
    assert ANONYMOUS.admin
    assert ANONYMOUS.permissions == ALL_PERMISSIONS


async def test_run_starts_and_stops_on_cancel(config: AuthConfig) -> None:
    actor = AuthActor(config)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            nursery.cancel_scope.cancel()
