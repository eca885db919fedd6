"""Live metric points: ``subscribe`` with ``metrics: true`` delivers what a running job logs,
several points per event, as a suffix of the stored series; with the job's visibility; a slow
watcher is dropped without holding anyone up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.gateway import (
    HIGH_LIMITS,
    HttpSession,
    Users,
    make_server_config,
    serve,
    until_job,
    ws_connect,
)

import fetchml
from fetchml.errors import SubscriberDroppedError
from fetchml.tracking import MetricFeed

ENDED = ("succeeded", "failed", "cancelled", "timed_out")

# Waits for the go file (so that the test subscribes before the first point), then logs 300
# steps of two metrics over about 1.5 s.
TRAIN = """
import os, sys, time
from fetchml import track
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.01)
for step in range(300):
    track.log({"loss": 1.0 / (step + 1), "acc": step / 300}, step=step)
    time.sleep(0.005)
"""


@pytest.fixture
def users() -> Users:
    return Users()


def config(tmp_path: Path, users: Users) -> fetchml.Config:
    return make_server_config(
        tmp_path, users, limits=HIGH_LIMITS, tracking={"ingest_interval_s": 0.05}
    )


def spec(go: Path) -> dict[str, Any]:
    return {"command": [sys.executable, "-c", TRAIN, str(go)], "experiment": "live"}


async def metric_events(ws: Any, job_id: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The metric events until the job's end event, and that job."""
    events: list[dict[str, Any]] = []
    while True:
        event = await ws.event(within=30)
        if event["ev"] == "metric":
            assert event["job_id"] == job_id
            events.append(event)
        elif event["ev"] == "job" and event["job"]["state"] in ENDED:
            return events, event["job"]


@pytest.mark.parametrize("text", [False, True], ids=["msgpack", "json"])
async def test_points_arrive_live_in_order(tmp_path: Path, users: Users, text: bool) -> None:
    go = tmp_path / "go"
    with trio.fail_after(60):
        async with serve(config(tmp_path, users)) as base, HttpSession(base) as s:
            posted = await s.request("POST", "/api/v1/jobs", key=users.alice, json_body=spec(go))
            job_id = posted.json()["job"]["id"]
            async with ws_connect(base, users.alice, text=text) as ws:
                await ws.ok("subscribe", job_id=job_id, metrics=True)
                go.touch()
                events, job = await metric_events(ws, job_id)
            assert job["state"] == "succeeded", job
            raw = await s.request(
                "GET", f"/api/v1/jobs/{job_id}/metrics/loss?raw=true&limit=1000", key=users.alice
            )
    points = [p for e in events for p in e["points"]]
    loss = [(step, value) for name, step, value, _ in points if name == "loss"]
    # Everything logged came live (the subscription was there before the first point), in
    # order, exactly as stored; in fewer events than points.
    assert loss == list(zip(raw.json()["step"], raw.json()["value"], strict=True))
    assert [step for step, _ in loss] == list(range(300))
    assert len([p for p in points if p[0] == "acc"]) == 300
    assert 1 < len(events) < 300
    assert all(isinstance(p[3], float) and p[3] > 1e9 for p in points)


async def test_visibility_and_bad_requests(tmp_path: Path, users: Users) -> None:
    go = tmp_path / "go"
    with trio.fail_after(60):
        async with serve(config(tmp_path, users)) as base, HttpSession(base) as s:
            posted = await s.request("POST", "/api/v1/jobs", key=users.alice, json_body=spec(go))
            job_id = posted.json()["job"]["id"]
            async with ws_connect(base, users.bob) as ws:
                refused = await ws.call("subscribe", job_id=job_id, metrics=True)
                no_job = await ws.call("subscribe", metrics=True)
                wrong_type = await ws.call("subscribe", job_id=job_id, metrics="yes")
                alive = await ws.ok("whoami")
            async with ws_connect(base, users.carol) as ws:
                await ws.ok("subscribe", job_id=job_id, metrics=True)
                go.touch()
                events, _ = await metric_events(ws, job_id)
            await until_job(s, users.alice, job_id, ENDED, 30)
    assert refused["error"]["code"] == "not_found"
    assert no_job["error"] == {
        "code": "invalid_request",
        "message": "metrics: needs a job_id (metrics are per job)",
        "field": "metrics",
    }
    assert wrong_type["error"]["code"] == "invalid_request"
    assert "metrics" in wrong_type["error"]["message"]
    assert alive["user"] == "bob"
    assert sum(len(e["points"]) for e in events) == 600  # the analyst reads every job


async def test_embedding_api_watches_points(tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.touch()
    tracking = {"ingest_interval_s": 0.05}
    with trio.fail_after(60):
        async with fetchml.open_scheduler(
            data_dir=str(tmp_path / "data"), tracking=tracking
        ) as scheduler:
            job = await scheduler.submit(spec(go), user="alice")
            async with scheduler.watch_metrics(job.id) as batches:
                seen: list[tuple[str, int, float, float]] = []
                async for batch in batches:
                    seen.extend(batch)
                    if len(seen) >= 600:
                        break
            await scheduler.wait(job.id)
    assert [step for name, step, _, _ in seen if name == "loss"] == list(range(300))


async def test_a_slow_watcher_is_dropped_and_the_others_go_on() -> None:
    feed = MetricFeed()
    slow = feed.watch(1, buffer=2)
    fast = feed.watch(1, buffer=100)
    other = feed.watch(2, buffer=1)
    for step in range(5):
        feed.publish(1, [("loss", step, 1.0, 0.0)])  # never waits, however full
    feed.publish(2, [])
    assert [len(await fast.__anext__()) for _ in range(5)] == [1] * 5
    assert [p[1] for p in (await slow.__anext__()) + (await slow.__anext__())] == [0, 1]
    with pytest.raises(SubscriberDroppedError, match="fell more than 2 batches behind"):
        await slow.__anext__()
    assert other.pending() == []
    assert feed.watching(1)
    fast.close()
    assert not feed.watching(1)
    feed.close()
    with pytest.raises(StopAsyncIteration):
        await other.__anext__()
