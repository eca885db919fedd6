"""Benchmark of ``ml`` start-up: ``ml --help`` and ``ml status`` against ``python -c pass``.

Run: ``python bench/bench_cli.py [RUNS]``.  Starts a local server (``fetchml serve`` on a free
loopback port, in a temporary folder, with its first-start admin key), queues a few jobs, then
times, interleaved so that machine noise hits all three alike, the wall time of:

- ``python -c pass`` (the same interpreter: the floor any Python CLI pays),
- ``python -c "import fetchml"`` (what importing the package alone costs, for reference),
- ``ml --help``,
- ``ml status`` (connect, authenticate with a cached key, list, print a plain table),
- both again with ``fetchml/__init__.py`` bypassed, to show what ``ml`` itself costs.

It prints the medians and the differences to bare Python, against the goals: ``ml --help``
within 150 ms of bare Python, ``ml status`` within 300 ms.  Output goes to a pipe, as in scripts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

RUNS = 21
# ``ml`` with the package's ``__init__`` skipped (a bare package module stands in for it): what
# ``ml`` itself costs, i.e. what it would cost if ``fetchml/__init__.py`` imported lazily.
_BARE_PACKAGE = (
    "import sys, types; from pathlib import Path; import importlib.util as u; "
    "spec = u.find_spec('fetchml'); m = types.ModuleType('fetchml'); "
    "m.__path__ = list(spec.submodule_search_locations); m.__version__ = '0'; "
    "sys.modules['fetchml'] = m; from fetchml.cli._ml import main; "
    "sys.argv[0] = 'ml'; sys.exit(main())"
)
HELP_GOAL_MS = 150.0
STATUS_GOAL_MS = 300.0
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(folder: Path) -> Iterator[tuple[str, str]]:
    """A ``fetchml serve`` subprocess; yields (URL, admin key)."""
    port = free_port()
    log = open(folder / "server.log", "w+b")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "fetchml"), "serve", "--port", str(port), "--data-dir", str(folder / "data")],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        text = ""
        while "serving on" not in text:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the server did not start:\n{text}")
            time.sleep(0.05)
            text = (folder / "server.log").read_text(errors="replace")
        match = re.search(r"fml_[A-Za-z0-9_-]+", text)
        assert match is not None, "no admin key in the server's output"
        yield f"http://127.0.0.1:{port}", match.group(0)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        log.close()


def wall_ms(argv: Sequence[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()}")
    return elapsed


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp, server(Path(tmp)) as (url, key):
        env = {**os.environ, "FETCHML_URL": url, "FETCHML_API_KEY": key}
        env["XDG_CONFIG_HOME"] = str(Path(tmp) / "xdg")
        ml = str(BIN / "ml")
        for n in range(5):
            wall_ms([ml, "queue", "--name", f"bench{n}", "--", "sleep", "60"], env)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import fetchml": [sys.executable, "-c", "import fetchml"],
            "ml --help": [ml, "--help"],
            "ml status": [ml, "status"],
            "ml --help, lazy": [sys.executable, "-c", _BARE_PACKAGE, "--help"],
            "ml status, lazy": [sys.executable, "-c", _BARE_PACKAGE, "status"],
        }
        for argv in commands.values():  # warm the page cache and the server's key cache
            wall_ms(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                times[name].append(wall_ms(argv, env))
        wall_ms([ml, "cancel", *[str(n) for n in range(1, 6)]], env)
    report(times, runs)


def report(times: dict[str, list[float]], runs: int) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["python -c pass"]
    print(f"ml start-up, median wall time of {runs} runs each (interleaved), stdout a pipe")
    print(f"  {'python -c pass':<16} {base:7.1f} ms")
    package = medians["import fetchml"]
    print(
        f"  {'import fetchml':<16} {package:7.1f} ms  (+{package - base:.1f} ms: what the "
        "package's __init__ imports, paid by every command)"
    )
    for name, goal in (("ml --help", HELP_GOAL_MS), ("ml status", STATUS_GOAL_MS)):
        extra = medians[name] - base
        verdict = "ok" if extra <= goal else "OVER GOAL"
        print(
            f"  {name:<16} {medians[name]:7.1f} ms  (+{extra:.1f} ms over bare python; "
            f"goal +{goal:.0f} ms: {verdict})"
        )
    print("  without fetchml/__init__.py's eager imports (what a lazy __init__ would give):")
    for name in ("ml --help, lazy", "ml status, lazy"):
        print(f"  {name:<16} {medians[name]:7.1f} ms  (+{medians[name] - base:.1f} ms)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else RUNS)
