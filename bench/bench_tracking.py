"""Benchmark of experiment tracking (issue 13, benchmarks 1-3), each figure next to a baseline
measured on the same machine in the same run.

Run: ``python bench/bench_tracking.py [--quick] [--mlflow-points N]`` (``--quick``, or
``FETCHML_BENCH_QUICK=1``: a tenth of the points, runs and jobs, a smoke run).  Servers are
``fetchml`` server child processes (``_gateway_common.fetchml_server``: ``run_server`` on a
config with a temp data dir on disk, ``/var/tmp`` by default, bcrypt-4 keys, rate limits off,
four cpus, the default tracking settings: a track file read every 0.25 s, ``synchronous=full``).

1. **Ingest.**  One job (``fetchml.track``, the job's own Python) logs 1,000,000 points, 10
   metrics x 100,000 steps, ``track.log({...10 metrics...}, step=i)`` in a tight loop.  Timed
   from the job's ``started_at`` (the scheduler's stamp) until its end is reported to a
   WebSocket subscriber, which the server does only once every line of its track file is in the
   durable store; then ``GET /api/v1/jobs/{id}/metrics`` must count all the points.  Baseline:
   MLflow with a local SQLite tracking store (``sqlite:///``, in the same folder), one run,
   ``MlflowClient().log_batch`` of 1,000 metrics (100 steps x 10 metrics, the same names, steps
   and values) per call, in its own virtualenv (``bench/.mlflow-venv``, created on first use
   with ``pip``: ``mlflow-skinny`` and the SQLAlchemy/alembic it needs for a SQL store, pinned)
   as a subprocess; timed from its first ``log_batch`` to its last (its imports and schema
   creation are not counted).  MLflow logs about 8,000 points/s here, so by default it logs
   the first 100,000 of the points (``--mlflow-points 1000000`` for all of them: two more
   minutes); its rate over the first and last tenth of its calls is shown, to show that it does
   not speed up with size.  Goal: >= 100,000 points/s and >= 10x MLflow.
2. **Dispatch under ingest.**  One server and two background jobs that idle but for their
   phase: a job that burns a cpu without logging (the control: what any busy job costs a 2-core
   machine) and a job that logs flat out (the job of 1. in an endless loop; the points/s stored
   meanwhile are shown).  Three phases, quiet, control and logging, take turns, ``ROUNDS``
   times in a rotating order, so that the machine's drift falls on each alike (after each
   logging turn the server catches up before the next turn starts).  In each turn: a burst of
   submits (4 WebSocket connections with 8 submits in flight on each, ``/bin/true`` jobs that
   then run) and the dispatch latency of jobs submitted one at a time (each after the previous
   one ended): from sending ``submit`` until a subscriber (another connection) receives the
   ``running`` event, and the server's own ``started_at - created_at``.  The baseline is the
   quiet phase (its two halves are shown: their difference is the drift).  Goal: the logging
   phase's p99 and submit rate within 10% of quiet.  ``--part 2`` runs only this one.
3. **Queries.**  A data dir populated before its server starts: a job store with 10,001
   succeeded jobs (written through ``fetchml.store.Store``), a tracking store (through
   ``TrackingStore``) with one run holding a 1,000,000-point series (with spikes) and 10,000
   runs of one experiment with 20 metrics each.  The series downsampled to 1,000 buckets: the
   ``TrackingStore.series`` call itself (server time) and ``GET
   /api/v1/jobs/{id}/metrics/{name}?points=1000`` (round trip: an upper bound of the server's
   time); the experiment's runs sorted by one metric, first page: ``GET
   /api/v1/experiments/{name}/runs?sort=m07&limit=50`` (as the researcher who owns them and as
   an admin).  Baseline: ``GET /api/v1/whoami`` on the same connection (what any request costs).
   Median and p95 of repeated requests.  Goals: series < 50 ms, runs page < 100 ms.

Exits 1 if a goal is missed (as the other benches do).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import itertools
import json
import os
import selectors
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil
import trio
from _common import bench_dir, bench_session, fmt_rate, line, median, percentile
from _gateway_common import (
    HOST,
    FrameParser,
    Keys,
    client_frame,
    close_reason,
    close_ws,
    fetchml_server,
    pipelined_run,
    ws_connect,
)

from fetchml._models import Job, JobEvent, JobSpec, JobState
from fetchml.store import Batch as JobBatch
from fetchml.store import Store
from fetchml.tracking import Batch, TrackingStore

METRICS = 10
GOAL_RATE = 100_000  # points/s
GOAL_VS_MLFLOW = 10.0
GOAL_DRIFT = 0.10  # loaded within 10% of quiet
GOAL_SERIES_MS = 50.0
GOAL_RUNS_MS = 100.0
BUCKETS = 1000
SORT_BY = "m07"
EXPERIMENT = "bench-runs"
RUN_METRICS = 20
SERVER_CPUS = 4  # more than the machine's: no bench job waits for a cpu
SUBMIT_CONNECTIONS = 4
SUBMIT_WINDOW = 8
ROUNDS = 6  # of benchmark 2: each round measures the three phases, in a rotating order
TRUE_SPEC = {"command": ["/bin/true"], "resources": {"cpus": 1}}

HERE = Path(__file__).resolve().parent
MLFLOW_VENV = HERE / ".mlflow-venv"
# mlflow-skinny has no SQL store of its own: SQLAlchemy and alembic are what it needs for one
# (the full ``mlflow`` package would bring pandas, scipy, a UI... for nothing measured here).
MLFLOW_REQUIREMENTS = ("mlflow-skinny==3.17.2", "sqlalchemy==2.1.9", "alembic==1.20.1")


@dataclass(frozen=True)
class Sizes:
    steps: int = 100_000  # x METRICS points
    mlflow_points: int = 100_000
    submits: int = 1200  # per phase, in ROUNDS bursts
    dispatches: int = 420  # per phase
    series_points: int = 1_000_000
    runs: int = 10_000
    requests: int = 30


QUICK = Sizes(
    steps=10_000,
    mlflow_points=20_000,
    submits=240,
    dispatches=60,
    series_points=100_000,
    runs=1_000,
    requests=10,
)

# The job of benchmark 1: 10 metrics per step, as fast as it can; it reports its own time.
INGEST_JOB = """
import sys, time
start = time.time()
from fetchml import track
names = [f"m{k}" for k in range(10)]
for step in range(int(sys.argv[1])):
    track.log({name: step * 0.001 + k for k, name in enumerate(names)}, step=step)
track.flush()
print(f"WROTE {start:.6f} {time.time():.6f}", flush=True)
"""

# The job of benchmark 2: the same loop, until the file named by its first argument exists;
# it idles while the file named by its second one exists.
LOGGER_JOB = """
import os, sys, time
from fetchml import track
names = [f"m{k}" for k in range(10)]
step = 0
while not os.path.exists(sys.argv[1]):
    if os.path.exists(sys.argv[2]):
        track.flush()
        time.sleep(0.02)
        continue
    for _ in range(1000):
        track.log({name: step * 0.001 + k for k, name in enumerate(names)}, step=step)
        step += 1
"""

# The control of benchmark 2: a job that takes a whole cpu and logs nothing (idle likewise).
BUSY_JOB = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    if os.path.exists(sys.argv[2]):
        time.sleep(0.02)
        continue
    for _ in range(100_000):
        pass
"""

MLFLOW_JOB = """
import json, sys, time
from mlflow import MlflowClient
from mlflow.entities import Metric

uri, points, per_call = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
setup = time.perf_counter()
client = MlflowClient(tracking_uri=uri)
run_id = client.create_run(client.create_experiment("bench")).info.run_id
setup = time.perf_counter() - setup
names = [f"m{k}" for k in range(10)]
per_step = len(names)
calls = []
start = time.perf_counter()
for first in range(0, points // per_step, per_call // per_step):
    now = int(time.time() * 1000)
    batch = [
        Metric(name, step * 0.001 + k, now, step)
        for step in range(first, first + per_call // per_step)
        for k, name in enumerate(names)
    ]
    began = time.perf_counter()
    client.log_batch(run_id, metrics=batch)
    calls.append(time.perf_counter() - began)
elapsed = time.perf_counter() - start
print(json.dumps({"setup_s": setup, "elapsed_s": elapsed, "calls": calls}))
"""


def _args() -> tuple[Sizes, bool, set[int]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of everything: a smoke run")
    parser.add_argument(
        "--mlflow-points", type=int, default=None, help="points MLflow logs (default 100,000)"
    )
    parser.add_argument(
        "--part", type=int, choices=(1, 2, 3), action="append", help="run only this benchmark"
    )
    args = parser.parse_args()
    quick = args.quick or os.environ.get("FETCHML_BENCH_QUICK", "") not in ("", "0")
    sizes = QUICK if quick else Sizes()
    if args.mlflow_points is not None:
        sizes = dataclasses.replace(sizes, mlflow_points=max(1, args.mlflow_points // 1000) * 1000)
    return sizes, quick, set(args.part or (1, 2, 3))


# --- lean clients --------------------------------------------------------------------------------


class _JobLite(msgspec.Struct):
    id: int
    state: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class _Frame(msgspec.Struct):
    """What this bench reads of a reply or an event."""

    re: int | None = None
    ok: bool = True
    error: Any = None
    ev: str | None = None
    job: _JobLite | None = None
    status: dict[str, Any] | None = None


_frame_decoder = msgspec.msgpack.Decoder(_Frame)
TERMINAL = frozenset(("succeeded", "failed", "cancelled", "timed_out", "lost"))


class Ws:
    """One WebSocket connection with blocking calls; events are handed to ``on_event``."""

    def __init__(self, port: int, key: str) -> None:
        self.sock, rest = ws_connect(port, key)
        self.parser = FrameParser()
        self.waiting = [_frame_decoder.decode(p) for _, p in self.parser.feed(rest)]
        self.ids = itertools.count(1)

    def send(self, request: dict[str, Any]) -> int:
        rid = next(self.ids)
        self.sock.sendall(client_frame(msgspec.msgpack.encode({**request, "id": rid})))
        return rid

    def read(self) -> list[_Frame]:
        """What has arrived (waits for at least one frame)."""
        if self.waiting:
            frames, self.waiting = self.waiting, []
            return frames
        while True:
            data = self.sock.recv(1 << 18)
            if not data:
                raise ConnectionError("the server closed the connection")
            frames = []
            for opcode, payload in self.parser.feed(data):
                if opcode == 8:
                    raise ConnectionError(f"closed by the server: {close_reason(payload)}")
                if opcode in (1, 2):
                    frames.append(_frame_decoder.decode(payload))
            if frames:
                return frames

    def call(self, request: dict[str, Any], events: list[_Frame] | None = None) -> _Frame:
        """Send ``request``, return its reply; events read meanwhile go to ``events``."""
        rid = self.send(request)
        while True:
            for frame in self.read():
                if frame.re == rid:
                    if not frame.ok:
                        raise RuntimeError(f"{request['op']} failed: {frame.error}")
                    return frame
                if events is not None and frame.ev is not None:
                    events.append(frame)

    def close(self) -> None:
        close_ws(self.sock)


@contextlib.contextmanager
def ws(port: int, key: str) -> Iterator[Ws]:
    conn = Ws(port, key)
    try:
        yield conn
    finally:
        conn.close()


class Http:
    """A keep-alive HTTP/1.1 connection with the key in ``Authorization``."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=120)
        self.conn.connect()
        assert self.conn.sock is not None
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.headers = {"Authorization": f"Bearer {key}"}

    def get_raw(self, path: str) -> tuple[float, bytes]:
        """(seconds from sending the request to the whole body, the body)."""
        start = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return elapsed, body

    def get(self, path: str) -> tuple[float, Any]:
        elapsed, body = self.get_raw(path)
        return elapsed, msgspec.json.decode(body)

    def close(self) -> None:
        self.conn.close()


def ms(values: Sequence[float]) -> str:
    return f"p50 {median(values) * 1e3:.1f}, p95 {percentile(values, 95) * 1e3:.1f} ms"


# --- 1. ingest -----------------------------------------------------------------------------------


@dataclass
class Ingest:
    points: int
    seconds: float  # job start -> end reported (all points durable)
    write_s: float  # the job's own loop
    lag_s: float  # the job's last write -> end reported
    cpu_s: float  # server CPU while it ran


def wait_job(conn: Ws, job_id: int, events: list[_Frame], timeout: float) -> tuple[_JobLite, float]:
    """Wait for the terminal event of ``job_id`` (``events``: those already read); the job and
    the wall-clock time it arrived."""
    deadline = time.monotonic() + timeout
    conn.sock.settimeout(timeout)
    while True:
        for frame in events:
            if frame.job is not None and frame.job.id == job_id and frame.job.state in TERMINAL:
                return frame.job, time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not end within {timeout:.0f} s")
        events = [f for f in conn.read() if f.ev is not None]


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of the server process and its tracking worker so far (the
    worker's own: a running child's time is not in its parent's)."""
    server = psutil.Process(pid)
    total = sum(server.cpu_times()[:2])
    for child in server.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any("fetchml.tracking._worker" in arg for arg in child.cmdline()):
                total += sum(child.cpu_times()[:2])
    return total


def bench_ingest(sizes: Sizes) -> Ingest:
    points = sizes.steps * METRICS
    with (
        bench_dir("ingest") as folder,
        fetchml_server(folder, scheduler={"cpus": SERVER_CPUS}) as (server, keys, _),
        ws(server.port, keys.alice) as conn,
    ):
        conn.call({"op": "subscribe"})
        spec = {
            "command": [sys.executable, "-c", INGEST_JOB, str(sizes.steps)],
            "name": "ingest",
            "experiment": "bench-ingest",
        }
        cpu = server_cpu(server.pid)
        events: list[_Frame] = []
        reply = conn.call({"op": "submit", "spec": spec}, events)
        assert reply.job is not None
        job, ended = wait_job(conn, reply.job.id, events, timeout=600)
        cpu = server_cpu(server.pid) - cpu
        if job.state != "succeeded" or job.started_at is None:
            raise RuntimeError(f"the logging job ended {job.state}")
        http = Http(server.port, keys.alice)
        try:
            _, info = http.get(f"/api/v1/jobs/{job.id}/metrics")
            _, log = http.get_raw(f"/api/v1/jobs/{job.id}/logs")
        finally:
            http.close()
        if (info["points"], info["invalid"], info["dropped"]) != (points, 0, 0):
            raise RuntimeError(
                f"the store counts {info['points']} points ({info['invalid']} invalid, "
                f"{info['dropped']} dropped), not {points}"
            )
        wrote = [w for w in log.decode().splitlines() if w.startswith("WROTE ")]
        began, finished = (float(x) for x in wrote[-1].split()[1:3])
        return Ingest(
            points=points,
            seconds=ended - job.started_at,
            write_s=finished - began,
            lag_s=ended - finished,
            cpu_s=cpu,
        )


@dataclass
class Mlflow:
    points: int
    setup_s: float
    seconds: float
    calls: list[float]


def mlflow_python() -> tuple[Path | None, str]:
    """The MLflow virtualenv's python, made on first use; or None and why not."""
    python = MLFLOW_VENV / "bin" / "python"
    stamp = MLFLOW_VENV / ".fetchml-bench-installed"
    wanted = " ".join(MLFLOW_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python, f"{MLFLOW_VENV.name} ready"
    start = time.monotonic()
    print(f"  creating {MLFLOW_VENV} ({wanted}) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(MLFLOW_VENV)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *MLFLOW_REQUIREMENTS,
        ],
    ]
    for argv in steps:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{argv[2]} failed: {exc}"
        if done.returncode != 0:
            errors = [w for w in done.stderr.splitlines() if w.startswith("ERROR")]
            why = (errors or done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"{' '.join(argv[1:4])} exited {done.returncode}: {why[:300]}"
    stamp.write_text(wanted)
    return python, f"{MLFLOW_VENV.name} created in {time.monotonic() - start:.0f} s"


def bench_mlflow(sizes: Sizes) -> Mlflow | str:
    """MLflow's run, or why there is none."""
    python, note = mlflow_python()
    if python is None:
        return note
    print(f"  mlflow: {note}", flush=True)
    with bench_dir("mlflow") as folder:
        db = folder / "mlflow.db"
        argv = [str(python), "-c", MLFLOW_JOB, f"sqlite:///{db}", str(sizes.mlflow_points), "1000"]
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("MLFLOW_") and name != "PYTHONPATH"
        }
        env["PYTHONWARNINGS"] = "ignore"
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=1800, check=False, cwd=folder, env=env
        )
        if done.returncode != 0:
            return f"the MLflow run exited {done.returncode}: {done.stderr.strip()[-500:]}"
        result = json.loads(done.stdout.strip().splitlines()[-1])
        with contextlib.closing(sqlite3.connect(db)) as check:
            stored = check.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    if stored != sizes.mlflow_points:
        return f"MLflow stored {stored} points, not {sizes.mlflow_points}"
    return Mlflow(
        points=stored, setup_s=result["setup_s"], seconds=result["elapsed_s"], calls=result["calls"]
    )


def report_ingest(ours: Ingest, theirs: Mlflow | str) -> bool:
    rate = ours.points / ours.seconds
    line(
        "fetchml: job start -> all points durable",
        f"{fmt_rate(rate)} points/s",
        f"{ours.points:,} points in {ours.seconds:.2f} s",
    )
    line(
        "  of which the job's own track.log loop",
        f"{ours.write_s:.2f} s",
        f"{fmt_rate(ours.points / ours.write_s)} points/s written",
    )
    line("  its last write -> end reported (ingest lag)", f"{ours.lag_s:.2f} s")
    line(
        "  server CPU (with its tracking worker)",
        f"{ours.cpu_s / ours.points * 1e6:.2f} us/point",
        f"{ours.cpu_s:.2f} s in all",
    )
    met = rate >= GOAL_RATE
    if isinstance(theirs, str):
        line("baseline: MLflow log_batch, SQLite", "skipped", theirs)
        note = "MLflow skipped"
    else:
        their_rate = theirs.points / theirs.seconds
        tenth = max(1, len(theirs.calls) // 10)
        first = tenth * 1000 / sum(theirs.calls[:tenth])
        last = tenth * 1000 / sum(theirs.calls[-tenth:])
        line(
            "baseline: MLflow log_batch x1000, SQLite",
            f"{fmt_rate(their_rate)} points/s",
            f"{theirs.points:,} points in {theirs.seconds:.2f} s (+{theirs.setup_s:.1f} s set-up)",
        )
        line(
            "  first / last tenth of its calls",
            f"{fmt_rate(first)} / {fmt_rate(last)}",
            f"points/s; {median(theirs.calls) * 1e3:.0f} ms per call (median)",
        )
        ratio = rate / their_rate
        met = met and ratio >= GOAL_VS_MLFLOW
        note = f"{ratio:.1f}x MLflow (goal >= {GOAL_VS_MLFLOW:g}x)"
    line(
        "ingest goal",
        "met" if met else "MISSED",
        f">= {fmt_rate(GOAL_RATE)} points/s: {fmt_rate(rate)}; {note}",
    )
    return met


# --- 2. dispatch while a job logs flat out -------------------------------------------------------


@dataclass
class Phase:
    rates: list[float]  # jobs/s of each submit burst
    client: list[float] = field(default_factory=list)  # submit sent -> running received (s)
    server: list[float] = field(default_factory=list)  # started_at - created_at (s)

    @property
    def submit_rate(self) -> float:
        return median(self.rates)

    def __add__(self, other: Phase) -> Phase:
        return Phase(
            self.rates + other.rates, self.client + other.client, self.server + other.server
        )


def wait_idle(port: int, keys: Keys, running: int) -> None:
    """Until nothing is queued and at most ``running`` jobs run."""
    deadline = time.monotonic() + 120
    with ws(port, keys.admin) as conn:
        while time.monotonic() < deadline:
            status = conn.call({"op": "status"}).status
            assert status is not None
            counts = status["counts"]
            if not counts.get("queued") and counts.get("running", 0) <= running:
                return
            time.sleep(0.05)
    raise TimeoutError("the bench jobs did not finish within 120 s")


def submit_rate(port: int, keys: Keys, jobs: int) -> float:
    rids = itertools.count(1)
    frames = [
        [
            (
                rid,
                client_frame(
                    msgspec.msgpack.encode({"op": "submit", "id": rid, "spec": TRUE_SPEC})
                ),
            )
            for rid in itertools.islice(rids, jobs // SUBMIT_CONNECTIONS)
        ]
        for _ in range(SUBMIT_CONNECTIONS)
    ]
    result = pipelined_run(port, keys.alice, frames, window=SUBMIT_WINDOW)
    if result.errors:
        raise RuntimeError(f"{result.errors} submits failed: {result.first_error}")
    return result.rate


def dispatch_latencies(port: int, keys: Keys, jobs: int, phase: Phase) -> None:
    """Submit ``jobs`` jobs one at a time (each after the previous one ended)."""
    with ws(port, keys.alice) as events, ws(port, keys.alice) as submitter:
        events.call({"op": "subscribe"})
        sel = selectors.DefaultSelector()
        sel.register(events.sock, selectors.EVENT_READ, events)
        sel.register(submitter.sock, selectors.EVENT_READ, submitter)
        try:
            for _ in range(jobs):
                sent = time.perf_counter()
                rid = submitter.send({"op": "submit", "spec": TRUE_SPEC})
                job_id: int | None = None
                running: dict[int, float] = {}
                ended: set[int] = set()
                deadline = time.monotonic() + 30
                while job_id is None or job_id not in ended:
                    if time.monotonic() > deadline:
                        raise TimeoutError("a /bin/true job did not run within 30 s")
                    for key, _ in sel.select(timeout=1.0):
                        conn = key.data
                        frames = conn.read()
                        now = time.perf_counter()
                        for frame in frames:
                            if frame.re == rid and frame.job is not None:
                                job_id = frame.job.id
                            job = frame.job
                            if frame.ev is None or job is None:
                                continue
                            if job.state == "running" and job.id not in running:
                                running[job.id] = now
                                if job.started_at is not None:
                                    phase.server.append(job.started_at - job.created_at)
                            elif job.state in TERMINAL:
                                ended.add(job.id)
                assert job_id is not None
                phase.client.append(running[job_id] - sent)
        finally:
            sel.close()


def measure_round(port: int, keys: Keys, sizes: Sizes, running: int, phase: Phase) -> None:
    """One burst of submits, then jobs one at a time: a round's share of a phase."""
    phase.rates.append(submit_rate(port, keys, sizes.submits // ROUNDS))
    wait_idle(port, keys, running)
    dispatch_latencies(port, keys, sizes.dispatches // ROUNDS, phase)


def ingested(http: Http, job_id: int) -> int:
    try:
        return int(http.get(f"/api/v1/jobs/{job_id}/metrics")[1]["points"])
    except RuntimeError:  # 404 until the run has a track file
        return 0


@dataclass
class Dispatch:
    quiet: Phase
    busy: Phase  # while a job burns a cpu without logging (the control)
    loaded: Phase  # while a job logs flat out
    ingest_rate: float  # points/s stored from that job while measured
    halves: tuple[Phase, Phase]  # the quiet phase's first and second half (the drift)


def _background(port: int, keys: Keys, job: str, stop: Path, pause: Path) -> int:
    pause.touch()
    spec = {"command": [sys.executable, "-c", job, str(stop), str(pause)], "name": "background"}
    with ws(port, keys.alice) as conn:
        reply = conn.call({"op": "submit", "spec": spec})
    assert reply.job is not None
    return reply.job.id


def wait_caught_up(http: Http, job_id: int) -> None:
    """Until the server has stored every point the (paused) logging job wrote."""
    deadline, last = time.monotonic() + 60, -1
    while (now := ingested(http, job_id)) != last:
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not catch up with the logging job")
        last = now
        time.sleep(0.3)


def bench_dispatch(sizes: Sizes) -> Dispatch:
    """Both background jobs run for the whole benchmark, idle but for their phase; the three
    phases take turns, ROUNDS times, so that the machine's noise falls on each alike."""
    phases = {"quiet": Phase([]), "busy": Phase([]), "loaded": Phase([])}
    quiet_rounds: list[Phase] = []
    stored = 0
    logging_s = 0.0
    with (
        bench_dir("dispatch") as folder,
        fetchml_server(folder, scheduler={"cpus": SERVER_CPUS}) as (server, keys, _),
    ):
        port, stop = server.port, folder / "stop"
        warm = Phase([submit_rate(port, keys, 40)])
        wait_idle(port, keys, 0)
        dispatch_latencies(port, keys, 10, warm)
        pauses = {"busy": folder / "pause-busy", "loaded": folder / "pause-logging"}
        _background(port, keys, BUSY_JOB, stop, pauses["busy"])
        logger = _background(port, keys, LOGGER_JOB, stop, pauses["loaded"])
        http = Http(port, keys.alice)
        try:
            order = list(phases)
            for turn in range(ROUNDS):
                for name in order[turn % 3 :] + order[: turn % 3]:
                    if name in pauses:
                        pauses[name].unlink()
                        time.sleep(0.5)  # it runs (the logger: its points come in)
                    before, start = ingested(http, logger), time.monotonic()
                    round_phase = Phase([])
                    measure_round(port, keys, sizes, 2, round_phase)
                    phases[name] += round_phase
                    if name == "quiet":
                        quiet_rounds.append(round_phase)
                    if name in pauses:
                        pauses[name].touch()
                    if name == "loaded":
                        stored += ingested(http, logger) - before
                        logging_s += time.monotonic() - start
                        wait_caught_up(http, logger)
            stop.touch()
        finally:
            http.close()
        wait_idle(port, keys, 0)
    half = len(quiet_rounds) // 2
    halves = (sum(quiet_rounds[:half], Phase([])), sum(quiet_rounds[half:], Phase([])))
    return Dispatch(
        quiet=phases["quiet"],
        busy=phases["busy"],
        loaded=phases["loaded"],
        ingest_rate=stored / logging_s,
        halves=halves,
    )


def report_dispatch(d: Dispatch) -> bool:
    """The baseline is the quiet phase, measured in turns with the others (the drift shows as
    the difference between its halves)."""
    line("logging job stored meanwhile", f"{fmt_rate(d.ingest_rate)} points/s", "flat out")
    phases = (
        ("quiet (baseline)", d.quiet),
        ("cpu-bound job (control)", d.busy),
        ("logging job", d.loaded),
    )
    line(
        "submit rate: quiet / control / logging",
        " / ".join(fmt_rate(p.submit_rate) for _, p in phases),
        f"jobs/s (median of {ROUNDS} bursts each)",
    )
    base_p99 = percentile(d.quiet.client, 99)
    halves = (("quiet, first half", d.halves[0]), ("quiet, second half", d.halves[1]))
    for label, phase in phases + halves:
        p99 = percentile(phase.client, 99)
        line(
            f"submit -> running event, {label}",
            ms(phase.client),
            f"p99 {p99 * 1e3:.1f} ms = {p99 / base_p99:.2f}x",
        )
    line(
        "  of which started_at - created_at, p99",
        " / ".join(f"{percentile(p.server, 99) * 1e3:.1f}" for _, p in phases),
        "ms (the scheduler's own pass): quiet / control / logging",
    )
    p99_ratio = percentile(d.loaded.client, 99) / base_p99
    rate_ratio = d.loaded.submit_rate / d.quiet.submit_rate
    busy_ratio = d.busy.submit_rate / d.quiet.submit_rate
    line(
        "logging job vs quiet: p99 / submit rate",
        f"{p99_ratio:.2f}x / {rate_ratio:.2f}x",
        f"cpu-bound control: {percentile(d.busy.client, 99) / base_p99:.2f}x / {busy_ratio:.2f}x",
    )
    met = p99_ratio <= 1 + GOAL_DRIFT and rate_ratio >= 1 - GOAL_DRIFT
    line(
        "dispatch-under-ingest goal",
        "met" if met else "MISSED",
        f"both within {GOAL_DRIFT:.0%} of quiet",
    )
    return met


# --- 3. queries ----------------------------------------------------------------------------------


def spike_value(step: int) -> float:
    return 1.0 / (1.0 + step * 1e-4) + (50.0 if step % 99_991 == 777 else 0.0)


async def populate_jobs(data_dir: Path, jobs: int) -> None:
    """``jobs`` succeeded jobs of alice's: 1 the series' run, 2.. the experiment's runs."""
    store = await Store.open(data_dir)
    try:
        batch = JobBatch()
        now = time.time()
        for _ in range(jobs):
            job_id = store.allocate_job_id()
            spec = JobSpec(
                command=["/bin/true"],
                name=f"run-{job_id}",
                experiment=None if job_id == 1 else EXPERIMENT,
            )
            job = Job(
                id=job_id,
                user="alice",
                spec=spec,
                state=JobState.SUCCEEDED,
                seq=store.allocate_seq(),
                created_at=now,
                started_at=now,
                finished_at=now,
                attempts=1,
                exit_code=0,
            )
            batch.add(JobEvent(seq=job.seq, ts=now, job=job))
        await store.commit(batch)
    finally:
        await store.aclose()


def populate_tracking(data_dir: Path, series_points: int, runs: int) -> tuple[float, float]:
    """Seconds to store the series, and the runs (through TrackingStore, as ingest does)."""
    store = TrackingStore(data_dir, synchronous="normal")
    try:
        start = time.perf_counter()
        store.register(1, "alice", experiment=None, name="big", narrative={}, track_file=None)
        per_batch = 50_000
        for first in range(0, series_points, per_batch):
            steps = range(first, min(series_points, first + per_batch))
            points = [("loss", step, spike_value(step), 1.0e9 + step) for step in steps]
            store.ingest(
                1, Batch(points=points), offset=0, next_step=steps[-1] + 1, max_points=10**8
            )
        store.mark_ended(1)
        series_s = time.perf_counter() - start
        start = time.perf_counter()
        for job_id in range(2, runs + 2):
            store.register(
                job_id,
                "alice",
                experiment=EXPERIMENT,
                name=f"run-{job_id}",
                narrative={},
                track_file=None,
            )
            # Distinct values, in no order of job id.
            spread = (job_id * 7919) % 10_007 / 10_007
            points = [(f"m{k:02d}", 0, spread + k, 1.0e9) for k in range(RUN_METRICS)]
            params = {"lr": round(1e-4 * (1 + job_id % 17), 6), "seed": job_id}
            store.ingest(
                job_id, Batch(points=points, params=params), offset=0, next_step=1, max_points=100
            )
            store.mark_ended(job_id)
        return series_s, time.perf_counter() - start
    finally:
        store.close()


@dataclass
class Queries:
    series_direct: list[float]
    series_cold_s: float
    runs_direct: list[float]
    whoami: list[float]
    series_http: list[float]
    runs_http: list[float]
    runs_http_admin: list[float]


def check_series(body: dict[str, Any], points: int) -> None:
    spikes = sum(1 for step in range(777, points, 99_991))
    if body["count"] != points or not 0 < len(body["step"]) <= BUCKETS:
        raise RuntimeError(f"series: count {body['count']}, {len(body['step'])} buckets")
    if sum(1 for value in body["max"] if value > 40) != spikes:
        raise RuntimeError("series: a spike did not survive downsampling")


def check_runs(body: dict[str, Any]) -> None:
    runs = body["runs"]
    lasts = [run["metrics"][SORT_BY]["last"] for run in runs]
    if len(runs) != 50 or lasts != sorted(lasts, reverse=True) or body["next"] is None:
        raise RuntimeError(
            f"runs: {len(runs)} runs, sorted: {lasts == sorted(lasts, reverse=True)}"
        )
    if any(run["state"] != "succeeded" for run in runs):
        raise RuntimeError("runs: a run without its job's state")


def bench_queries(sizes: Sizes) -> Queries:
    with bench_dir("queries") as folder:
        data_dir = folder / "data"
        start = time.perf_counter()
        trio.run(populate_jobs, data_dir, sizes.runs + 1)
        jobs_s = time.perf_counter() - start
        series_s, runs_s = populate_tracking(data_dir, sizes.series_points, sizes.runs)
        print(
            f"  populated: {sizes.runs + 1:,} jobs in {jobs_s:.1f} s, a {sizes.series_points:,}-"
            f"point series in {series_s:.1f} s, {sizes.runs:,} runs x {RUN_METRICS} metrics in "
            f"{runs_s:.1f} s",
            flush=True,
        )
        store = TrackingStore(data_dir)
        try:
            direct = []
            for _ in range(sizes.requests + 1):
                began = time.perf_counter()
                found = store.series(1, "loss", buckets=BUCKETS, start=None, end=None)
                direct.append(time.perf_counter() - began)
            assert found is not None
            check_series(msgspec.to_builtins(found), sizes.series_points)
            runs_direct = []
            for _ in range(sizes.requests):
                began = time.perf_counter()
                store.experiment_runs(EXPERIMENT, "alice", sort=SORT_BY, descending=True, limit=50)
                runs_direct.append(time.perf_counter() - began)
        finally:
            store.close()
        with fetchml_server(folder, scheduler={"cpus": 1}) as (server, keys, _):
            alice, admin = Http(server.port, keys.alice), Http(server.port, keys.admin)
            try:
                series_path = f"/api/v1/jobs/1/metrics/loss?points={BUCKETS}"
                runs_path = f"/api/v1/experiments/{EXPERIMENT}/runs?sort={SORT_BY}&limit=50"
                check_series(alice.get(series_path)[1], sizes.series_points)
                check_runs(alice.get(runs_path)[1])
                check_runs(admin.get(runs_path)[1])
                timings: dict[str, list[float]] = {
                    "whoami": [],
                    "series": [],
                    "runs": [],
                    "admin": [],
                }
                for _ in range(sizes.requests):  # interleaved: drift hits all alike
                    timings["whoami"].append(alice.get_raw("/api/v1/whoami")[0])
                    timings["series"].append(alice.get_raw(series_path)[0])
                    timings["runs"].append(alice.get_raw(runs_path)[0])
                    timings["admin"].append(admin.get_raw(runs_path)[0])
            finally:
                alice.close()
                admin.close()
    return Queries(
        series_direct=direct[1:],
        series_cold_s=direct[0],
        runs_direct=runs_direct,
        whoami=timings["whoami"],
        series_http=timings["series"],
        runs_http=timings["runs"],
        runs_http_admin=timings["admin"],
    )


def report_queries(q: Queries, sizes: Sizes) -> bool:
    line("baseline: GET /api/v1/whoami", ms(q.whoami))
    line(
        f"TrackingStore.series, {sizes.series_points:,} -> {BUCKETS}",
        ms(q.series_direct),
        f"first (cold) {q.series_cold_s * 1e3:.1f} ms",
    )
    line(f"GET .../metrics/loss?points={BUCKETS}", ms(q.series_http), "round trip")
    line(f"TrackingStore.experiment_runs, {sizes.runs:,} runs", ms(q.runs_direct), "51 rows")
    line(f"GET .../runs?sort={SORT_BY}&limit=50 (owner)", ms(q.runs_http), "round trip")
    line(f"GET .../runs?sort={SORT_BY}&limit=50 (admin)", ms(q.runs_http_admin), "round trip")
    series_ms = median(q.series_http) * 1e3
    runs_ms = max(median(q.runs_http), median(q.runs_http_admin)) * 1e3
    met = median(q.series_direct) * 1e3 < GOAL_SERIES_MS and runs_ms < GOAL_RUNS_MS
    line(
        "query goals (medians)",
        "met" if met else "MISSED",
        f"series {median(q.series_direct) * 1e3:.1f} ms server ({series_ms:.1f} round trip) "
        f"< {GOAL_SERIES_MS:g}; runs {runs_ms:.1f} ms < {GOAL_RUNS_MS:g}",
    )
    return met


def main() -> int:
    sizes, quick, parts = _args()
    title = (
        f"bench_tracking{' (quick)' if quick else ''}: ingest of {sizes.steps * METRICS:,} points, "
        f"dispatch under ingest, queries over {sizes.runs:,} runs"
    )
    results = []
    with bench_session(title):
        if 1 in parts:
            print("1. ingest: one job logs 10 metrics per step as fast as it can", flush=True)
            ours = bench_ingest(sizes)
            theirs = bench_mlflow(sizes)
            results.append(report_ingest(ours, theirs))
        if 2 in parts:
            print("2. dispatch while a job logs flat out", flush=True)
            results.append(report_dispatch(bench_dispatch(sizes)))
        if 3 in parts:
            print("3. queries", flush=True)
            results.append(report_queries(bench_queries(sizes), sizes))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
