"""Benchmark of ``ml`` commands' wall time against ``python -c pass`` and ``curl``.

Run: ``python bench/bench_cli.py [RUNS]``.  Starts a local server (``fetchml serve`` on a free
loopback port, in a temporary folder, with its first-start admin key), queues a few jobs, then
times, interleaved so that machine noise hits all of them alike, the wall time of:

- ``python -c pass`` (the same interpreter: the floor any Python CLI pays),
- ``python -c "import fetchml"`` (what importing the package alone costs, for reference),
- ``ml --help``, ``ml status`` (list, print a plain table), ``ml whoami`` and
  ``ml queue --no-snapshot -- /bin/true``, with the URL and key in ``FETCHML_URL`` /
  ``FETCHML_API_KEY``, and ``ml status`` again with them in the config file that
  ``ml config init`` writes,
- ``curl`` of the HTTP routes those three commands use (``GET /api/v1/jobs``,
  ``GET /api/v1/whoami``, ``POST /api/v1/jobs``): what the request itself costs.

Goals, over bare Python: ``ml --help`` 150 ms, ``ml status`` and ``ml whoami`` 100 ms, ``ml queue``
130 ms.  Output goes to a pipe, as in scripts.  Besides the wall time it prints the CPU time
(user + system) each command took, less sensitive than wall time to what else the machine runs.

Bytecode: this environment may set ``PYTHONDONTWRITEBYTECODE``, and an editable install of
fetchml (this checkout) has no ``.pyc`` of its own, so every command compiles fetchml's modules
again; an installed package (``pip install`` compiles them) or an editable one used without that
variable (the first run writes them) does not.  Both are measured, each the same way whatever
``__pycache__`` folders the checkout has: every interpreter gets ``PYTHONPYCACHEPREFIX`` pointing
at a cache filled by a first run of each command, with everything cached ("installed") and with
fetchml's own modules removed from it and writing off ("editable, no bytecode").  A goal counts as
met only when it is met both ways.  Exits 1 if a goal is missed.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
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

import fetchml
from fetchml.client import write_config

RUNS = 21
BIN = Path(sys.executable).parent
PACKAGE_DIR = Path(fetchml.__file__).resolve().parent
# command → (goal over bare python in ms, or None; the curl that makes its request, or None)
GOALS: dict[str, tuple[float | None, str | None]] = {
    "python -c pass": (None, None),
    "import fetchml": (None, None),
    "ml --help": (150.0, None),
    "ml status": (100.0, "curl GET /jobs"),
    "ml status, config file": (100.0, "curl GET /jobs"),
    "ml whoami": (100.0, "curl GET /whoami"),
    "ml queue --no-snapshot": (130.0, "curl POST /jobs"),
}
JOB = '{"command": ["/bin/true"]}'


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
    return timed(argv, env)[0]


def timed(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``argv`` to its end; its wall time and CPU time (user + system), in ms."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
    elapsed = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return elapsed, cpu


def commands(url: str, key: str, config: Path) -> dict[str, list[str]]:
    """Each command; ``config`` is the folder of a client config file with ``url`` and ``key``."""
    ml = str(BIN / "ml")
    from_file = ["env", "-u", "FETCHML_URL", "-u", "FETCHML_API_KEY", f"XDG_CONFIG_HOME={config}"]
    auth = ["-H", f"Authorization: Bearer {key}"]
    curl = ["curl", "-sf", "-o", "/dev/null", *auth]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import fetchml": [sys.executable, "-c", "import fetchml"],
        "ml --help": [ml, "--help"],
        "ml status": [ml, "status"],
        "ml status, config file": [*from_file, ml, "status"],
        "ml whoami": [ml, "whoami"],
        "ml queue --no-snapshot": [ml, "queue", "--no-snapshot", "--", "/bin/true"],
        "curl GET /jobs": [*curl, f"{url}/api/v1/jobs"],
        "curl GET /whoami": [*curl, f"{url}/api/v1/whoami"],
        "curl POST /jobs": [*curl, "-d", JOB, f"{url}/api/v1/jobs"],
    }


def environments(base: dict[str, str], folder: Path) -> dict[str, dict[str, str]]:
    """The two bytecode set-ups (see the module's docstring), each with a cache folder."""
    installed = {**base, "PYTHONPYCACHEPREFIX": str(folder / "installed")}
    installed.pop("PYTHONDONTWRITEBYTECODE", None)
    editable = {**base, "PYTHONPYCACHEPREFIX": str(folder / "editable")}
    editable["PYTHONDONTWRITEBYTECODE"] = "1"
    return {"installed (all bytecode cached)": installed, "editable, no bytecode": editable}


def fill_caches(argvs: dict[str, list[str]], envs: dict[str, dict[str, str]]) -> None:
    """Run each command once writing bytecode: the installed cache then holds every module they
    import.  The editable cache is a copy without fetchml's own modules (the cache mirrors
    absolute paths); nothing writes to it."""
    installed, editable = (Path(env["PYTHONPYCACHEPREFIX"]) for env in envs.values())
    for argv in argvs.values():
        wall_ms(argv, next(iter(envs.values())))
    shutil.copytree(installed, editable)
    shutil.rmtree(editable / PACKAGE_DIR.relative_to(PACKAGE_DIR.anchor))


def main(runs: int) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp, server(Path(tmp)) as (url, key):
        base = {**os.environ, "FETCHML_URL": url, "FETCHML_API_KEY": key}
        base["XDG_CONFIG_HOME"] = str(Path(tmp) / "xdg")
        write_config(Path(tmp) / "config" / "fetchml" / "config.yaml", url=url, key=key)
        argvs = commands(url, key, Path(tmp) / "config")
        for _ in range(5):
            wall_ms([str(BIN / "ml"), "queue", "--no-snapshot", "--", "sleep", "600"], base)
        envs = environments(base, Path(tmp))
        fill_caches(argvs, envs)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {
            (mode, name): [] for mode in envs for name in argvs
        }
        for _ in range(runs):
            for mode, env in envs.items():
                for name, argv in argvs.items():
                    times[mode, name].append(timed(argv, env))
        cancel = [str(BIN / "ml"), "cancel", *[str(n) for n in range(1, 6)]]
        subprocess.run(cancel, env=base, capture_output=True, check=False, timeout=60)
    medians = {where: statistics.median(w for w, _ in values) for where, values in times.items()}
    cpu = {where: statistics.median(c for _, c in values) for where, values in times.items()}
    return report(medians, cpu, list(envs), runs)


def report(
    medians: dict[tuple[str, str], float],
    cpu: dict[tuple[str, str], float],
    modes: list[str],
    runs: int,
) -> int:
    print(f"ml commands, median wall time of {runs} runs each (all interleaved), stdout a pipe")
    missed = []
    for mode in modes:
        base = medians[mode, "python -c pass"]
        print(f"  {mode}:")
        for name, (goal, curl) in GOALS.items():
            value = medians[mode, name]
            text = f"    {name:<24} {value:6.1f} ms (cpu {cpu[mode, name]:5.1f})"
            if name != "python -c pass":
                text += f"  +{value - base:5.1f} over bare python"
            if curl is not None:
                text += f"  ({curl} {medians[mode, curl]:4.1f} ms)"
            if goal is not None:
                met = value - base <= goal
                text += f"  goal +{goal:.0f}: {'met' if met else 'MISSED'}"
                if not met:
                    missed.append(f"{name} ({mode})")
            print(text)
    if missed:
        print(f"goals missed: {', '.join(missed)}")
        return 1
    print("every goal met, both ways")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else RUNS))
