"""Benchmark: WebSocket submits with every protection on, against the same server with all off.

The workload is bench_gateway_ws's: 20 connections each send their share of 20,000 ``submit``
frames, at most 50 unanswered per connection, every one acknowledged once durable, and no job
runs (a ``sleep`` job holds the only cpu).  Each repeat sends it to two fresh servers:

- plain: no TLS, no allow-list, rate limits off, audit log off;
- protected: TLS (``wss://``, a certificate made by ``fetchml certs new``), the allow-list
  (``auth.ip_whitelist``: 127.0.0.1/32 and ::1/128), rate limits on but far above the load (every
  op pays for its token bucket, none is refused) and the audit log (a hash-chained line written
  before each submit is acknowledged).

The order alternates between repeats.  Besides rates, the server's CPU time per message is
printed (it moves much less with whatever else runs on the machine), and the client's (on a
2-core machine the client's TLS work is CPU the server does not get).  The run checks that the
protections really were on: the protected server's audit log holds one ``submit`` line per
acknowledged submit (and its hash chain is intact), the plain server writes none, and a plain
``ws://`` connection to the TLS port fails; if a check fails the script exits 2.

``--each`` adds, per repeat, one server per protection with that one alone, and prints what each
costs against plain (rate ratio and server CPU per message).

To see where a server spends its time, set ``FETCHML_BENCH_PROFILE`` to a folder: each server
then runs under cProfile and leaves ``fetchml-PORT.prof`` there (see ``_gateway_common``).

Goal (issue: security hardening): protected rate >= 0.8 x the plain rate.
Run: ``.venv/bin/python bench/bench_gateway_security.py [--each] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from _common import line, median
from _gateway_common import HOST, close_ws, fetchml_server, session, start_holder, ws_connect
from bench_gateway_ws import (
    CONNECTIONS,
    HOLDER,
    JOBS,
    WARMUP,
    WINDOW,
    Run,
    _verdict,
    report,
    run,
)

REPEATS = 5
GOAL_RATIO = 0.8
ALLOW_LIST = ["127.0.0.1/32", "::1/128"]
LIMITS_HIGH = {"enabled": True, "requests_per_s": 1e6, "burst": 1_000_000}
SCHEDULER = {"cpus": 1, "memory_mb": 0}
ACKED = 1 + WARMUP + JOBS  # submits each server acknowledges: the holder, the warm-up, the run
EXIT_CHECK_FAILED = 2


class CheckFailed(Exception):
    """A protection that should have been on (or off) was not."""


@dataclass(frozen=True)
class Setup:
    """Which protections a server has on."""

    label: str
    tls: bool = False
    allow_list: bool = False
    limits: bool = False
    audit: bool = False


PLAIN = Setup("plain: no TLS, allow-list, limits, audit")
PROTECTED = Setup("protected: TLS+allow-list+limits+audit", True, True, True, True)
ALONE = (
    Setup("TLS alone", tls=True),
    Setup("allow-list alone", allow_list=True),
    Setup("rate limits alone (set high)", limits=True),
    Setup("audit log alone", audit=True),
)


@dataclass
class Tls:
    """The session's certificate and the client context that trusts it."""

    cert: Path
    key: Path
    context: ssl.SSLContext


@dataclass
class Measured:
    """A setup's runs, the client's CPU seconds per message of each, and what the checks saw."""

    runs: list[Run] = field(default_factory=list)
    client_cpu_s: list[float] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)


def make_tls(folder: Path) -> Tls:
    """A certificate for ``HOST`` from the project's own ``fetchml certs new``."""
    command = "from fetchml.cli import main; raise SystemExit(main())"
    argv = [sys.executable, "-c", command, "certs", "new", "--out-dir", str(folder)]
    subprocess.run([*argv, "--host", HOST], check=True, capture_output=True)
    cert = folder / "cert.pem"
    return Tls(cert, folder / "key.pem", ssl.create_default_context(cafile=str(cert)))


def server_options(setup: Setup, tls: Tls) -> dict[str, Any]:
    """``fetchml_server`` keyword arguments for ``setup`` (defaults on are turned off)."""
    tls_on = {"enabled": True, "cert_file": str(tls.cert), "key_file": str(tls.key)}
    return {
        "server": {"tls": tls_on} if setup.tls else {},
        "extra": {
            "limits": LIMITS_HIGH if setup.limits else {"enabled": False},
            "audit": {"enabled": setup.audit},
        },
        "auth": {"ip_whitelist": ALLOW_LIST} if setup.allow_list else None,
    }


def measure(folder: Path, setup: Setup, tls: Tls, into: Measured) -> None:
    """A fresh server with ``setup``: the holder, a warm-up, then JOBS submits; then the checks."""
    context = tls.context if setup.tls else None
    options = server_options(setup, tls)
    with fetchml_server(folder, scheduler=SCHEDULER, **options) as (server, keys, data_dir):
        start_holder(server.port, keys, HOLDER, ssl_context=context)
        run(server, keys.alice, WARMUP, 1_000, context)
        client = time.process_time()
        result = run(server, keys.alice, JOBS, 1_000_000, context)
        into.client_cpu_s.append((time.process_time() - client) / result.result.count)
        into.runs.append(result)
        if setup.tls:
            into.notes.add(check_tls_only(server.port, keys.alice))
    into.notes.add(check_audit(data_dir / "audit.log", setup.audit))


def check_tls_only(port: int, key: str) -> str:
    """Raise CheckFailed if a plain ``ws://`` upgrade to ``port`` succeeds; else how it failed."""
    try:
        sock, _ = ws_connect(port, key, timeout=5.0)
    except OSError as exc:
        return f"ws:// to the TLS port refused ({type(exc).__name__})"
    close_ws(sock)
    raise CheckFailed(f"a plain ws:// connection to the TLS port {port} was accepted")


def check_audit(path: Path, enabled: bool) -> str:
    """Raise CheckFailed unless the audit log at ``path`` has one ``submit`` line per
    acknowledged submit and an intact chain (``enabled``), or no such line (not ``enabled``)."""
    from fetchml.audit import verify_chain

    lines = path.read_bytes().splitlines() if path.exists() else []
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    entries = [decode(raw) for raw in lines]
    submits = sum(1 for e in entries if e["action"] == "submit" and e["outcome"] == "ok")
    if not enabled:
        if submits:
            raise CheckFailed(f"audit off, yet {path} has {submits:,} submit lines")
        return "audit off: no submit lines"
    if submits != ACKED:
        raise CheckFailed(f"{path}: {submits:,} submit lines for {ACKED:,} acknowledged submits")
    chain = verify_chain(lines)
    if not chain.ok:
        raise CheckFailed(f"{path}: chain broken at line {chain.bad_line}: {chain.reason}")
    return f"audit log: {submits:,} submit lines = acknowledged submits, chain intact"


def main(folder: Callable[[str], Path], setups: list[Setup], repeats: int) -> int:
    tls = make_tls(folder("tls"))
    measured = {setup: Measured() for setup in setups}
    for index in range(repeats):
        shift = index % len(setups)
        for setup in setups[shift:] + setups[:shift]:  # each in another place each repeat
            measure(folder("fetchml"), setup, tls, measured[setup])
    for setup in setups:
        got = measured[setup]
        report(setup.label, "jobs/s", got.runs)
        client = f"client CPU {median(got.client_cpu_s) * 1e6:.0f} us/msg"
        line("", "", "; ".join([client, *sorted(got.notes)]))
    plain, protected = measured[PLAIN], measured[PROTECTED]
    for setup in setups:
        if setup not in (PLAIN, PROTECTED):
            ratio, cpu = compare(measured[setup], plain)
            line(f"{setup.label} / plain", f"{ratio:.2f}", cpu)
    ratio, cpu = compare(protected, plain)
    met = ratio >= GOAL_RATIO
    pairs = [p.result.rate / q.result.rate for p, q in zip(protected.runs, plain.runs, strict=True)]
    line(
        "ratio protected / plain",
        f"{ratio:.2f}",
        f"goal >= {GOAL_RATIO}: {_verdict(met)}; per repeat: "
        + ", ".join(f"{r:.2f}" for r in pairs),
    )
    cpu_ratio = median([r.cpu_s for r in protected.runs]) / median([r.cpu_s for r in plain.runs])
    line("server CPU per message, protected / plain", f"{cpu_ratio:.2f}", f"{cpu} (steadier)")
    return 0 if met else 1


def compare(runs: Measured, plain: Measured) -> tuple[float, str]:
    """The median rate of ``runs`` over plain's, and the server CPU per message it adds."""
    ratio = median([r.result.rate for r in runs.runs]) / median([r.result.rate for r in plain.runs])
    ours, base = (median([r.cpu_s for r in m.runs]) * 1e6 for m in (runs, plain))
    return ratio, f"server CPU {ours - base:+.0f} us/msg ({ours:.0f} vs {base:.0f})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--each", action="store_true", help="also each protection alone")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"default {REPEATS}")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    chosen = [PLAIN, *(ALONE if args.each else ()), PROTECTED]
    with session(
        f"bench_gateway_security: {JOBS:,} submits over {CONNECTIONS} WebSockets, {WINDOW} in "
        f"flight each, median of {args.repeats}; all protections on vs all off"
        + (", and each alone" if args.each else "")
    ) as make_folder:
        try:
            code = main(make_folder, chosen, args.repeats)
        except CheckFailed as exc:
            print(f"  CHECK FAILED: {exc}", flush=True)
            code = EXIT_CHECK_FAILED
    sys.exit(code)
