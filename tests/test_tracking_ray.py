"""Metrics of a Ray run reach the server: a job on a real two-node Ray cluster on loopback
(helpers/ray_cluster.py) logs with ``fetchml.track`` into its node's file, the job's wrapper
sends the lines to a real server (``executor.ray.callback_url``) while it runs and the rest at
its end, and they come back over ``GET /api/v1/jobs/{id}/metrics/{name}``.

The cluster is started once for the session (about 15 s, ``ray_cluster`` in conftest.py, shared
with test_ray_cluster.py); without Ray installed the module is skipped.
"""

from __future__ import annotations

import os
import sys
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
from helpers.ray_cluster import RayCluster

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
def cluster(ray_cluster: RayCluster) -> RayCluster:
    """The session's Ray cluster (conftest.py), shared with the other Ray tests."""
    return ray_cluster


def ray_server_config(
    data_dir: Path, users: Users, address: str, system_interval_s: float = 10.0
) -> fetchml.Config:
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
        tracking={"ingest_interval_s": 0.1, "system_interval_s": system_interval_s},
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
    assert (info["params"], info["summary"]) == ({"lr": 0.01}, {"best": 0.01})
    counts = {m["name"]: m["count"] for m in info["metrics"]}
    assert counts["loss"] == 100
    assert info["points"] == sum(counts.values())  # with the node's system samples
    assert info["experiment"] == "ray-sweep"
    assert hidden.status == 404
    assert "[fetchml] metrics" not in log
    assert "fetchml.track: not inside a Fetch ML job" not in log


# Holds 64 MiB and keeps a core busy for two seconds on the GPU node.
BUSY = """
import time
held = b"x" * (64 << 20)
end = time.monotonic() + 2
while time.monotonic() < end:
    pass
"""
SMI = "#!/bin/sh\necho '0, GPU-aaaa, 31, 1024, 16000'\necho '1, GPU-bbbb, 77, 4096, 16000'\n"


async def test_a_ray_run_has_system_metrics_of_its_processes_and_its_gpu(
    cluster: RayCluster, data_dir: Path, tmp_path: Path
) -> None:
    users = Users()
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(SMI)
    (tools / "nvidia-smi").chmod(0o755)
    spec = {
        "command": [sys.executable, "-c", BUSY],
        "resources": {"gpus": 1},
        # The node's nvidia-smi: a stand-in that lists two GPUs.
        "env": {"PATH": f"{tools}:{os.environ['PATH']}"},
    }
    with trio.fail_after(WITHIN):
        async with (
            serve(ray_server_config(data_dir, users, cluster.address, 0.2)) as base,
            HttpSession(base) as s,
        ):
            response = await s.request("POST", "/api/v1/jobs", key=users.alice, json_body=spec)
            assert response.status == 201, response.body
            job_id: int = response.json()["job"]["id"]
            job = await until_job(
                s, users.alice, job_id, ("succeeded", "failed", "cancelled"), WITHIN
            )
            info = await s.request("GET", f"/api/v1/jobs/{job_id}/metrics", key=users.bob)
            mine = await s.request("GET", f"/api/v1/jobs/{job_id}/metrics", key=users.alice)
    log = (data_dir / "jobs" / str(job_id) / "log").read_text()
    assert job["state"] == "succeeded", log
    assert info.status == 404  # another researcher's run
    metrics = {m["name"]: m for m in mine.json()["metrics"]}
    # Ray gave the run GPU 0 of the node (CUDA_VISIBLE_DEVICES=0): only that one is sampled.
    assert set(metrics) == {
        "sys/cpu_percent",
        "sys/rss_mb",
        "sys/processes",
        "sys/gpu0/util_percent",
        "sys/gpu0/memory_used_mb",
        "sys/gpu0/memory_total_mb",
    }, log
    assert metrics["sys/gpu0/util_percent"]["last"] == 31
    assert metrics["sys/rss_mb"]["max"] > 64
    assert metrics["sys/cpu_percent"]["max"] > 25
    assert "[fetchml] metrics" not in log
