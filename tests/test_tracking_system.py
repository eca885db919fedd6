"""The system metrics sampler (fetchml.tracking._system) on real process trees, with a fake
``nvidia-smi`` (a shell script) in place of the real one: no GPU needed."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetchml.tracking._system import SystemSampler

PY = sys.executable
BUSY = f"{PY} -c 'while True: pass' & {PY} -c 'import time; time.sleep(30)' & wait"
IDLE = "sleep 30 & sleep 30 & wait"
CSV = "0, 45, 1024, 81559\n1, 0, 3, 81559\n2, 100, 70000, 81559\n"
CPU_KEYS = {"sys/cpu_percent", "sys/rss_mb", "sys/processes"}


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``sh -c SCRIPT`` trees (append to the list); each group is killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):  # its tree has ended already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def tree(started: list[subprocess.Popen[bytes]], script: str) -> int:
    """The root pid of a new ``sh -c script`` tree, once it has its two children."""
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    started.append(proc)
    sampler = SystemSampler(nvidia_smi=None)
    deadline = time.monotonic() + 10
    while sampler.sample({1: (proc.pid, [])})[1]["sys/processes"] < 3:
        assert time.monotonic() < deadline, "the tree did not start"
        time.sleep(0.02)
    return proc.pid


def fake_smi(tmp_path: Path, body: str, name: str = "nvidia-smi") -> Path:
    """An executable shell script standing in for nvidia-smi; it appends its args to ``calls``."""
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n{body}\n')
    path.chmod(0o755)
    return path


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls"
    return log.read_text().splitlines() if log.exists() else []


def test_busy_tree_cpu_rss_and_processes(spawn: list[subprocess.Popen[bytes]]) -> None:
    pid = tree(spawn, BUSY)
    sampler = SystemSampler(nvidia_smi=None)
    first = sampler.sample({7: (pid, [])})[7]
    assert "sys/cpu_percent" not in first  # the first sample of a job has no CPU figure
    assert first["sys/rss_mb"] > 1
    assert first["sys/processes"] == 3
    time.sleep(0.5)
    second = sampler.sample({7: (pid, [])})[7]
    assert set(second) == CPU_KEYS
    assert second["sys/cpu_percent"] > 25  # one child spins: ~100 on an idle machine
    assert second["sys/cpu_percent"] < 100 * (os.cpu_count() or 1) + 10
    assert second["sys/rss_mb"] > 1


def test_a_process_started_between_samples_counts(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    pid = tree(spawn, f"sleep 30 & sleep 30 & sleep 0.2; {PY} -c 'while True: pass' & wait")
    sampler = SystemSampler(nvidia_smi=None)
    sampler.sample({1: (pid, [])})
    time.sleep(1.0)
    second = sampler.sample({1: (pid, [])})[1]
    assert second["sys/processes"] == 4
    assert second["sys/cpu_percent"] > 20  # ~80: all of the new child's time is since then


def test_idle_tree_uses_little_cpu(spawn: list[subprocess.Popen[bytes]]) -> None:
    pid = tree(spawn, IDLE)
    sampler = SystemSampler(nvidia_smi=None)
    sampler.sample({1: (pid, [])})
    time.sleep(0.3)
    assert sampler.sample({1: (pid, [])})[1]["sys/cpu_percent"] < 20


def test_forget_makes_the_next_sample_a_first(spawn: list[subprocess.Popen[bytes]]) -> None:
    pid = tree(spawn, IDLE)
    sampler = SystemSampler(nvidia_smi=None)
    sampler.sample({1: (pid, [])})
    sampler.forget(1)
    sampler.forget(99)  # unknown: no error
    assert "sys/cpu_percent" not in sampler.sample({1: (pid, [])})[1]


def test_vanished_and_zombie_roots_get_no_entry(spawn: list[subprocess.Popen[bytes]]) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    zombie = subprocess.Popen(["sh", "-c", "exit 0"])  # not reaped until wait(): a zombie
    live = tree(spawn, IDLE)
    sampler = SystemSampler(nvidia_smi=None)
    jobs: dict[int, tuple[int, list[int]]] = {1: (gone.pid, []), 2: (zombie.pid, []), 3: (live, [])}
    try:
        deadline = time.monotonic() + 10
        while 2 in (out := sampler.sample(jobs)):  # until sh has exited
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert set(out) == {3}
        assert sampler.sample({4: (-1, []), 5: (0, [])}) == {}
    finally:
        zombie.wait(timeout=10)


def test_root_ending_between_samples(spawn: list[subprocess.Popen[bytes]]) -> None:
    pid = tree(spawn, IDLE)
    sampler = SystemSampler(nvidia_smi=None)
    assert 1 in sampler.sample({1: (pid, [])})
    os.killpg(pid, signal.SIGKILL)
    spawn[0].wait(timeout=10)
    assert sampler.sample({1: (pid, [])}) == {}


def test_gpus_of_each_job_only_one_run(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    smi = fake_smi(tmp_path, f"printf '{CSV}'")
    pid = tree(spawn, IDLE)
    sampler = SystemSampler(nvidia_smi=str(smi))
    out = sampler.sample({1: (pid, [0, 2]), 2: (pid, [1]), 3: (pid, [])})
    assert calls(tmp_path) == [
        "--query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits"
    ]
    assert {k: v for k, v in out[1].items() if k.startswith("sys/gpu")} == {
        "sys/gpu0/util_percent": 45.0,
        "sys/gpu0/memory_used_mb": 1024.0,
        "sys/gpu0/memory_total_mb": 81559.0,
        "sys/gpu2/util_percent": 100.0,
        "sys/gpu2/memory_used_mb": 70000.0,
        "sys/gpu2/memory_total_mb": 81559.0,
    }
    assert set(out[2]) - CPU_KEYS == {
        "sys/gpu1/util_percent",
        "sys/gpu1/memory_used_mb",
        "sys/gpu1/memory_total_mb",
    }
    assert set(out[3]) <= CPU_KEYS
    sampler.sample({3: (pid, [])})  # no job with GPUs: nvidia-smi is not run
    assert len(calls(tmp_path)) == 1


def test_nvidia_smi_found_on_path(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_smi(tmp_path, "echo '0, 7, [N/A], 16000'")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    pid = tree(spawn, IDLE)
    out = SystemSampler().sample({1: (pid, [0])})[1]
    # A field nvidia-smi cannot give ([N/A], [Not Supported]) is left out, the others kept.
    assert set(out) - CPU_KEYS == {"sys/gpu0/util_percent", "sys/gpu0/memory_total_mb"}
    assert out["sys/gpu0/util_percent"] == 7.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("echo 'NVIDIA-SMI has failed' >&2; exit 1", "exited 1"),
        ("echo 'this is not, csv'", "printed"),
        (f"printf '{CSV}'; echo '3, 1, 2'", "printed"),  # a short line spoils the whole output
        ("echo '0, busy, 1, 2'", "printed"),
        ("sleep 30", "took over"),  # not exec'd: the kill must reach the sleep too
        (None, "not found"),
    ],
)
def test_gpu_problems_leave_gpu_keys_out(
    tmp_path: Path,
    spawn: list[subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
    body: str | None,
    message: str,
) -> None:
    smi = tmp_path / "missing" if body is None else fake_smi(tmp_path, body)
    pid = tree(spawn, IDLE)
    sampler = SystemSampler(nvidia_smi=str(smi), timeout_s=0.5)
    caplog.set_level(logging.WARNING, "fetchml.tracking")
    for _ in range(2):
        began = time.monotonic()
        out = sampler.sample({1: (pid, [0])})
        assert time.monotonic() - began < 3
        assert set(out[1]) <= CPU_KEYS
        assert out[1]["sys/rss_mb"] > 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "fetchml.tracking"]
    assert len(warnings) == 1  # one per distinct problem, not one per sample
    assert message in warnings[0]


def test_gpu_not_listed_warns_once(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    smi = fake_smi(tmp_path, f"printf '{CSV}'")
    pid = tree(spawn, IDLE)
    sampler = SystemSampler(nvidia_smi=str(smi))
    caplog.set_level(logging.WARNING, "fetchml.tracking")
    for _ in range(2):
        out = sampler.sample({1: (pid, [1, 5])})[1]
        assert {k for k in out if k.startswith("sys/gpu")} == {
            "sys/gpu1/util_percent",
            "sys/gpu1/memory_used_mb",
            "sys/gpu1/memory_total_mb",
        }
    assert [r.getMessage() for r in caplog.records] == ["nvidia-smi does not list GPU 5"]


def test_output_held_open_past_the_kill(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    """A child that left the process group holds nvidia-smi's pipes: they are closed unread, the
    sample returns once nvidia-smi itself has ended, and the next one runs it again."""
    pidfile = tmp_path / "escaped"
    smi = fake_smi(tmp_path, f"setsid sleep 30 & echo $! >> {pidfile}; sleep 30")
    pid = tree(spawn, IDLE)
    sampler = SystemSampler(nvidia_smi=str(smi), timeout_s=0.5)
    caplog.set_level(logging.WARNING, "fetchml.tracking")
    try:
        for _ in range(2):
            began = time.monotonic()
            assert set(sampler.sample({1: (pid, [0])})[1]) <= CPU_KEYS
            assert time.monotonic() - began < 3
    finally:
        for escaped in pidfile.read_text().split() if pidfile.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(escaped), signal.SIGKILL)
    assert len(calls(tmp_path)) == 2
    assert [r.getMessage() for r in caplog.records] == ["nvidia-smi took over 0.5s: killed"]
