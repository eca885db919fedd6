"""Benchmark of the web dashboard (issue 14) in headless Chromium, each figure next to a baseline
measured in the same run where one means something.

Run: ``python bench/bench_web.py [--events-seconds S]`` (default 20 s of events; the issue's
figure is a minute: ``--events-seconds 60``).  Needs Debian's ``chromium`` and
``chromium-driver`` and selenium (``make test`` installs them); without them it says so and
exits 0.  Servers are ``fetchml`` child processes (``_gateway_common.fetchml_server``) whose
data dirs are filled before they start (through ``fetchml.store.Store``).

1. **First load**: the bytes on the wire (``transferSize``, gzip) of everything the sign-in page
   loads, from an empty cache; baseline: the same files uncompressed.  Goal: <= 150 KB.  The job
   page's extra (uPlot, loaded only there) is shown apart.
2. **Queue first render**: from navigation start to the first page of rows drawn, with 10,000
   jobs in the store; baseline: a store of 50 jobs.  Also a name search that matches nothing
   (the server scans every job).  Goal: < 1 s.
3. **Chart**: a uPlot chart of 100,000 points, from creation to the next frame; baseline: 1,000.
   Goal: < 200 ms.
4. **A 100 MB log opens**: navigation to the job page until its last lines are drawn; baseline:
   a 1 KB log.  Goal: < 1 s.
5. **100 job events/s**: jobs queued at 100/s (each one event) while the queue page is open;
   the page's main-thread busy share (Chrome's ``TaskDuration`` over the wall time) and whether
   the newest job is on screen at the end.  Goal: < 50 % busy.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from _common import bench_dir, bench_session, line, median
from _gateway_common import Keys, Server, fetchml_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.browser import Browser, browser_problem, open_browser, wait_for

import fetchml.client
from fetchml._models import Job, JobEvent, JobSpec, JobState
from fetchml.store import Batch, Store
from fetchml.web import load_assets

QUEUE_JOBS = 10_000
LOG_BYTES = 100 * 1024 * 1024
RUNS = 3

# Resolves (through the callback) with performance.now() once ``arguments[0]`` matches at least
# ``arguments[1]`` elements, polled once a frame.
UNTIL = """
const [css, n, done] = arguments;
const check = () => document.querySelectorAll(css).length >= n
  ? done(performance.now()) : requestAnimationFrame(check);
check();
"""

CHART = """
const [points, done] = arguments;
const base = document.querySelector('script[type=module]').src.replace(/js\\/main\\.js$/, '');
const { Chart, Series, loadUPlot } = await import(base + 'js/charts.js');
await loadUPlot();
const s = new Series('loss');
for (let i = 0; i < points; i++) { s.step.push(i); s.last.push(Math.sin(i / 500) + i / points); }
s.min = s.last; s.max = s.last;
const box = document.createElement('div');
box.className = 'chart';
document.getElementById('app').appendChild(box);
const t0 = performance.now();
const chart = new Chart(box, 'bench', ['loss']);
await chart.draw([s]);
const drawn = performance.now();
await new Promise((r) => requestAnimationFrame(() => r()));
done([drawn - t0, performance.now() - t0]);
chart.destroy(); box.remove();
"""


async def _fill_store(data_dir: Path, jobs: int, log_bytes: int = 0) -> None:
    """``jobs`` succeeded jobs of alice's; job 1 gets a log of ``log_bytes`` bytes."""
    store = await Store.open(data_dir)
    try:
        batch = Batch()
        now = time.time()
        for _ in range(jobs):
            job_id = store.allocate_job_id()
            spec = JobSpec(command=["/bin/true"], name=f"run-{job_id}", experiment="bench")
            job = Job(
                id=job_id,
                user="alice",
                spec=spec,
                state=JobState.SUCCEEDED,
                seq=store.allocate_seq(),
                created_at=now - 3600,
                started_at=now - 3500,
                finished_at=now - 3400,
                attempts=1,
                exit_code=0,
            )
            batch.add(JobEvent(seq=job.seq, ts=now, job=job))
        await store.commit(batch)
    finally:
        await store.aclose()
    if log_bytes:
        log = data_dir / "jobs" / "1" / "log"
        log.parent.mkdir(parents=True, exist_ok=True)
        row = b"step 000000 loss 0.123456 \x1b[32mok\x1b[0m " + b"x" * 60 + b"\n"
        rows = log_bytes // len(row)
        with log.open("wb") as out:
            while rows > 0:
                out.write(row * min(rows, 10_000))
                rows -= 10_000


@contextlib.contextmanager
def server(
    label: str, jobs: int, log_bytes: int = 0, cpus: int = 4
) -> Iterator[tuple[Server, Keys]]:
    with bench_dir(label) as folder:
        (folder / "data").mkdir()
        trio.run(_fill_store, folder / "data", jobs, log_bytes)
        with fetchml_server(folder, scheduler={"cpus": cpus, "memory_mb": 4000}) as (srv, keys, _):
            yield srv, keys


def base_of(srv: Server) -> str:
    return f"http://127.0.0.1:{srv.port}"


def signed_in(browser: Browser, base: str, key: str, fragment: str) -> None:
    """Open ``fragment`` as a new page load with ``key`` already in session storage."""
    browser.get(base + "/#/none")
    browser.js("sessionStorage.setItem('fetchml.key', arguments[0])", key)
    browser.get(base + f"/?{time.monotonic_ns()}#/{fragment}")


def first_load(browser: Browser) -> None:
    with server("load", 1) as (srv, _keys):
        base = base_of(srv)
        browser.driver.execute_cdp_cmd("Network.enable", {})
        browser.driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        browser.get(base + "/")
        wait_for(lambda: browser.js("return !document.getElementById('signin-view').hidden"))
        sizes = browser.js(
            "return performance.getEntriesByType('navigation').concat("
            "performance.getEntriesByType('resource'))"
            ".map(e => [e.name, e.transferSize, e.decodedBodySize])"
        )
        wire = sum(s[1] for s in sizes)
        raw = sum(s[2] for s in sizes)
        line("first load: files", f"{len(sizes)}")
        line("first load: on the wire (gzip)", f"{wire / 1024:.1f} KB", "goal <= 150 KB")
        line(
            "  baseline: the same files uncompressed", f"{raw / 1024:.1f} KB", f"x{raw / wire:.1f}"
        )
        uplot = load_assets().files["vendor/uplot/uPlot.esm.js"]
        size = len(uplot.gzipped or uplot.body)
        line("  charts add uPlot (gzip), loaded on first use", f"{size / 1024:.1f} KB")


def queue_render(browser: Browser, jobs: int) -> tuple[float, float]:
    """Median ms to the first page of rows, and ms of a name search that matches nothing."""
    with server(f"queue-{jobs}", jobs) as (srv, keys):
        base = base_of(srv)
        signed_in(browser, base, keys.admin, "queue")  # warm: the server's caches, the key
        browser.js_async(UNTIL, "#queue-table tbody tr[data-job]", min(jobs, 50))
        times = []
        for _ in range(RUNS):
            signed_in(browser, base, keys.admin, "queue")
            times.append(browser.js_async(UNTIL, "#queue-table tbody tr[data-job]", min(jobs, 50)))
        searches = []
        for n in range(RUNS):
            start = browser.js(
                "const i = document.getElementById('filter-name');"
                "i.value = arguments[0]; i.dispatchEvent(new Event('input'));"
                "return performance.now();",
                f"no-such-name-{n}",
            )
            done = browser.js_async(UNTIL, "#queue-table td.empty", 1)
            searches.append(done - start - 250)  # less the input's 250 ms debounce
            browser.js(
                "const i = document.getElementById('filter-name');"
                "i.value = ''; i.dispatchEvent(new Event('input'));"
            )
            browser.js_async(UNTIL, "#queue-table tbody tr[data-job]", 1)
        return median(times), median(searches)


def charts(browser: Browser) -> None:
    with server("chart", 1) as (srv, keys):
        signed_in(browser, base_of(srv), keys.alice, "queue")
        browser.js_async(UNTIL, "#queue-table", 1)
        for points, goal in ((1_000, "baseline"), (100_000, "goal < 200 ms")):
            runs = [
                browser.js_async(f"(async () => {{ {CHART} }})(...arguments)", points)
                for _ in range(RUNS)
            ]
            drawn = median([r[0] for r in runs])
            frame = median([r[1] for r in runs])
            line(
                f"chart of {points:,} points: drawn / next frame",
                f"{drawn:.0f} / {frame:.0f} ms",
                goal,
            )


def log_open(browser: Browser, size: int) -> float:
    with server(f"log-{size}", 1, log_bytes=size) as (srv, keys):
        times = []
        for _ in range(RUNS):
            signed_in(browser, base_of(srv), keys.alice, "job/1")
            times.append(browser.js_async(UNTIL, "#log .line", 10))
        return median(times)


def events(browser: Browser, seconds: float) -> None:
    with server("events", 0, cpus=1) as (srv, keys):
        base = base_of(srv)
        signed_in(browser, base, keys.alice, "queue")
        browser.js_async(UNTIL, "#queue-table", 1)
        last: list[int] = []

        async def submit() -> None:
            async with fetchml.client.connect(base, keys.alice) as client:
                await client.submit({"command": ["sleep", "3600"], "name": "holder"})
                start = trio.current_time()
                for n in range(int(seconds * 100)):
                    await trio.sleep_until(start + n / 100)
                    job = await client.submit({"command": ["true"], "name": f"ev-{n}"})
                    last.append(job.id)

        browser.driver.execute_cdp_cmd("Performance.enable", {})
        idle_s = min(5.0, seconds)
        before = _task_s(browser)
        time.sleep(idle_s)
        idle = (_task_s(browser) - before) / idle_s
        before = _task_s(browser)
        wall = time.monotonic()
        thread = threading.Thread(target=trio.run, args=(submit,))
        thread.start()
        thread.join(seconds + 60)
        wall = time.monotonic() - wall
        busy = (_task_s(browser) - before) / wall
        newest = last[-1] if last else 0
        shown = wait_for(
            lambda: browser.js(
                "return document.querySelector(`tr[data-job='${arguments[0]}']`) !== null", newest
            ),
            within=2,
            what="the newest job on screen",
        )
        line(
            f"{len(last):,} events at 100/s: main thread busy", f"{busy * 100:.1f} %", "goal < 50 %"
        )
        line("  baseline: the same page, idle", f"{idle * 100:.1f} %")
        line("  newest job on screen at the end", "yes" if shown else "no")


def _task_s(browser: Browser) -> float:
    metrics: dict[str, Any] = browser.driver.execute_cdp_cmd("Performance.getMetrics", {})
    return float(next(m["value"] for m in metrics["metrics"] if m["name"] == "TaskDuration"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events-seconds", type=float, default=20.0)
    args = parser.parse_args()
    problem = browser_problem()
    if problem is not None:
        print(f"bench_web: skipped: {problem}")
        return 0
    with (
        bench_session("Web dashboard (issue 14), headless Chromium", runs_jobs=False),
        open_browser() as browser,
    ):
        first_load(browser)
        small, _ = queue_render(browser, 50)
        big, search = queue_render(browser, QUEUE_JOBS)
        line(f"queue first render, {QUEUE_JOBS:,} jobs", f"{big:.0f} ms", "goal < 1 s")
        line("  baseline: 50 jobs", f"{small:.0f} ms", f"x{big / small:.2f}")
        line(f"  name search over {QUEUE_JOBS:,} jobs (no match)", f"{search:.0f} ms")
        charts(browser)
        small_log = log_open(browser, 1024)
        big_log = log_open(browser, LOG_BYTES)
        line("100 MB log: job page to its last lines drawn", f"{big_log:.0f} ms", "goal < 1 s")
        line("  baseline: a 1 KB log", f"{small_log:.0f} ms", f"x{big_log / small_log:.2f}")
        events(browser, args.events_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
