"""Benchmark of snapshots: ``ml queue`` of a 2,000-file / 200 MiB project, each figure next to a
baseline measured on the same server, the same disk, in the same run.

Run: ``python bench/bench_snapshots.py [--quick]`` (``--quick``: a 200-file / 20 MiB tree and
fewer repeats, a smoke run).  One ``fetchml serve`` subprocess (bcrypt-4 keys for an admin and
ten researchers ``u00``..``u09``, ``limits.enabled: false``, one cpu, the default snapshot
settings: parts of 8 MiB) serves every phase; its data dir and the projects are in one session
folder on disk (``_common.bench_root``: ``/var/tmp``, not a tmpfs ``/tmp``).  The project is
generated: many small "source" files (0.2 to 25 kB) in nested folders and a few large binaries
(about 90% of the bytes), content from a seeded generator (slices of a seeded random pool behind
a unique header per file: every file is a distinct blob, nothing compresses), flushed to disk
(``sync``) before it is timed.  Between timed steps the disk is flushed too, so that no step pays
for the writeback of the one before.

1. First queue: ``ml queue --json --root DIR -- true`` (a real ``ml`` subprocess, cold hash cache
   in a fresh ``XDG_CACHE_HOME``: it hashes every file, plans, sends packs and parts on two
   connections, commits, submits) against **tar + curl** of the same tree to the same server.
   The baseline has the server receive and store the same bytes through the same code: the tar
   is one large blob uploaded the way ``ml`` uploads a large file - ``POST
   /api/v1/snapshots/plan`` with a one-file manifest (so the blob is announced), ``PUT
   /api/v1/blobs/{sha256}?offset=&total=`` per 8 MiB part (the server's ``part_bytes``: no route
   takes a larger body) on one keep-alive connection of one ``curl``, then ``POST
   /api/v1/snapshots`` (the server checks the blob, ``syncfs``, registers), so both end durable.
   Its timed steps: ``tar c | (sha256 + cut into parts, in this process)`` (the plan needs the
   hash before any byte is sent, as ``ml``'s does; the parts go to ``/dev/shm``, so that the
   baseline's flush writes only the blob, as ``ml``'s does), curl plan, curl parts, curl commit.
   A discard-the-body route would be cheaper but would not write the disk nor verify the hash:
   it would not be the same work.  Each repeat uses a fresh tree (another seed), so each first
   queue really uploads; the order of the two alternates.  Goal: queue <= 1.5x tar+curl.
2. Second queue: one small file edited, ``ml queue`` again (warm hash cache): the bytes it sent
   (``uploaded_bytes`` of ``--json``) and its wall time, against the tree's size (goal <= 1%)
   and the first queue's median (goal <= 10%); and against a bare ``ml whoami`` (what any
   ``ml`` command costs: start-up, connect, one request), interleaved with it.
3. Dispatch to process start: jobs whose command is ``date +%s.%N``, run one at a time (the
   server's cpu free), each timed as *the wall clock ``date`` reads when it starts* minus *the
   job's ``started_at`` as the server recorded it* (the scheduler stamps ``started_at`` when it
   dispatches, before the executor makes the working copy, spawns the supervisor shell, which
   ``cd``s into the copy and execs ``date``).  Jobs on the 200 MiB snapshot already on the
   server, interleaved with the baseline: the same job without a snapshot (no working copy).
   p50 and p90 of each; the difference of the p50s over the snapshot's size is the cost per GB.
4. Storage: 100 queues of the same tree (already stored: the first copy is excluded) by the ten
   users, ten each (``fetchml.client``: ``snapshot`` then ``submit``, one at a time: concurrent
   snapshots in one process would share the hash cache file), while a ``sleep`` job holds the
   only cpu so nothing starts and no working copy is made.  Growth of ``du -sb`` of ``blobs/``,
   ``snapshots.db*`` and ``fetchml.db*`` (the WAL files included); the databases' logical sizes
   (``page_count * page_size``, read-only) are shown too, as WAL files grow and shrink by
   checkpoints.  Goal: growth <= 1 MB (10**6 bytes) beyond the first copy.

Exits 1 if a goal is missed (as the core benches do).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from _common import bench_dir, bench_session, create_cost_us, line, median, percentile
from _gateway_common import HOST, Server, free_port

import fetchml.client
from fetchml._config import SnapshotSettings
from fetchml.auth import generate_key, hash_key
from fetchml.errors import FetchMLError

BIN = Path(sys.executable).parent
# The ml command to measure (split like a shell would), e.g. a patched one: the venv's by default.
ML = shlex.split(os.environ.get("FETCHML_BENCH_ML", "")) or [str(BIN / "ml")]
ROUNDS = 4  # bcrypt cost of the bench keys
USERS = [f"u{n:02d}" for n in range(10)]
MiB = 1 << 20
PART_BYTES = SnapshotSettings().part_bytes  # the server runs the default snapshot settings

FIRST_GOAL_RATIO = 1.5
SECOND_GOAL_BYTES = 0.01  # of the tree
SECOND_GOAL_TIME = 0.10  # of the first queue
STORAGE_GOAL_BYTES = 1_000_000
QUEUES_PER_USER = 10
MAX_ATTEMPTS = 10


@dataclass(frozen=True)
class Shape:
    """The generated project and how many times each figure is measured."""

    small_files: int
    large_files: int
    total_bytes: int
    first_repeats: int
    edits: int
    dispatch_jobs: int
    users: int

    @property
    def files(self) -> int:
        return self.small_files + self.large_files


FULL = Shape(1990, 10, 200 * MiB, first_repeats=3, edits=5, dispatch_jobs=10, users=10)
QUICK = Shape(198, 2, 20 * MiB, first_repeats=2, edits=3, dispatch_jobs=4, users=3)


# --- the project ---------------------------------------------------------------------------------


def generate_tree(root: Path, shape: Shape, seed: int) -> list[Path]:
    """Write the project under ``root`` (deterministic for ``seed``); its small files."""
    rng = random.Random(seed)
    pool = rng.randbytes(4 * MiB)
    small_sizes = [rng.randint(200, 25_000) for _ in range(shape.small_files)]
    rest = shape.total_bytes - sum(small_sizes)
    weights = [index + 1 for index in range(shape.large_files)]
    large_sizes = [rest * w // sum(weights) for w in weights]
    large_sizes[-1] += rest - sum(large_sizes)

    def content(path: str, size: int) -> bytes:
        out = bytearray(f"# {seed} {path}\n".encode())
        while len(out) < size:
            start = rng.randrange(len(pool))
            out += pool[start : start + size - len(out)]
        return bytes(out[:size])

    small = []
    for index, size in enumerate(small_sizes):
        relative = f"src/pkg{index % 20:02d}/sub{index % 7}/mod{index:04d}.py"
        small.append(_write(root, relative, content(relative, size)))
    for index, size in enumerate(large_sizes):
        relative = f"data/weights{index:02d}.bin"
        _write(root, relative, content(relative, size))
    return small


def _write(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --- the server ----------------------------------------------------------------------------------


@dataclass
class Setup:
    """The running server and what the clients need."""

    url: str
    keys: dict[str, str]  # user -> API key ("admin" and USERS)
    data_dir: Path
    folder: Path
    xdg: Path = field(init=False)

    def __post_init__(self) -> None:
        self.xdg = self.folder / "xdg-config"
        self.xdg.mkdir(exist_ok=True)

    def env(self, user: str, cache: Path) -> dict[str, str]:
        """The environment of an ``ml`` run as ``user`` with the hash cache in ``cache``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHML_")}
        env.update(
            FETCHML_URL=self.url,
            FETCHML_API_KEY=self.keys[user],
            XDG_CACHE_HOME=str(cache),
            XDG_CONFIG_HOME=str(self.xdg),
        )
        return env


def _auth_file(path: Path) -> dict[str, str]:
    keys = {name: generate_key()[1] for name in ["admin", *USERS]}
    lines = ["auth:", "  enabled: true", "  api_keys:"]
    for name, key in keys.items():
        lines += [f"    {name}:", f'      hash: "{hash_key(key, ROUNDS)}"']
        lines.append("      admin: true" if name == "admin" else "      roles: [researcher]")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return keys


@contextlib.contextmanager
def fetchml_serve(folder: Path) -> Iterator[Setup]:
    """``fetchml serve --config`` in a child process: one cpu, no gpus, limits off."""
    port = free_port()
    data_dir = folder / "data"
    keys = _auth_file(folder / "auth.yaml")
    config = {
        "data_dir": str(data_dir),
        "auth_file": str(folder / "auth.yaml"),
        "server": {"host": HOST, "port": port},
        "scheduler": {"cpus": 1, "gpus": []},
        "executor": {"kill_grace_s": 1.0},
        "logging": {"level": "warning"},
        "limits": {"enabled": False},
    }
    config_path = folder / "server.json"  # JSON is YAML
    config_path.write_text(json.dumps(config))
    argv = [str(BIN / "fetchml"), "serve", "--config", str(config_path)]
    server = Server("fetchml", argv, port, folder / "server.log")
    try:
        server.start()
        yield Setup(f"http://{HOST}:{port}", keys, data_dir, folder)
    finally:
        server.stop()


async def _hold_cpu(setup: Setup) -> int:
    """Start a long job (admin's) that takes the only cpu; its id once it runs."""
    async with fetchml.client.connect(setup.url, setup.keys["admin"]) as client:
        job = await client.submit({"command": ["sleep", "600"], "resources": {"cpus": 1}})
        with trio.fail_after(30):
            while True:
                if (await client.get(job.id)).state.value == "running":
                    return job.id
                await trio.sleep(0.05)


async def _cancel_all(setup: Setup) -> None:
    """Cancel every queued or running job and wait until none is running."""
    async with fetchml.client.connect(setup.url, setup.keys["admin"]) as client:
        while jobs := await client.list(state=["queued", "running"], limit=1000):
            for job in jobs:
                with contextlib.suppress(FetchMLError):
                    await client.cancel(job.id)
            await trio.sleep(0.05)


def sync() -> None:
    os.sync()


# --- 1. the first queue against tar + curl ------------------------------------------------------


class MlFailed(RuntimeError):
    """An ``ml`` command that exited non-zero: its stderr, and how long it ran."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def run_ml(argv: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run ``ml ARGV``; (wall seconds, stdout).  Raises :class:`MlFailed` if it fails."""
    start = time.perf_counter()
    done = subprocess.run(
        [*ML, *argv], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise MlFailed(f"ml {argv[0]} exited {done.returncode}: {done.stderr.strip()}", elapsed)
    return elapsed, done.stdout


@dataclass
class Queued:
    """One ``ml queue``: wall seconds of every attempt together, the ``snapshot`` it printed
    (``uploaded_bytes``: of the attempt that succeeded), and why the attempts before failed."""

    seconds: float
    snapshot: dict[str, Any]
    failures: list[str]


def ml_queue(setup: Setup, tree: Path, cache: Path, user: str = "u00") -> Queued:
    """``ml queue --json --root TREE -- true``, run again (as a user would: the upload resumes)
    while it fails, at most MAX_ATTEMPTS times."""
    argv = ["queue", "--json", "--root", str(tree), "--", "true"]
    failures: list[str] = []
    spent = 0.0
    for _ in range(MAX_ATTEMPTS):
        try:
            elapsed, out = run_ml(argv, setup.env(user, cache), tree)
        except MlFailed as exc:
            failures.append(str(exc))
            spent += exc.seconds
            continue
        return Queued(spent + elapsed, json.loads(out)["snapshot"], failures)
    raise RuntimeError(f"ml queue failed {MAX_ATTEMPTS} times; the last: {failures[-1]}")


@dataclass
class TarCurl:
    """The steps of one tar + curl upload, in seconds."""

    tar: float
    plan: float
    parts: float
    commit: float
    bytes: int

    @property
    def total(self) -> float:
        return self.tar + self.plan + self.parts + self.commit


def _curl(args: Sequence[str]) -> list[str]:
    """Run one curl (``-w`` prints each response's status); the statuses."""
    argv = ["curl", "-sS", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr}")
    return done.stdout.split()


def tar_curl(setup: Setup, tree: Path, scratch: Path, user: str = "u00") -> TarCurl:
    """Upload ``tree`` as one tar blob in parts through curl (see the module docstring)."""
    header = scratch / "auth.txt"  # the key travels in a file curl reads, not in argv
    header.write_text(f"Authorization: Bearer {setup.keys[user]}\n")
    parts_dir = Path(tempfile.mkdtemp(prefix="parts-", dir=_parts_root(scratch)))
    try:
        start = time.perf_counter()
        digest = hashlib.sha256()
        size = 0
        parts: list[Path] = []
        tar = subprocess.Popen(["tar", "c", "-C", str(tree), "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        handle = None
        try:
            while chunk := tar.stdout.read(MiB):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    if handle is None or handle.tell() >= PART_BYTES:
                        if handle is not None:
                            handle.close()
                        parts.append(parts_dir / f"p{len(parts):05d}")
                        handle = parts[-1].open("wb")
                    room = PART_BYTES - handle.tell()
                    handle.write(view[:room])
                    view = view[room:]
                size += len(chunk)
        finally:
            if handle is not None:
                handle.close()
        if tar.wait() != 0:
            raise RuntimeError("tar failed")
        sha = digest.hexdigest()
        manifest = scratch / "manifest.json"
        entry = {"path": "tree.tar", "mode": 0o644, "size": size, "sha256": sha}
        manifest.write_text(json.dumps({"files": [entry]}))
        tar_s = time.perf_counter() - start

        common = ["-H", f"@{header}", "-o", "/dev/null", "-w", "%{http_code}\\n"]
        json_body = ["-H", "Content-Type: application/json", "--data-binary", f"@{manifest}"]
        start = time.perf_counter()
        status = _curl([*common, *json_body, f"{setup.url}/api/v1/snapshots/plan"])
        plan_s = time.perf_counter() - start
        if status != ["200"]:
            raise RuntimeError(f"plan answered {status}")

        argv: list[str] = []
        for index, part in enumerate(parts):
            if argv:
                argv.append("--next")
            url = f"{setup.url}/api/v1/blobs/{sha}?offset={index * PART_BYTES}&total={size}"
            # Expect: (empty) or curl waits a second for a 100 Continue before each large body.
            argv += [*common, "-H", "Expect:", "-X", "PUT", "-T", str(part), url]
        start = time.perf_counter()
        status = _curl(argv)
        shutil.rmtree(parts_dir)  # sent: nothing of them is left to flush
        parts_s = time.perf_counter() - start
        if status != ["200"] * len(parts):
            raise RuntimeError(f"parts answered {status}")

        start = time.perf_counter()
        status = _curl([*common, *json_body, f"{setup.url}/api/v1/snapshots"])
        commit_s = time.perf_counter() - start
        if status != ["201"]:
            raise RuntimeError(f"commit answered {status}")
        return TarCurl(tar_s, plan_s, parts_s, commit_s, size)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)


def _parts_root(scratch: Path) -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else scratch


@dataclass
class First:
    queue: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    failures: list[list[str]] = field(default_factory=list)
    baseline: list[TarCurl] = field(default_factory=list)
    tree: Path | None = None
    cache: Path | None = None
    small: list[Path] = field(default_factory=list)
    tree_bytes: int = 0


def first_queues(setup: Setup, shape: Shape, work: Path) -> First:
    result = First()
    for repeat in range(shape.first_repeats):
        tree = work / f"project-{repeat}"
        cache = work / f"cache-{repeat}"
        small = generate_tree(tree, shape, seed=repeat)
        sync()
        steps = ["ml", "tar"] if repeat % 2 == 0 else ["tar", "ml"]
        for step in steps:
            if step == "ml":
                queued = ml_queue(setup, tree, cache)
                result.queue.append(queued.seconds)
                result.sent.append(int(queued.snapshot["uploaded_bytes"]))
                result.failures.append(queued.failures)
            else:
                result.baseline.append(tar_curl(setup, tree, work))
            sync()
        result.tree, result.cache, result.small = tree, cache, small
    assert result.tree is not None
    result.tree_bytes = tree_bytes(result.tree)
    return result


def report_first(first: First, shape: Shape) -> bool:
    base = [b.total for b in first.baseline]
    q = median(first.queue)
    b = median(base)
    print(
        f"1. first queue of {shape.files:,} files / {first.tree_bytes / MiB:.0f} MiB "
        f"(cold hash cache), median of {shape.first_repeats}, each a fresh tree"
    )
    steps = (
        f"tar+sha256+cut {median([x.tar for x in first.baseline]):.2f}, "
        f"plan {median([x.plan for x in first.baseline]):.2f}, "
        f"parts {median([x.parts for x in first.baseline]):.2f}, "
        f"commit {median([x.commit for x in first.baseline]):.2f}"
    )
    line("baseline tar + curl (one blob, 8 MiB parts)", f"{b:.2f} s", "runs: " + _runs(base))
    line("  its steps (medians, s)", "", steps)
    line("  throughput", f"{first.tree_bytes / MiB / b:.0f} MiB/s")
    line("ml queue --json -- true", f"{q:.2f} s", "runs: " + _runs(first.queue))
    sent = median([float(s) for s in first.sent])
    line(
        "  sent (uploaded_bytes)",
        f"{sent / MiB:.1f} MiB",
        f"throughput {first.tree_bytes / MiB / q:.0f} MiB/s",
    )
    failed = [f for f in first.failures if f]
    if failed:
        attempts = ", ".join(str(len(f) + 1) for f in first.failures)
        line(
            "  FAILED attempts before success",
            f"{sum(len(f) for f in failed)}",
            f"attempts per queue: {attempts} (times above include them)",
        )
        print(f"    first failure: {failed[0][0][:300]}")
    met = q <= FIRST_GOAL_RATIO * b and not failed
    why = "" if met or q <= FIRST_GOAL_RATIO * b else " (too slow)"
    why = why or (" (ml queue failed)" if failed else "")
    line(
        "ratio queue / tar+curl",
        f"{q / b:.2f}",
        f"goal <= {FIRST_GOAL_RATIO:g}, no failure: {'met' if met else 'MISSED' + why}",
    )
    return met


def _runs(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# --- 2. the second queue -------------------------------------------------------------------------


@dataclass
class Second:
    queue: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    whoami: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    snapshot_id: str = ""


def second_queues(setup: Setup, shape: Shape, first: First) -> Second:
    assert first.tree is not None
    assert first.cache is not None
    result = Second()
    env = setup.env("u00", first.cache)
    run_ml(["whoami"], env, first.tree)  # warm the page cache of ml's own files
    for edit in range(shape.edits):
        target = first.small[(edit * 97) % len(first.small)]
        with target.open("ab") as handle:
            handle.write(f"# edit {edit}\n".encode())
        sync()
        elapsed, _ = run_ml(["whoami"], env, first.tree)
        result.whoami.append(elapsed)
        queued = ml_queue(setup, first.tree, first.cache)
        result.queue.append(queued.seconds)
        result.sent.append(int(queued.snapshot["uploaded_bytes"]))
        result.failures += queued.failures
        result.snapshot_id = str(queued.snapshot["id"])
        sync()
    return result


def report_second(second: Second, first: First, shape: Shape) -> bool:
    q = median(second.queue)
    first_q = median(first.queue)
    who = median(second.whoami)
    sent = max(second.sent)
    print(f"2. second queue, one small file edited (warm hash cache), median of {shape.edits}")
    line("baseline ml whoami", f"{who * 1000:.0f} ms", "runs: " + _runs_ms(second.whoami))
    line("ml queue --json -- true", f"{q * 1000:.0f} ms", "runs: " + _runs_ms(second.queue))
    line(
        "  over ml whoami",
        f"+{(q - who) * 1000:.0f} ms",
        f"{q / who:.2f}x: scan, hash the edited file, plan, send, commit",
    )
    bytes_ok = sent <= SECOND_GOAL_BYTES * first.tree_bytes
    line(
        "sent (uploaded_bytes, the largest)",
        f"{sent:,} B",
        f"{sent / first.tree_bytes:.4%} of the tree; goal <= {SECOND_GOAL_BYTES:.0%}: "
        f"{'met' if bytes_ok else 'MISSED'}",
    )
    time_ok = q <= SECOND_GOAL_TIME * first_q and not second.failures
    caveat = " (the first queue's time includes failed attempts)" if any(first.failures) else ""
    line(
        "ratio second / first queue",
        f"{q / first_q:.3f}",
        f"goal <= {SECOND_GOAL_TIME:g}: {'met' if time_ok else 'MISSED'}{caveat}",
    )
    if second.failures:
        print(
            f"    {len(second.failures)} failed attempt(s); the first: {second.failures[0][:300]}"
        )
    return bytes_ok and time_ok


def _runs_ms(values: Sequence[float]) -> str:
    return ", ".join(f"{v * 1000:.0f}" for v in values)


# --- 3. dispatch to process start ----------------------------------------------------------------


async def dispatch_delays(setup: Setup, shape: Shape, sid: str) -> tuple[list[float], list[float]]:
    """(with the snapshot, without) seconds from ``started_at`` to the process's first clock
    read, jobs run one at a time, the two kinds interleaved."""
    await _cancel_all(setup)
    with_snapshot: list[float] = []
    without: list[float] = []
    command = ["date", "+%s.%N"]
    async with fetchml.client.connect(setup.url, setup.keys["u00"]) as client:
        for index in range(shape.dispatch_jobs * 2):
            snap = (index % 4) in (0, 3)  # s b b s s b b s ...: each kind first as often
            spec: dict[str, Any] = {"command": command, "name": f"dispatch{index}"}
            if snap:
                spec["snapshot"] = sid
            job = await client.submit(spec)
            done = await client.wait(job.id)
            if done.state.value != "succeeded" or done.started_at is None:
                raise RuntimeError(f"job {job.id} ended {done.state.value}: {done.reason}")
            began = float((await client.logs(job.id)).split()[0])
            (with_snapshot if snap else without).append(began - done.started_at)
            await trio.to_thread.run_sync(sync)
    return with_snapshot, without


def report_dispatch(
    with_snapshot: list[float], without: list[float], size: int, creates: list[float]
) -> None:
    print(
        f"3. dispatch to process start (started_at -> the job's first clock read), "
        f"{len(with_snapshot)} jobs each, one at a time"
    )
    for label, values in (("baseline: no snapshot", without), ("200 MiB snapshot", with_snapshot)):
        if label.startswith("200"):
            label = f"{size / MiB:.0f} MiB snapshot (working copy)"
        line(
            label,
            f"p50 {median(values) * 1000:.0f} ms",
            f"p90 {percentile(values, 90) * 1000:.0f} ms; runs: {_runs_ms(values)}",
        )
    extra = median(with_snapshot) - median(without)
    line(
        "cost of the working copy (p50 difference)",
        f"{extra * 1000:.0f} ms",
        f"{extra / (size / 1e9):.2f} s per GB ({size / 1e9 / extra:.2f} GB/s)" if extra > 0 else "",
    )
    line(
        "  file create cost on this disk, before/after",
        " / ".join(f"{c:.0f} us" for c in creates),
        "(a copy creates a file per entry: slow creates, see _common, slow it down)",
    )


# --- 4. storage of 100 queues by 10 users --------------------------------------------------------


def _du(paths: Sequence[Path]) -> int:
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    done = subprocess.run(["du", "-sbc", *existing], capture_output=True, text=True, check=True)
    return int(done.stdout.splitlines()[-1].split()[0])


def _checkpoint(db: Path) -> int:
    """Move ``db``'s WAL into it and truncate the WAL (what SQLite's auto-checkpoint does now
    and then, but to zero; the server's connections carry on); the WAL's bytes before.

    Without it ``du`` would mostly measure where the WAL is in its cycle: it grows by a few
    pages per transaction up to 1,000 pages (4 MB), then is written over from its start."""
    wal = db.with_name(db.name + "-wal")
    size = wal.stat().st_size if wal.exists() else 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        for _ in range(50):
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"could not checkpoint {db}: busy")
    finally:
        conn.close()
    return size


def _logical(db: Path) -> int:
    """``page_count * page_size`` of ``db``: the pages it uses (free ones included)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(page)
    finally:
        conn.close()


DATABASES = ("snapshots.db", "fetchml.db")


def storage(data_dir: Path) -> dict[str, int]:
    """``du -sb`` of ``blobs/`` and of each database (``-wal``/``-shm`` included, WAL
    checkpointed first), each database's WAL size before that and logical size, and what is
    not counted (the audit log, the job folders)."""
    sync()
    sizes = {"blobs": _du([data_dir / "blobs"])}
    for name in DATABASES:
        sizes[f"{name} wal"] = _checkpoint(data_dir / name)
        sizes[name] = _du([data_dir / f"{name}{suffix}" for suffix in ("", "-wal", "-shm")])
        sizes[f"{name} logical"] = _logical(data_dir / name)
    sizes["other"] = _du([data_dir / "audit.log", data_dir / "jobs"])
    return sizes


async def many_queues(setup: Setup, shape: Shape, tree: Path) -> tuple[float, list[float]]:
    """QUEUES_PER_USER queues of ``tree`` by each of ``shape.users`` users, round robin;
    (total seconds, per-queue seconds)."""
    each: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(fetchml.client.connect(setup.url, setup.keys[user]))
            for user in USERS[: shape.users]
        ]
        start = time.perf_counter()
        for _ in range(QUEUES_PER_USER):
            for client in clients:
                began = time.perf_counter()
                snap = await client.snapshot(tree, root=tree)
                await client.submit({"command": ["true"], **snap.spec_fields()})
                each.append(time.perf_counter() - began)
        total = time.perf_counter() - start
    return total, each


def report_storage(
    before: dict[str, int], after: dict[str, int], total: float, each: list[float], shape: Shape
) -> bool:
    queues = len(each)
    print(
        f"4. storage of {queues} queues of the same tree by {shape.users} users "
        f"({QUEUES_PER_USER} each, nothing started), beyond the first copy"
    )
    line("per queue (snapshot + submit)", f"{median(each) * 1000:.0f} ms", f"{total:.1f} s in all")
    growth = {k: after[k] - before[k] for k in before}
    line("  blobs (du -sb blobs/)", f"+{growth['blobs']:,} B")
    for name in DATABASES:
        line(
            f"  {name} (du -sb {name}*)",
            f"+{growth[name]:,} B",
            f"pages in use +{growth[name + ' logical']:,} B; WAL before its checkpoint "
            f"{before[name + ' wal']:,} -> {after[name + ' wal']:,} B",
        )
    line("  not counted: audit.log, jobs/", f"+{growth['other']:,} B")
    total_growth = growth["blobs"] + sum(growth[name] for name in DATABASES)
    met = total_growth <= STORAGE_GOAL_BYTES
    line(
        "growth beyond the first copy",
        f"+{total_growth:,} B",
        f"{total_growth / queues:,.0f} B per queue; goal <= {STORAGE_GOAL_BYTES:,} B: "
        f"{'met' if met else 'MISSED'}",
    )
    return met


# --- main ----------------------------------------------------------------------------------------


def main(shape: Shape) -> int:
    with bench_dir("snapshots") as work, fetchml_serve(work) as setup:
        trio.run(_hold_cpu, setup)
        first = first_queues(setup, shape, work)
        first_ok = report_first(first, shape)
        second = second_queues(setup, shape, first)
        second_ok = report_second(second, first, shape)

        creates = [create_cost_us(work, 100)]
        with_snapshot, without = trio.run(dispatch_delays, setup, shape, second.snapshot_id)
        creates.append(create_cost_us(work, 100))
        report_dispatch(with_snapshot, without, first.tree_bytes, creates)

        assert first.tree is not None
        assert first.cache is not None
        trio.run(_hold_cpu, setup)
        os.environ["XDG_CACHE_HOME"] = str(first.cache)  # the warm cache of goals 1-2
        before = storage(setup.data_dir)
        total, each = trio.run(many_queues, setup, shape, first.tree)
        after = storage(setup.data_dir)
        storage_ok = report_storage(before, after, total, each, shape)
        trio.run(_cancel_all, setup)
    print(
        "goals: "
        + ", ".join(
            f"{name} {'met' if ok else 'MISSED'}"
            for name, ok in (("first", first_ok), ("second", second_ok), ("storage", storage_ok))
        )
    )
    return 0 if first_ok and second_ok and storage_ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 200-file / 20 MiB smoke run")
    options = parser.parse_args()
    chosen = QUICK if options.quick else FULL
    with bench_session(
        f"bench_snapshots: {chosen.files:,} files / {chosen.total_bytes / MiB:.0f} MiB, "
        f"one fetchml serve, {'quick' if options.quick else 'full'} run"
    ):
        sys.exit(main(chosen))
