"""The store's schema and reopening, and configuration from keywords and YAML files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.core import open_sched

import fetchml
from fetchml import ConfigError, JobState, StoreError, load_config, make_config
from fetchml.store import DB_NAME, Store
from fetchml.store._schema import SCHEMA_VERSION


def _pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


async def test_schema_version_wal_and_reopen(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": ["true"], "name": "first"}, user="a")
            done = await scheduler.wait(job.id)
        db = data_dir / DB_NAME
        assert _pragma(db, "user_version") == SCHEMA_VERSION >= 1
        assert _pragma(db, "journal_mode") == "wal"
        async with open_sched(data_dir) as scheduler:
            assert await scheduler.get(job.id) == done
            second = await scheduler.submit({"command": ["true"]}, user="a")
            assert second.id == job.id + 1
            assert (await scheduler.wait(second.id)).state is JobState.SUCCEEDED
        assert _pragma(db, "user_version") == SCHEMA_VERSION


async def test_store_is_durable_by_default(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        await store.aclose()
    store = await Store.open(tmp_path, synchronous="normal")
    try:
        assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    finally:
        await store.aclose()


async def test_newer_schema_is_refused(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir):
            pass
        db = data_dir / DB_NAME
        with sqlite3.connect(db) as conn:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        with pytest.raises(StoreError) as info:
            async with open_sched(data_dir):
                pytest.fail("opened a store from the future")
        assert "newer" in info.value.message
        assert str(SCHEMA_VERSION + 1) in info.value.message
        # Refusing changed nothing.
        assert _pragma(db, "user_version") == SCHEMA_VERSION + 1


async def test_corrupt_store_is_a_store_error(data_dir: Path) -> None:
    await trio.Path(data_dir).mkdir(parents=True)
    await trio.Path(data_dir / DB_NAME).write_bytes(b"this is not a database" * 100)
    with trio.fail_after(10), pytest.raises(StoreError):
        async with open_sched(data_dir):
            pytest.fail("opened a corrupt store")


async def test_store_assigns_ids_and_seqs_from_what_is_stored(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            jobs = [await scheduler.submit({"command": ["true"]}, user="a") for _ in range(3)]
            for job in jobs:
                await scheduler.wait(job.id)
            last = (await scheduler.status()).last_seq
    store = await Store.open(data_dir)
    try:
        assert store.next_job_id == 4
        assert store.last_seq == last == 9
        events = await store.events_after(0)
        assert [e.seq for e in events] == list(range(1, 10))
        assert [e.seq for e in await store.events_after(3, job_id=2)] == [
            e.seq for e in events if e.job.id == 2 and e.seq > 3
        ]
        assert await store.load_active() == []
        assert await store.states_of([1, 2, 99]) == {1: JobState.SUCCEEDED, 2: JobState.SUCCEEDED}
    finally:
        await store.aclose()
        await store.aclose()  # twice is fine


# --- configuration ---------------------------------------------------------------------------


def test_make_config_defaults_and_overrides() -> None:
    config = make_config()
    assert config.server.port == 9103
    assert config.server.host == "127.0.0.1"
    assert config.scheduler.gpus == "auto"
    assert config.store.synchronous == "full"
    config = make_config(data_dir="x", gpus=[0, 1], max_running_per_user=2, kill_grace_s=0.5)
    assert config.data_dir == "x"
    assert config.scheduler.gpus == [0, 1]
    assert config.scheduler.max_running_per_user == 2
    assert config.executor.kill_grace_s == 0.5


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"cpus": -1}, "scheduler.cpus"),
        ({"cpus": "many"}, "scheduler.cpus"),
        ({"gpus": "some"}, "scheduler.gpus"),
        ({"gpus": [-1]}, "scheduler.gpus"),
        ({"max_running_per_user": 0}, "scheduler.max_running_per_user"),
        ({"kill_grace_s": 0}, "executor.kill_grace_s"),
        ({"backend": "slurm"}, "executor.backend"),
        ({"synchronous": "off"}, "store.synchronous"),
        ({"port": 70000}, "server.port"),
        ({"data_dir": 5}, "data_dir"),
    ],
    ids=lambda v: str(v),
)
def test_make_config_errors_name_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(**overrides)
    assert key in info.value.message


def test_config_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(
        "data_dir: /srv/fetchml\n"
        "scheduler:\n  cpus: 3\n  gpus: [0, 1]\n  max_running_per_user: 2\n"
        "executor:\n  kill_grace_s: 1.5\n"
        "store:\n  synchronous: normal\n"
        "server:\n  port: 9200\n"
    )
    config = load_config(path)
    assert config.data_dir == "/srv/fetchml"
    assert config.scheduler.cpus == 3
    assert config.scheduler.gpus == [0, 1]
    assert config.executor.kill_grace_s == 1.5
    assert config.store.synchronous == "normal"
    assert config.server.port == 9200
    # Keyword overrides apply on top of the file.
    assert make_config(path, cpus=1).scheduler.cpus == 1
    assert make_config(path, cpus=1).scheduler.gpus == [0, 1]
    assert load_config(_write(tmp_path / "empty.yaml", "")) == make_config()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("scheduler:\n  bogus: 1\n", ["scheduler.bogus", "unknown"]),
        ("bogus: 1\n", ["bogus"]),
        ("scheduler:\n  cpus: -2\n", ["scheduler.cpus"]),
        ("executor:\n  kill_grace_s: soon\n", ["executor.kill_grace_s"]),
        ("scheduler: [1, 2]\n", ["scheduler"]),
        ("scheduler:\n  cpus: [\n", ["invalid YAML"]),
        ("key: value: other\n", ["invalid YAML"]),
        ("- just\n- a list\n", ["Expected `object`"]),
    ],
    ids=[
        "unknown-nested",
        "unknown-top",
        "bad-value",
        "bad-type",
        "bad-section",
        "yaml-1",
        "yaml-2",
        "not-a-map",
    ],
)
def test_load_config_errors_name_file_and_key(tmp_path: Path, text: str, words: list[str]) -> None:
    path = _write(tmp_path / "server.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in info.value.message
    for word in words:
        assert word in info.value.message


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in info.value.message
    assert "cannot read" in info.value.message


async def test_open_scheduler_from_a_yaml_file(tmp_path: Path, data_dir: Path) -> None:
    path = _write(
        tmp_path / "server.yaml",
        f"data_dir: {data_dir}\nscheduler:\n  cpus: 3\n  memory_mb: 500\n  gpus: [0, 1]\n",
    )
    with trio.fail_after(10):
        async with fetchml.open_scheduler(path) as scheduler:
            status = await scheduler.status()
            assert status.cpus_total == 3
            assert status.memory_mb_total == 500
            assert status.gpus_total == [0, 1]
            job = await scheduler.submit({"command": ["true"]}, user="a")
            assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
        async with fetchml.open_scheduler(path, gpus=[3]) as scheduler:
            assert (await scheduler.status()).gpus_total == [3]
    assert (data_dir / DB_NAME).exists()


async def test_open_scheduler_takes_paths_as_paths(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with fetchml.open_scheduler(data_dir=data_dir, cpus=1) as scheduler:
            job = await scheduler.submit({"command": ["true"]}, user="a")
            assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
    assert (data_dir / DB_NAME).exists()


async def test_open_scheduler_refuses_bad_settings(data_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        async with fetchml.open_scheduler(data_dir=str(data_dir), bogus=1):
            pytest.fail("started with a bad setting")
    assert "bogus" in info.value.message
    assert not await trio.Path(data_dir).exists()  # nothing created
