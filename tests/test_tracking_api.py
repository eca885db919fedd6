"""Experiment tracking end to end: real jobs log with ``fetchml.track`` (or write the line
protocol themselves) on a real server; the metrics come back over HTTP with the jobs'
visibility, and a server killed mid-run loses no point."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
import trio
from helpers.core import kill_everything_under, until
from helpers.gateway import (
    HIGH_LIMITS,
    HIGH_LIMITS_YAML,
    HttpSession,
    Users,
    make_server_config,
    serve,
    server_process,
    server_yaml,
    until_job,
)

import fetchml

ENDED = ("succeeded", "failed", "cancelled", "timed_out")

TRAIN = """
from fetchml import track
track.log_params({"lr": LR, "model": "mlp", "layers": 3})
track.set_tags({"arch": "mlp"})
for step in range(2000):
    loss = 100.0 if step == 1234 else 1.0 / (step + 1) / LR
    track.log({"loss": loss, "val/acc": step / 2000})
track.summary({"best_acc": 0.9995})
"""


@pytest.fixture
def users() -> Users:
    return Users()


def config(tmp_path: Path, users: Users, **settings: Any) -> fetchml.Config:
    return make_server_config(tmp_path, users, limits=HIGH_LIMITS, **settings)


def train(lr: float, experiment: str = "sweep", **spec: Any) -> dict[str, Any]:
    code = TRAIN.replace("LR", repr(lr))
    return {"command": [sys.executable, "-c", code], "experiment": experiment, **spec}


async def submit(s: HttpSession, key: str, spec: dict[str, Any]) -> int:
    response = await s.request("POST", "/api/v1/jobs", key=key, json_body=spec)
    assert response.status == 201, response.body
    job_id: int = response.json()["job"]["id"]
    return job_id


async def run(s: HttpSession, key: str, spec: dict[str, Any]) -> dict[str, Any]:
    job = await until_job(s, key, await submit(s, key, spec), ENDED, 30)
    assert job["state"] == "succeeded", job
    return job


async def get(s: HttpSession, key: str, path: str) -> Any:
    response = await s.request("GET", path, key=key)
    assert response.status == 200, (path, response.body)
    return response.json()


async def test_metrics_params_summary_and_series_come_back(tmp_path: Path, users: Users) -> None:
    spec = train(0.1, hypothesis="a higher lr converges faster", intent="sweep lr")
    with trio.fail_after(60):
        async with serve(config(tmp_path, users)) as base, HttpSession(base) as s:
            job = await run(s, users.alice, spec)
            root = f"/api/v1/jobs/{job['id']}/metrics"
            info = await get(s, users.alice, root)
            series = await get(s, users.alice, f"{root}/loss?points=10")
            acc = await get(s, users.alice, f"{root}/{quote('val/acc', safe='')}?points=5000")
            pages, after = [], None
            while True:
                query = "raw=true&limit=700" + (f"&after={after}" if after is not None else "")
                page = await get(s, users.alice, f"{root}/loss?{query}")
                pages.append(page)
                after = page["next"]
                if after is None:
                    break
            window = await get(s, users.alice, f"{root}/loss?points=4&start=1200&end=1299")
    assert info["params"] == {"lr": 0.1, "model": "mlp", "layers": 3}
    assert info["tags"] == {"arch": "mlp"}
    assert info["summary"] == {"best_acc": 0.9995}
    assert info["narrative"]["hypothesis"] == "a higher lr converges faster"
    assert (info["points"], info["invalid"], info["dropped"]) == (4000, 0, 0)
    loss = {m["name"]: m for m in info["metrics"]}["loss"]
    assert (loss["count"], loss["last_step"], loss["max"]) == (2000, 1999, 100.0)
    assert loss["last"] == pytest.approx(1.0 / 2000 / 0.1)
    # Downsampled by min/max: the spike at step 1234 survives in its bucket.
    assert series["downsampled"] is True
    assert len(series["step"]) == 10
    assert max(series["max"]) == 100.0
    assert series["max"][6] == 100.0  # steps 1200..1399
    assert series["min"][0] == pytest.approx(1.0 / 200 / 0.1)  # the last of the first bucket
    assert acc["downsampled"] is False
    assert len(acc["step"]) == 2000
    steps = [step for page in pages for step in page["step"]]
    assert steps == list(range(2000))
    assert len(pages) == 3
    assert window["step"] == [1200, 1225, 1250, 1275]
    assert window["max"][1] == 100.0


async def test_visibility_is_the_jobs(tmp_path: Path, users: Users) -> None:
    with trio.fail_after(60):
        async with serve(config(tmp_path, users)) as base, HttpSession(base) as s:
            job = await run(s, users.alice, train(0.1))
            root = f"/api/v1/jobs/{job['id']}/metrics"
            answers = {}
            for who in ("alice", "bob", "carol", "admin"):
                key = users.keys[who]
                answers[who] = (
                    (await s.request("GET", root, key=key)).status,
                    (await s.request("GET", f"{root}/loss", key=key)).status,
                )
            runs = {
                who: await get(s, users.keys[who], "/api/v1/experiments/sweep/runs")
                for who in ("alice", "bob", "carol")
            }
            experiments = await get(s, users.bob, "/api/v1/experiments")
            outcome = {"outcome": "lr 0.1 diverges less than expected"}
            by_carol = await s.request(
                "POST", f"/api/v1/jobs/{job['id']}/outcome", key=users.carol, json_body=outcome
            )
            by_bob = await s.request(
                "POST", f"/api/v1/jobs/{job['id']}/outcome", key=users.bob, json_body=outcome
            )
            by_alice = await s.request(
                "POST", f"/api/v1/jobs/{job['id']}/outcome", key=users.alice, json_body=outcome
            )
            after = await get(s, users.carol, root)
    assert answers == {
        "alice": (200, 200),
        "bob": (404, 404),
        "carol": (200, 200),
        "admin": (200, 200),
    }
    assert [len(runs[who]["runs"]) for who in ("alice", "bob", "carol")] == [1, 0, 1]
    assert experiments == {"experiments": []}
    assert (by_carol.status, by_bob.status, by_alice.status) == (403, 404, 200)
    assert after["outcome"] == outcome["outcome"]


async def test_runs_of_an_experiment_sorted_by_a_metric(tmp_path: Path, users: Users) -> None:
    rates = [0.5, 0.1, 0.2, 0.05]
    with trio.fail_after(90):
        async with serve(config(tmp_path, users)) as base, HttpSession(base) as s:
            ids = {lr: (await run(s, users.alice, train(lr)))["id"] for lr in rates}
            await run(s, users.alice, {"command": ["true"], "experiment": "sweep"})
            first = await get(
                s, users.alice, "/api/v1/experiments/sweep/runs?sort=loss&order=asc&limit=2"
            )
            second = await get(
                s,
                users.alice,
                f"/api/v1/experiments/sweep/runs?sort=loss&order=asc&limit=2&before={first['next']}",
            )
            third = await get(
                s,
                users.alice,
                f"/api/v1/experiments/sweep/runs?sort=loss&order=asc&limit=2&before={second['next']}",
            )
            experiments = await get(s, users.admin, "/api/v1/experiments")
            other_order = await s.request(
                "GET",
                f"/api/v1/experiments/sweep/runs?sort=loss&limit=2&before={first['next']}",
                key=users.alice,
            )
    assert other_order.status == 400
    assert other_order.error["field"] == "before"
    ordered = [row["job_id"] for page in (first, second, third) for row in page["runs"]]
    # The lowest last loss is the highest lr; the run that logged nothing comes last.
    assert ordered[:4] == [ids[0.5], ids[0.2], ids[0.1], ids[0.05]]
    assert len(ordered) == 5
    assert third["next"] is None
    assert first["runs"][0]["params"]["lr"] == 0.5
    assert first["runs"][0]["state"] == "succeeded"
    assert first["runs"][0]["metrics"]["loss"]["count"] == 2000
    assert [e["name"] for e in experiments["experiments"]] == ["sweep"]
    assert experiments["experiments"][0]["runs"] == 5


BAD_LINES = r"""
f="$FETCHML_TRACK_FILE"
printf '{"step": 0, "metrics": {"ok": 1}}\n' >> "$f"
printf 'not json\n' >> "$f"
printf '{"metrics": {"loss": "high"}}\n' >> "$f"
printf '{"metrics": {"%s": 1}}\n' "$(head -c 300 /dev/zero | tr '\0' x)" >> "$f"
printf '{"metrics": {"a\\u0001b": 1}}\n' >> "$f"
printf '{"metrics": {"ok": NaN}}\n' >> "$f"
printf '{"unknown": 1}\n' >> "$f"
printf '{"metrics": {"ok": 2}}\n' >> "$f"
for i in $(seq 1 30); do printf '{"metrics": {"many": %d}}\n' $i >> "$f"; done
printf '{"metrics": {"ok": 3}}' >> "$f"
"""


async def test_bad_lines_are_counted_and_skipped_and_the_cap_drops(
    tmp_path: Path, users: Users
) -> None:
    settings = {"tracking": {"max_points_per_run": 10}}
    spec = {"command": BAD_LINES, "shell": True}
    with trio.fail_after(60):
        async with serve(config(tmp_path, users, **settings)) as base, HttpSession(base) as s:
            job = await run(s, users.alice, spec)
            info = await get(s, users.alice, f"/api/v1/jobs/{job['id']}/metrics")
            ok = await get(s, users.alice, f"/api/v1/jobs/{job['id']}/metrics/ok?raw=1")
            long_name = await s.request(
                "GET", f"/api/v1/jobs/{job['id']}/metrics/{'x' * 300}", key=users.alice
            )
    assert info["invalid"] == 6
    # 2 "ok" and 30 "many" points, the cap is 10; the last line has no newline: not read.
    assert (info["points"], info["dropped"]) == (10, 22)
    assert ok["step"] == [0, 1]
    assert ok["value"] == [1.0, 2.0]
    assert long_name.status == 400
    assert long_name.error["field"] == "name"


SLOW = """
import time
from fetchml import track
for step in range(STEPS):
    track.log({"x": float(step)}, step=step)
    track.flush()
    time.sleep(0.004)
"""


async def test_a_server_killed_mid_run_loses_no_point(tmp_path: Path, users: Users) -> None:
    steps = 1000
    data_dir = tmp_path / "data"
    path = tmp_path / "server.yaml"
    path.write_text(server_yaml(data_dir, users.write(tmp_path / "auth.yaml"), HIGH_LIMITS_YAML))
    spec = {"command": [sys.executable, "-c", SLOW.replace("STEPS", str(steps))]}
    try:
        with trio.fail_after(90):
            async with server_process(["--config", str(path)], cwd=tmp_path) as server:
                async with HttpSession(server.base) as s:
                    job_id = await submit(s, users.alice, spec)
                    await until_job(s, users.alice, job_id, ("running",), 20)
                    await trio.sleep(1.0)
                    before = await get(s, users.alice, f"/api/v1/jobs/{job_id}/metrics")
                server.signal(signal.SIGKILL)
                await server.wait()
            async with (
                server_process(["--config", str(path)], cwd=tmp_path) as again,
                HttpSession(again.base) as s,
            ):
                job = await until_job(s, users.alice, job_id, ENDED, 40)
                root = f"/api/v1/jobs/{job_id}/metrics"
                info = await get(s, users.alice, root)
                raw = await get(s, users.alice, f"{root}/x?raw=1&limit=5000")
    finally:
        kill_everything_under(tmp_path)
    assert job["state"] == "succeeded", job
    assert 0 < before["points"] < steps
    assert info["points"] == steps
    assert raw["step"] == list(range(steps))
    assert raw["value"] == [float(step) for step in range(steps)]


def ingest_workers(data_dir: Path) -> list[psutil.Process]:
    """The tracking worker processes of ``data_dir`` under this test."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            argv = proc.cmdline()
            if any("fetchml.tracking._worker" in a for a in argv) and str(data_dir) in argv:
                found.append(proc)
    return found


async def test_a_killed_ingest_worker_is_replaced_and_loses_no_point(
    tmp_path: Path, users: Users, internal_errors: list[logging.LogRecord]
) -> None:
    """The process that parses track files dies twice mid-run (as the OOM killer would kill
    it): the next pass starts another, which goes on from the last commit."""
    steps = 1000
    spec = {"command": [sys.executable, "-c", SLOW.replace("STEPS", str(steps))]}
    settings = {"tracking": {"ingest_interval_s": 0.05}}
    killed = []
    with trio.fail_after(90):
        async with serve(config(tmp_path, users, **settings)) as base, HttpSession(base) as s:
            job_id = await submit(s, users.alice, spec)
            for _ in range(2):
                # The worker runs a second at least before each kill (at most a start a second).
                await trio.sleep(1.0)
                workers = ingest_workers(tmp_path / "data")
                assert len(workers) == 1
                killed.append(workers[0].pid)
                workers[0].kill()
            job = await until_job(s, users.alice, job_id, ENDED, 60)
            root = f"/api/v1/jobs/{job_id}/metrics"
            info = await get(s, users.alice, root)
            raw = await get(s, users.alice, f"{root}/x?raw=1&limit=5000")
            now = ingest_workers(tmp_path / "data")
    assert job["state"] == "succeeded", job
    assert info["points"] == steps
    assert raw["step"] == list(range(steps))
    assert len(now) == 1
    assert now[0].pid not in killed
    assert not ingest_workers(tmp_path / "data")  # the server's end stopped it
    # Each death is reported once (the request in flight, or the next one).
    assert 1 <= len(internal_errors) <= 2
    assert all("the tracking worker ended" in r.getMessage() for r in internal_errors)


LOG_THEN_END = """
from pathlib import Path
from fetchml import track
for step in range(STEPS):
    track.log({"x": float(step)}, step=step)
track.flush()
Path(DONE).touch()
"""


async def test_a_worker_dying_under_a_runs_last_read_is_replaced_for_it(
    tmp_path: Path, users: Users, internal_errors: list[logging.LogRecord]
) -> None:
    """The worker hangs, the job ends (its run's last read waits on the hung worker), then the
    worker is killed: the last read is tried again on a new worker, so the run's points are all
    stored and the run is recorded ended, with no error reported."""
    steps, done = 300, tmp_path / "job-done"
    code = LOG_THEN_END.replace("STEPS", str(steps)).replace("DONE", repr(str(done)))
    # No pass and no system sample while the job runs: its run's only read is its last.
    settings = {"tracking": {"ingest_interval_s": 60, "system_interval_s": 60}}
    with trio.fail_after(60):
        async with serve(config(tmp_path, users, **settings)) as base, HttpSession(base) as s:
            await until(lambda: len(ingest_workers(tmp_path / "data")) == 1)
            (worker,) = ingest_workers(tmp_path / "data")
            worker.suspend()
            try:
                job_id = await submit(s, users.alice, {"command": [sys.executable, "-c", code]})
                await until(done.exists, within=30)
                await trio.sleep(0.5)  # the job has exited and its last read is under way
            finally:
                worker.kill()
            job = await until_job(s, users.alice, job_id, ENDED, 30)
            raw = await get(s, users.alice, f"/api/v1/jobs/{job_id}/metrics/x?raw=1&limit=5000")
    assert job["state"] == "succeeded", job
    assert raw["step"] == list(range(steps))
    store = fetchml.tracking.TrackingStore(tmp_path / "data", synchronous="normal")
    try:
        assert store.unfinished() == []
    finally:
        store.close()
    assert internal_errors == []


QUICK_THEN_GONE = """
import os, time
from fetchml import track
for step in range(100):
    track.log({"x": float(step)}, step=step)
track.flush()
while not os.path.exists(GO):
    time.sleep(0.01)
"""


async def test_a_run_that_ends_while_the_server_is_down_is_read_on_restart(
    tmp_path: Path, users: Users
) -> None:
    """The server is killed before it ever read the run's file (reads are a minute apart);
    the job ends while it is down; the next server reads every point of it."""
    data_dir, go = tmp_path / "data", tmp_path / "go"
    path = tmp_path / "server.yaml"
    slow_reads = HIGH_LIMITS_YAML + "tracking:\n  ingest_interval_s: 60\n"
    path.write_text(server_yaml(data_dir, users.write(tmp_path / "auth.yaml"), slow_reads))
    spec = {"command": [sys.executable, "-c", QUICK_THEN_GONE.replace("GO", repr(str(go)))]}
    try:
        with trio.fail_after(90):
            async with server_process(["--config", str(path)], cwd=tmp_path) as server:
                async with HttpSession(server.base) as s:
                    job_id = await submit(s, users.alice, spec)
                    await until_job(s, users.alice, job_id, ("running",), 20)
                    before = await get(s, users.alice, f"/api/v1/jobs/{job_id}/metrics")
                server.signal(signal.SIGKILL)
                await server.wait()
            go.touch()
            async with (
                server_process(["--config", str(path)], cwd=tmp_path) as again,
                HttpSession(again.base) as s,
            ):
                job = await until_job(s, users.alice, job_id, ENDED, 40)
                info = await get(s, users.alice, f"/api/v1/jobs/{job_id}/metrics")
    finally:
        kill_everything_under(tmp_path)
    assert job["state"] == "succeeded", job
    assert (before["points"], before["metrics"]) == (0, [])  # known, empty: nothing read yet
    assert info["points"] == 100


async def test_a_run_that_logs_nothing_is_listed(tmp_path: Path, users: Users) -> None:
    quiet = {"command": ["/bin/true"], "experiment": "quiet", "hypothesis": "nothing to log"}
    with trio.fail_after(60):
        async with serve(config(tmp_path, users)) as base, HttpSession(base) as s:
            job = await run(s, users.alice, quiet)
            info = await get(s, users.alice, f"/api/v1/jobs/{job['id']}/metrics")
            runs = await get(s, users.alice, "/api/v1/experiments/quiet/runs")
    assert (info["points"], info["metrics"], info["experiment"]) == (0, [], "quiet")
    assert info["narrative"]["hypothesis"] == "nothing to log"
    assert [(r["job_id"], r["state"]) for r in runs["runs"]] == [(job["id"], "succeeded")]


def test_track_outside_a_job_warns_once_and_keeps_nothing(tmp_path: Path) -> None:
    code = (
        "from fetchml import track\n"
        "for i in range(3):\n"
        "    track.log({'loss': 1.0})\n"
        "track.log_params({'a': 1})\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(fetchml.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1
    assert "not inside a Fetch ML job" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_track_writes_the_line_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "track.jsonl"
    code = (
        "from fetchml import track\n"
        "track.log({'loss': 0.5, 'nan': float('nan')}, step=7)\n"
        "track.log_metric('loss', 0.25)\n"
        "track.log_param('lr', 0.1)\n"
        "track.summary({'best': 1})\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(Path(fetchml.__file__).parent.parent),
        "FETCHML_TRACK_FILE": str(target),
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "nan" in done.stderr.decode()
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r.get("step") for r in records] == [7, 8, None, None]
    assert records[0]["metrics"] == {"loss": 0.5}
    assert records[1]["metrics"] == {"loss": 0.25}
    assert records[2] == {"params": {"lr": 0.1}}
    assert records[3] == {"summary": {"best": 1}}
