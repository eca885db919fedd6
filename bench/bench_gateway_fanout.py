"""Benchmark: event fan-out to 1,000 WebSocket subscribers while jobs change state.

1,000 subscribers (half the admin, half a researcher, both see every job of the bench user) each
``subscribe`` to all the jobs they may see, over their own WebSocket, spread over client worker
processes.  Meanwhile one more connection submits ``/bin/true`` jobs at a steady rate; each job
makes 3 events (queued, running, succeeded), so 33 jobs/s is ~100 state changes/s.  Measured:
the latency of every event at every subscriber, from the moment the scheduler changed the job's
state to the moment the subscriber read the frame, p50 / p99; how many subscribers were dropped
(closed by the server as too slow) or had not received every event when the run ended.

The event frame on the wire has no ``ts``, so the state change's time is read from the job in the
frame: ``created_at`` (queued), ``started_at`` (running), taken in the same scheduler pass as the
event's ``ts`` just before the commit, and ``finished_at`` (ended), taken earlier, when the
executor saw the process exit, so ended-event latencies also include reporting the exit.

Subscribers opt in to batching (``batch: true`` on ``subscribe``): the job events already waiting
for a subscriber come in one ``jobs`` frame, so a busy server sends each subscriber fewer frames;
``--no-batch`` subscribes as an old client does (one ``job`` frame per event).

The gateway paces batching subscriptions (a frame per 0.1 s tick at most, everything waiting in
it: ``fetchml/gateway/_pacing.py``), so an event can wait up to a tick behind the last frame.

Each rate runs on a fresh server and fresh subscribers: the first rate is the goal's (~100 events
per second, submitted for 15 s), the others (10 s each) show what this machine sustains.  The
baselines, at the first rate, with the same clients: a bare QuartTrio app on hypercorn that answers
each submit and fans 3 events out to every subscriber with the notifier's policy (a bounded buffer
per subscriber, closed when it overflows), once with the gateway's old per-subscriber encoding of
one frame per event (what this stack delivers at all), once batched (what batching alone can make
of it), once batched and paced with the gateway's pacer (what the gateway's way makes of it).  The
events a run generated are counted, not assumed: the store's last seq for fetchml, three per
answered submit for the bare app (one that starves its submitter generates fewer).  Also printed:
frames and events delivered per second and the server's CPU per frame, from which the rate the
machine can sustain follows.

Goal (issue 3): p99 < 250 ms and nobody dropped, with 1,000 subscribers at ~100 state changes/s.
Run: ``.venv/bin/python bench/bench_gateway_fanout.py [--rates 100,10] [--subscribers 1000]
[--no-batch]``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import selectors
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from _common import fmt_rate, line
from _gateway_common import (
    FrameParser,
    Keys,
    Server,
    bare_server,
    client_frame,
    close_reason,
    close_ws,
    fetchml_server,
    raise_fd_limit,
    session,
    ws_call,
    ws_connect,
)

SUBSCRIBERS = 1_000
WORKERS = 2
RATES = (100.0, 10.0)  # state changes (events) per second
EVENTS_PER_JOB = 3
FIRST_DURATION_S = 15.0  # the goal's rate
DURATION_S = 10.0  # the other rates
REPLIES_TIMEOUT_S = 5.0  # after the last submit, for the submit replies
JOBS_DONE_TIMEOUT_S = 5.0  # then, for every job to end
CATCH_UP_S = 5.0  # then, for the subscribers to get the last event
GOAL_P99_MS = 250.0
GOAL_GENERATED = 0.9  # of the events asked for: a server that generates fewer has not kept up
BIN_S = 1e-4  # latency histogram resolution
BARE_KEY = "not-checked"
JOB_SPEC = {"command": ["/bin/true"], "resources": {"cpus": 1}}


class _JobTimes(msgspec.Struct):
    state: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class _Entry(msgspec.Struct):
    """A job event: an event frame, or one of the ``events`` of a ``jobs`` frame."""

    seq: int | None = None
    ts: float | None = None
    job: _JobTimes | None = None


class _Frame(_Entry):
    ev: str | None = None
    re: int | None = None
    ok: bool = True
    since: int | None = None
    error: Any = None
    events: list[_Entry] | None = None


_decode = msgspec.msgpack.Decoder(_Frame).decode


def _job_events(frame: _Frame) -> list[_Entry]:
    """The job events of a frame: itself (``job``), its entries (``jobs``), or none."""
    if frame.ev == "jobs" and frame.events is not None:
        return frame.events
    if frame.ev == "job" and frame.seq is not None:
        return [frame]
    return []


def _changed_at(frame: _Entry) -> tuple[str, float]:
    """(kind, wall time of the state change) of a job event."""
    if frame.ts is not None:
        return "ts", frame.ts
    job = frame.job
    assert job is not None
    if job.state == "queued":
        return "queued", job.created_at
    if job.state == "running":
        return "running", job.started_at or job.created_at
    return "ended", job.finished_at or job.started_at or job.created_at


# --- subscriber worker process -------------------------------------------------------------------


@dataclass(eq=False)
class _Sub:
    sock: socket.socket
    parser: FrameParser
    since: int = -1
    seq: int = -1
    events: int = 0
    gone: str | None = None


@dataclass
class WorkerResult:
    hist: dict[str, Counter[int]] = field(default_factory=dict)
    events: list[int] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    behind: int = 0
    last_rx: float = 0.0  # wall time of the last event read
    frames: int = 0  # event frames read (each with one or more job events)


def subscriber_worker(
    port: int,
    path: str,
    keys: list[str],
    batch: bool,
    pace: bool,
    pipe: multiprocessing.connection.Connection,
) -> None:
    """Connect and subscribe ``len(keys)`` subscribers, read events until told to finish;
    ``pace`` asks the bare app to pace (the gateway paces batching subscriptions itself)."""
    raise_fd_limit()
    subs = []
    request: dict[str, Any] = {"op": "subscribe", "id": 1, "batch": batch}
    if pace:
        request["pace"] = True
    subscribe = msgspec.msgpack.encode(request)
    for key in keys:
        sock, rest = ws_connect(port, key, path=path)
        sock.sendall(client_frame(subscribe))
        subs.append(_Sub(sock, FrameParser(rest)))
    for sub in subs:  # the subscribe replies (a reply comes before any event)
        frames = sub.parser.feed(b"")
        while not frames:
            frames = sub.parser.feed(sub.sock.recv(65536))
        reply = _decode(frames[0][1])
        if frames[0][0] != 2 or not reply.ok or reply.since is None:
            raise RuntimeError(f"subscribe failed: {reply}")
        sub.since = sub.seq = reply.since
        sub.sock.setblocking(False)
    pipe.send("ready")
    result = WorkerResult(hist={})
    sel = selectors.DefaultSelector()
    for sub in subs:
        sel.register(sub.sock, selectors.EVENT_READ, sub)
    sel.register(pipe, selectors.EVENT_READ, None)
    target: int | None = None
    deadline = math.inf
    next_check = 0.0
    hist = result.hist
    while True:
        for selected, _ in sel.select(timeout=0.2):
            sub = selected.data
            if sub is None:
                target, grace = pipe.recv()
                deadline = time.monotonic() + grace
                continue
            try:
                data = sub.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError as exc:
                data, sub.gone = b"", f"error {exc}"
            now = time.time()
            if not data:
                sub.gone = sub.gone or "connection closed"
                sel.unregister(sub.sock)
                continue
            for opcode, payload in sub.parser.feed(data):
                if opcode == 8:
                    sub.gone = f"closed {close_reason(payload)}"
                    sel.unregister(sub.sock)
                    break
                events = _job_events(_decode(payload))
                if not events:
                    continue
                result.frames += 1
                for event in events:
                    kind, changed = _changed_at(event)
                    bins = hist.get(kind)
                    if bins is None:
                        bins = hist[kind] = Counter()
                    bins[int((now - changed) / BIN_S)] += 1
                    assert event.seq is not None
                    sub.seq = event.seq
                sub.events += len(events)
                result.last_rx = now
        if target is not None:
            now_m = time.monotonic()
            if now_m >= next_check:
                next_check = now_m + 0.2
                if now_m > deadline or all(s.gone or s.seq >= target for s in subs):
                    break
    sel.close()
    result.events = [s.events for s in subs]
    result.gone = [s.gone for s in subs if s.gone]
    result.behind = sum(1 for s in subs if not s.gone and target is not None and s.seq < target)
    for sub in subs:
        if not sub.gone:
            close_ws(sub.sock)
        else:
            sub.sock.close()
    pipe.send(result)


# --- one rate ------------------------------------------------------------------------------------


@dataclass
class RateResult:
    target: str
    batch: bool
    pace: bool
    target_rate: float
    event_rate: float
    jobs: int
    events: int
    subscribers: int
    hist: dict[str, Counter[int]]
    gone: list[str]
    behind: int
    min_events: int
    # first submit to last event read: server CPU seconds per second, frames and job events
    # delivered per second
    server_cpu: float
    frame_rate: float
    delivery_rate: float
    submitted: Submitted

    def pct_ms(self, pct: float, kinds: tuple[str, ...] | None = None) -> float:
        merged: Counter[int] = Counter()
        for kind, bins in self.hist.items():
            if kinds is None or kind in kinds:
                merged.update(bins)
        total = sum(merged.values())
        if not total:
            return math.nan
        rank = max(1, math.ceil(pct / 100 * total))
        seen = 0
        for index in sorted(merged):
            seen += merged[index]
            if seen >= rank:
                return (index + 0.5) * BIN_S * 1e3
        return math.nan


@dataclass
class Submitted:
    count: int
    send_s: float  # first to last submit
    errors: int = 0
    unanswered: int = 0  # no reply within REPLIES_TIMEOUT_S of the last submit


def submit_steadily(
    port: int, path: str, key: str, jobs_per_s: float, duration: float
) -> Submitted:
    """Submit jobs at a steady rate for ``duration`` s on one WebSocket."""
    sock, rest = ws_connect(port, key, path=path)
    parser = FrameParser(rest)
    sock.setblocking(False)
    count = max(1, int(duration * jobs_per_s))
    answered = errors = 0
    start = time.monotonic()
    try:
        for index in range(count):
            due = start + index / jobs_per_s
            while True:
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                ready, _, _ = select.select([sock], [], [], wait)
                if ready:
                    answered, errors = _read_replies(sock, parser, answered, errors)
            frame = {"op": "submit", "id": index + 10, "spec": JOB_SPEC}
            sock.setblocking(True)
            sock.sendall(client_frame(msgspec.msgpack.encode(frame)))
            sock.setblocking(False)
        send_s = time.monotonic() - start
        deadline = time.monotonic() + REPLIES_TIMEOUT_S
        while answered < count and time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], 0.5)
            if ready:
                answered, errors = _read_replies(sock, parser, answered, errors)
    finally:
        close_ws(sock)
    return Submitted(count, max(send_s, 1e-3), errors, count - answered)


def _read_replies(
    sock: socket.socket, parser: FrameParser, answered: int, errors: int
) -> tuple[int, int]:
    try:
        data = sock.recv(1 << 16)
    except BlockingIOError:
        return answered, errors
    if not data:
        raise ConnectionError("the server closed the submitter's connection")
    for opcode, payload in parser.feed(data):
        if opcode == 8:
            raise ConnectionError(f"submitter closed by the server: {close_reason(payload)}")
        reply = _decode(payload)
        if reply.re is not None:
            answered += 1
            errors += 0 if reply.ok else 1
    return answered, errors


def run_rate(
    folder: Path,
    target: str,
    batch: bool,
    event_rate: float,
    subscribers: int,
    workers: int,
    duration: float,
    pace: bool = False,
) -> RateResult:
    """One run against ``target`` ("fetchml" or "bare"), on a fresh server; subscribers opt in
    to batching if ``batch`` (and ask the bare app to pace if ``pace``)."""
    with contextlib.ExitStack() as stack:
        if target == "fetchml":
            scheduler = {"cpus": 8, "memory_mb": 0}
            server, keys, _ = stack.enter_context(fetchml_server(folder, scheduler=scheduler))
            path = "/ws"
        else:
            server = stack.enter_context(bare_server(folder))
            keys, path = Keys(admin=BARE_KEY, alice=BARE_KEY), "/fanout"
        workers_ = stack.enter_context(
            _subscriber_workers(server.port, path, keys, batch, pace, subscribers, workers)
        )
        _wait_idle(server)  # every subscription attached (each first reads the store)
        first_seq = _status(server.port, keys)["last_seq"] if target == "fetchml" else 0
        cpu = server.cpu_seconds()
        start_wall = time.time()
        submitted = submit_steadily(
            server.port, path, keys.alice, event_rate / EVENTS_PER_JOB, duration
        )
        jobs = submitted.count
        if target == "fetchml":
            deadline = time.monotonic() + JOBS_DONE_TIMEOUT_S
            while True:
                status = _status(server.port, keys)
                active = sum(status["counts"].get(s, 0) for s in ("queued", "running"))
                if not active or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            last_seq = status["last_seq"]
        else:
            # The bare app announces a submit's events as it answers it.
            last_seq = (jobs - submitted.unanswered) * EVENTS_PER_JOB
        for _, pipe in workers_:
            pipe.send((last_seq, CATCH_UP_S))
        results: list[WorkerResult] = []
        for _, pipe in workers_:
            if not pipe.poll(CATCH_UP_S + 60):
                raise RuntimeError("a subscriber worker did not report")
            results.append(pipe.recv())
        cpu = server.cpu_seconds() - cpu
    hist: dict[str, Counter[int]] = {}
    for result in results:
        for kind, bins in result.hist.items():
            hist.setdefault(kind, Counter()).update(bins)
    events = last_seq - first_seq
    delivered = sum(sum(b.values()) for b in hist.values())
    last_rx = max(r.last_rx for r in results)
    busy_s = max(last_rx - start_wall, 1e-3)
    return RateResult(
        target=target,
        batch=batch,
        pace=pace,
        target_rate=event_rate,
        event_rate=events / submitted.send_s,
        jobs=jobs,
        events=events,
        subscribers=subscribers,
        hist=hist,
        gone=[g for r in results for g in r.gone],
        behind=sum(r.behind for r in results),
        min_events=min(n for r in results for n in r.events),
        server_cpu=cpu / busy_s,
        frame_rate=sum(r.frames for r in results) / busy_s,
        delivery_rate=delivered / busy_s,
        submitted=submitted,
    )


@contextlib.contextmanager
def _subscriber_workers(
    port: int, path: str, keys: Keys, batch: bool, pace: bool, subscribers: int, workers: int
) -> Iterator[list[tuple[Any, multiprocessing.connection.Connection]]]:
    """Start the subscriber processes; yield once every subscriber is subscribed."""
    context = multiprocessing.get_context("fork")
    procs: list[tuple[Any, multiprocessing.connection.Connection]] = []
    try:
        for index in range(workers):
            share = _share(keys, subscribers, workers, index)
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=subscriber_worker,
                args=(port, path, share, batch, pace, child_end),
                daemon=True,
            )
            proc.start()
            child_end.close()
            procs.append((proc, parent_end))
        for _, pipe in procs:
            if not pipe.poll(120) or pipe.recv() != "ready":
                raise RuntimeError("a subscriber worker did not get ready")
        yield procs
    finally:
        for proc, pipe in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            pipe.close()


def _wait_idle(server: Server, *, limit_s: float = 15.0) -> None:
    """Wait until the server uses under 10% of a core (or ``limit_s`` has passed)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        cpu = server.cpu_seconds()
        time.sleep(0.3)
        if server.cpu_seconds() - cpu < 0.03:
            return


def _share(keys: Keys, subscribers: int, workers: int, index: int) -> list[str]:
    """Worker ``index``'s subscriber keys: every other subscriber is the admin."""
    return [keys.admin if n % 2 == 0 else keys.alice for n in range(index, subscribers, workers)]


def _status(port: int, keys: Keys) -> dict[str, Any]:
    status = ws_call(port, keys.admin, {"op": "status", "id": 1}).status
    assert status is not None
    return status


def report(result: RateResult, load: float) -> bool:
    p50, p99 = result.pct_ms(50), result.pct_ms(99)
    generated = result.event_rate >= GOAL_GENERATED * result.target_rate
    met = p99 < GOAL_P99_MS and not result.gone and not result.behind and generated
    name = "fetchml" if result.target == "fetchml" else "baseline bare QuartTrio fan-out"
    name += ", batched" if result.batch else ", a frame per event"
    name += " and paced" if result.pace or (result.batch and result.target == "fetchml") else ""
    line(
        f"{name}, {result.target_rate:g} ev/s asked",
        f"{result.event_rate:.0f} ev/s",
        f"{result.jobs} submits -> {result.events} events x {result.subscribers} subscribers",
    )
    cpu_us = result.server_cpu / result.frame_rate * 1e6 if result.frame_rate else math.nan
    line(
        "  frames delivered",
        f"{fmt_rate(result.frame_rate)} /s",
        f"server CPU {result.server_cpu * 100:.0f}% of a core, {cpu_us:.0f} us per frame; "
        f"load average {load:.1f} at start",
    )
    per_frame = result.delivery_rate / result.frame_rate if result.frame_rate else math.nan
    line(
        "  events delivered",
        f"{fmt_rate(result.delivery_rate)} /s",
        f"{per_frame:.1f} events per frame",
    )
    line("  latency p50 / p99, all events", f"{p50:.0f} / {p99:.0f} ms")
    if result.target == "fetchml":
        for kinds in (("queued", "running"), ("ended",)):
            label = "  ... queued+running (~ event ts)" if "queued" in kinds else "  ... ended"
            line(label, f"{result.pct_ms(50, kinds):.0f} / {result.pct_ms(99, kinds):.0f} ms")
    reasons = Counter(g[:70] for g in result.gone)
    line(
        "  subscribers dropped / still behind",
        f"{len(result.gone)} / {result.behind}",
        "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3)),
    )
    line(
        "  fewest events at one subscriber",
        f"{result.min_events} of {result.events}",
        f"submit errors / unanswered: {result.submitted.errors} / {result.submitted.unanswered}",
    )
    misses = [
        what
        for what, missed in (
            (f"p99 {p99:.0f} ms", not p99 < GOAL_P99_MS),
            (f"{len(result.gone)} dropped", bool(result.gone)),
            (f"{result.behind} behind", bool(result.behind)),
            (f"{result.event_rate:.0f} of {result.target_rate:g} ev/s generated", not generated),
        )
        if missed
    ]
    verdict = "met" if met else "MISSED: " + ", ".join(misses)
    goal = f"  p99 < 250 ms, nobody dropped or behind, >= {GOAL_GENERATED:.0%} generated"
    line(goal, "", verdict)
    return met


def main(
    folder: Callable[[str], Path], rates: list[float], subscribers: int, workers: int, batch: bool
) -> int:
    """Each rate on fresh servers, the baselines at the first: the bare app a frame per event
    (and batched, and batched and paced, if ``batch``), then fetchml, its subscribers batching
    if ``batch``."""
    verdicts = []
    for index, rate in enumerate(rates):
        duration = FIRST_DURATION_S if index == 0 else DURATION_S
        runs = [("fetchml", batch, False)]
        if index == 0:
            bare = [("bare", False, False)]
            if batch:
                bare += [("bare", True, False), ("bare", True, True)]
            runs[:0] = bare
        for target, batched, paced in runs:
            load = os.getloadavg()[0]
            label = f"{target}-{'batch-' if batched else ''}{'pace-' if paced else ''}{rate:g}"
            result = run_rate(
                folder(label), target, batched, rate, subscribers, workers, duration, paced
            )
            met = report(result, load)
            if target == "fetchml":
                verdicts.append(met)
    return 0 if verdicts[0] else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rates",
        default=",".join(f"{r:g}" for r in RATES),
        help="state changes per second to try, comma-separated (the first sets the exit code)",
    )
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    parser.add_argument("--workers", type=int, default=WORKERS, help="subscriber processes")
    parser.add_argument(
        "--no-batch",
        action="store_true",
        help="subscribe without batch (a frame per event, as old clients do)",
    )
    args = parser.parse_args()
    chosen = [float(r) for r in args.rates.split(",")]
    with session(
        f"bench_gateway_fanout: {args.subscribers:,} subscribers in {args.workers} processes, "
        f"{FIRST_DURATION_S:g} s of submits at the first rate, {DURATION_S:g} s at the others"
    ) as folder_of:
        sys.exit(main(folder_of, chosen, args.subscribers, args.workers, not args.no_batch))
