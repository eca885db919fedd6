"""Benchmark of the auth actor: cost of a cached authenticate against a bare-minimum baseline.

Run: ``python bench/bench_auth.py``.  Prints the median per-call cost (µs) of
``AuthActor.authenticate`` on a cached key, of the sync ``authenticate_cached``, and, in the same
run, of a bare dict lookup + ``hmac.compare_digest`` (also with the SHA-256 of the key that any
cache that keeps no raw keys must compute), the ratios, and the one-time bcrypt cost at rounds 12
that the cache saves on every later request.
"""

from __future__ import annotations

import hashlib
import hmac
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

# Lets the script run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fetchml.auth import AuthActor, generate_key, hash_key, parse_auth_config

CALLS = 20_000
RUNS = 7
BENCH_ROUNDS = 4  # the cache path never touches bcrypt, so a cheap hash keeps set-up fast


def median_us(run_once: Callable[[], float]) -> float:
    """Return the median over ``RUNS`` of ``run_once()``'s per-call seconds, in µs."""
    return statistics.median(run_once() for _ in range(RUNS)) * 1e6


def baseline(key_id: str, key: str) -> float:
    """Per-call seconds of a dict lookup plus a constant-time digest comparison."""
    stored = {key_id: hashlib.sha256(key.encode()).digest()}
    presented = hashlib.sha256(key.encode()).digest()
    compare, lookup = hmac.compare_digest, stored.get
    start = time.perf_counter()
    for _ in range(CALLS):
        digest = lookup(key_id)
        if digest is None or not compare(digest, presented):
            raise AssertionError("baseline lookup failed")
    return (time.perf_counter() - start) / CALLS


def baseline_with_digest(key_id: str, key: str) -> float:
    """Per-call seconds of the baseline plus hashing the presented key, as a cache must."""
    stored = {key_id: hashlib.sha256(key.encode()).digest()}
    compare, lookup, sha256 = hmac.compare_digest, stored.get, hashlib.sha256
    start = time.perf_counter()
    for _ in range(CALLS):
        digest = lookup(key_id)
        if digest is None or not compare(digest, sha256(key.encode()).digest()):
            raise AssertionError("baseline lookup failed")
    return (time.perf_counter() - start) / CALLS


def cached_sync(actor: AuthActor, key: str) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        actor.authenticate_cached(key)
    return (time.perf_counter() - start) / CALLS


async def cached_async(actor: AuthActor, key: str) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        await actor.authenticate(key)
    return (time.perf_counter() - start) / CALLS


async def measure_async(actor: AuthActor, key: str) -> float:
    await actor.authenticate(key)  # warm the cache: one bcrypt check
    return statistics.median([await cached_async(actor, key) for _ in range(RUNS)]) * 1e6


def bcrypt_cost(rounds: int) -> tuple[float, float]:
    """Return (hash, verify) milliseconds for one key at ``rounds``."""
    _, key = generate_key()
    start = time.perf_counter()
    hashed = hash_key(key, rounds)
    hashing = time.perf_counter() - start
    actor = AuthActor(parse_auth_config({"api_keys": {"u": {"hash": hashed}}}, source="bench"))
    start = time.perf_counter()
    trio.run(actor.authenticate, key)
    return hashing * 1e3, (time.perf_counter() - start) * 1e3


def main() -> None:
    key_id, key = generate_key()
    config = parse_auth_config(
        {"api_keys": {"u": {"hash": hash_key(key, BENCH_ROUNDS), "key_id": key_id}}},
        source="bench",
    )
    actor = AuthActor(config)
    async_us = trio.run(measure_async, actor, key)
    sync_us = median_us(lambda: cached_sync(actor, key))
    base_us = median_us(lambda: baseline(key_id, key))
    digest_us = median_us(lambda: baseline_with_digest(key_id, key))
    hash_ms, verify_ms = bcrypt_cost(12)
    print(f"python {sys.version.split()[0]}, {CALLS} calls x {RUNS} runs, medians")
    print(f"cached authenticate (async):     {async_us:7.2f} us/call")
    print(f"authenticate_cached (sync):      {sync_us:7.2f} us/call")
    print(f"baseline dict get + compare:     {base_us:7.2f} us/call")
    print(f"baseline + sha256 of the key:    {digest_us:7.2f} us/call")
    print(f"ratio async / baseline:          {async_us / base_us:7.1f}x")
    print(f"ratio sync / baseline:           {sync_us / base_us:7.1f}x")
    print(f"bcrypt rounds 12, hash once:     {hash_ms:7.1f} ms")
    print(f"first authenticate, rounds 12:   {verify_ms:7.1f} ms (one bcrypt check in a thread)")


if __name__ == "__main__":
    main()
