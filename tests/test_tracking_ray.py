"""Metrics of a Ray run reach the server: a job on a real two-node Ray cluster on loopback
(helpers/ray_cluster.py) logs with ``fetchml.track`` into its node's file, the job's wrapper
sends the lines to a real server (``executor.ray.callback_url``) while it runs and the rest at
its end, and they come back over ``GET /api/v1/jobs/{id}/metrics/{name}``.

The cluster is started once for this module (about 15 s); without Ray installed the module is
skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

pytest.importorskip(
    "ray.job_submission",
    reason="Ray is not installed: pip install -e '.[ray]' to run the Ray backend tests",
)

from helpers.core import until
from helpers.gateway import HIGH_LIMITS, HttpSession, Users, free_port, serve, until_job
from helpers.ray_cluster import RayCluster, start_cluster, stop_cluster

import fetchml

WITHIN = 90.0  # generous: the machine may be busy with other tests

# The job's own Python (this one: fetchml.track is importable from it, as from a node's
# environment that has the project's code).  Half its points are logged before it waits for the
# test to have seen some of them over HTTP: they travel while it runs, not only at its end.
TRAIN = """
import os, sys, time
from fetchml import track
track.log_params({"lr": 0.01})
for step in range(50):
    track.log({"loss": 1.0 / (step + 1)}, step=step)
track.flush()
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.05)
for step in range(50, 100):
    track.log({"loss": 1.0 / (step + 1)}, step=step)
track.summary({"best": 0.01})
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    running = start_cluster(tmp_path_factory.mktemp("ray"))
    try:
        yield running
    finally:
        stop_cluster(running)


def ray_server_config(data_dir: Path, users: Users, address: str) -> fetchml.Config:
    port = free_port()
    ray: dict[str, Any] = {
        "address": address,
        "poll_interval_s": 0.5,
        "capacity_interval_s": 0.5,
        "callback_url": f"http://127.0.0.1:{port}",
    }
    return fetchml.make_config(
        data_dir=str(data_dir),
        port=port,
        auth_file=str(users.write(data_dir.parent / "auth.yaml")),
        backend="ray",
        ray=ray,
        kill_grace_s=0.5,
        limits=HIGH_LIMITS,
        tracking={"ingest_interval_s": 0.1},
    )


async def series(s: HttpSession, key: str, job_id: int) -> dict[str, Any]:
    """The job's ``loss`` points the server has (none yet: empty)."""
    path = f"/api/v1/jobs/{job_id}/metrics/loss?raw=1&limit=1000"
    response = await s.request("GET", path, key=key)
    if response.status == 404 and "no metric" in response.error["message"]:
        return {"step": [], "value": []}
    assert response.status == 200, response.body
    found: dict[str, Any] = response.json()
    return found


async def test_a_ray_run_logs_metrics_that_reach_the_server(
    cluster: RayCluster, data_dir: Path, tmp_path: Path
) -> None:
    users = Users()
    go = tmp_path / "go"
    spec = {"command": [sys.executable, "-c", TRAIN, str(go)], "experiment": "ray-sweep"}
    with trio.fail_after(WITHIN):
        async with (
            serve(ray_server_config(data_dir, users, cluster.address)) as base,
            HttpSession(base) as s,
        ):
            response = await s.request("POST", "/api/v1/jobs", key=users.alice, json_body=spec)
            assert response.status == 201, response.body
            job_id: int = response.json()["job"]["id"]

            async def half_in() -> bool:
                return len((await series(s, users.alice, job_id))["step"]) >= 50

            await until(half_in, within=WITHIN)
            assert (await until_job(s, users.alice, job_id, ("running",)))["state"] == "running"
            go.touch()
            job = await until_job(
                s, users.alice, job_id, ("succeeded", "failed", "cancelled"), WITHIN
            )
            # Read at once: the run's end is reported only once its last lines are in.
            got = await series(s, users.alice, job_id)
            summary = f"/api/v1/jobs/{job_id}/metrics"
            info = (await s.request("GET", summary, key=users.alice)).json()
            hidden = await s.request("GET", summary, key=users.bob)
    log = (data_dir / "jobs" / str(job_id) / "log").read_text()
    assert job["state"] == "succeeded", log
    assert got["step"] == list(range(100))
    assert got["value"] == [1.0 / (step + 1) for step in range(100)]
    assert (info["points"], info["params"], info["summary"]) == (100, {"lr": 0.01}, {"best": 0.01})
    assert info["experiment"] == "ray-sweep"
    assert hidden.status == 404
    assert "[fetchml] metrics" not in log
    assert "fetchml.track: not inside a Fetch ML job" not in log
