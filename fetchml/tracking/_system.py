"""System metrics of running jobs: CPU and RSS of each job's process tree, and its GPUs.

:class:`SystemSampler` is synchronous and blocks (it reads ``/proc`` through psutil and runs
``nvidia-smi``): the caller runs it in a worker thread, every ``tracking.system_interval_s``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from time import monotonic

import psutil

__all__ = ["SystemSampler"]

log = logging.getLogger("fetchml.tracking")

_MIB = 1 << 20
_GPU_QUERY = "--query-gpu=index,utilization.gpu,memory.used,memory.total"
_GPU_FIELDS = ("util_percent", "memory_used_mb", "memory_total_mb")
_Proc = tuple[int, float]  # (pid, create time): a process, safe against pid reuse


class _Garbage(ValueError):
    """nvidia-smi printed something that is not the CSV asked for."""


@dataclass
class _JobState:
    root: _Proc
    at: float  # monotonic() of the previous sample
    cpu: dict[_Proc, float] = field(default_factory=dict)  # CPU seconds (user + system)


class SystemSampler:
    """Samples the process trees of running jobs and the GPUs given to them.

    Keys per job: ``sys/cpu_percent`` (over the time since the previous sample of that job; 100
    is one core busy; **omitted on a job's first sample**, which has no previous one),
    ``sys/rss_mb`` (MiB, the sum over the tree, shared pages counted in each process),
    ``sys/processes``, and per GPU of the job ``sys/gpu{i}/util_percent``, ``memory_used_mb`` and
    ``memory_total_mb`` (MiB), ``i`` being nvidia-smi's index, as the server numbers its GPUs.
    CPU time of a process that ended between two samples, after the first, is not counted.
    Not thread-safe: one thread samples at a time.
    """

    def __init__(self, *, nvidia_smi: str | None = "nvidia-smi", timeout_s: float = 5.0) -> None:
        """``nvidia_smi``: a command name looked up on PATH at each sample, or a path; ``None``
        samples no GPU.  ``timeout_s``: how long one nvidia-smi run may take."""
        self._nvidia_smi = nvidia_smi
        self._timeout_s = timeout_s
        self._jobs: dict[int, _JobState] = {}
        self._warned: set[str] = set()
        self._stuck: subprocess.Popen[str] | None = None  # a timed-out run that would not die

    def sample(self, jobs: Mapping[int, tuple[int, Sequence[int]]]) -> dict[int, dict[str, float]]:
        """``jobs``: job id -> (root pid of its process tree, GPU indices given to it).

        Returns job id -> metrics; a job whose root process is gone (or a zombie) gets no entry
        and its state is forgotten.  Blocks for the ``/proc`` reads and at most about
        ``timeout_s`` + 1 s for one nvidia-smi run (only when some job has GPUs).  Never raises
        for a vanished process or a failing nvidia-smi (logged once per distinct problem)."""
        gpus = self._query_gpus() if any(g for _, g in jobs.values()) else {}
        out: dict[int, dict[str, float]] = {}
        for job_id, (pid, job_gpus) in jobs.items():
            metrics = self._sample_tree(job_id, pid)
            if metrics is None:
                self._jobs.pop(job_id, None)
                continue
            for index in job_gpus:
                if index in gpus:
                    metrics.update({f"sys/gpu{index}/{k}": v for k, v in gpus[index].items()})
                elif gpus:
                    self._warn(f"gpu {index}", "nvidia-smi does not list GPU %d", index)
            out[job_id] = metrics
        return out

    def forget(self, job_id: int) -> None:
        """Drop what is kept of a job (its previous CPU times); the next sample of it is a
        first one.  Never raises."""
        self._jobs.pop(job_id, None)

    def _sample_tree(self, job_id: int, pid: int) -> dict[str, float] | None:
        """CPU, RSS and process count of the tree under ``pid``; ``None`` if its root is gone."""
        try:
            root = psutil.Process(pid)
            ident = (pid, root.create_time())
            if root.status() == psutil.STATUS_ZOMBIE:
                return None
            procs = [root, *root.children(recursive=True)]
        except (psutil.Error, ValueError):  # NoSuchProcess, ZombieProcess, AccessDenied; pid <= 0
            return None
        now = monotonic()
        cpu: dict[_Proc, float] = {}
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
            except psutil.Error:  # ended since children(), or not ours to read
                continue
            cpu[key] = times.user + times.system
        metrics = {"sys/rss_mb": rss / _MIB, "sys/processes": float(len(cpu))}
        prev = self._jobs.get(job_id)
        if prev is not None and prev.root == ident and now > prev.at:
            metrics["sys/cpu_percent"] = 100.0 * _cpu_used(prev, cpu) / (now - prev.at)
        self._jobs[job_id] = _JobState(ident, now, cpu)
        return metrics

    def _query_gpus(self) -> dict[int, dict[str, float]]:
        """One nvidia-smi run: GPU index -> metrics; ``{}`` (and a warning) if it cannot be had."""
        if self._nvidia_smi is None:
            return {}
        if self._stuck is not None:
            if self._stuck.poll() is None:
                self._warn("stuck", "a timed-out nvidia-smi is still running: GPUs not sampled")
                return {}
            self._stuck = None
        exe = shutil.which(self._nvidia_smi)
        if exe is None:
            self._warn("missing", "%s not found: GPUs not sampled", self._nvidia_smi)
            return {}
        text = self._run(exe)
        if text is None:
            return {}
        try:
            return _parse(text)
        except _Garbage as exc:
            self._warn("garbage", "nvidia-smi printed %r: GPUs not sampled", str(exc)[:200])
            return {}

    def _run(self, exe: str) -> str | None:
        """nvidia-smi's output, or ``None`` (warned) if it fails to start, fails or times out.
        Blocks up to ``timeout_s``, then 1 s more for the killed process group to end."""
        argv = [exe, _GPU_QUERY, "--format=csv,noheader,nounits"]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            self._warn(f"start {exc.errno}", "cannot run %s: %s", exe, exc)
            return None
        try:
            stdout, stderr = proc.communicate(timeout=self._timeout_s)
        except subprocess.TimeoutExpired:
            self._warn("timeout", "nvidia-smi took over %gs: killed", self._timeout_s)
            if not _kill_group(proc):
                self._stuck = proc
            return None
        if proc.returncode != 0:
            code, detail = proc.returncode, (stderr.strip() or stdout.strip())[:200]
            self._warn(f"exit {code}", "nvidia-smi exited %d: %s", code, detail)
            return None
        return stdout

    def _warn(self, problem: str, msg: str, *args: object) -> None:
        """Log ``msg`` once per distinct ``problem`` over this sampler's life."""
        if problem not in self._warned:
            self._warned.add(problem)
            log.warning(msg, *args)


def _cpu_used(prev: _JobState, cpu: Mapping[_Proc, float]) -> float:
    """CPU seconds the tree used since ``prev``: for a process seen then, the difference; for one
    not seen then (started since: a process joins a tree only when it starts), all of its time.
    (Creation times are not compared with the clock: psutil's are up to 1 s off.)"""
    return sum(max(0.0, seconds - prev.cpu.get(proc, 0.0)) for proc, seconds in cpu.items())


def _kill_group(proc: subprocess.Popen[str]) -> bool:
    """Kill a timed-out run and its process group, close its pipes unread (a child outside the
    group may hold them) and wait 1 s at most for it to end.  False if it is still there (stuck
    in an uninterruptible driver call)."""
    with contextlib.suppress(OSError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        return False
    return True


def _parse(text: str) -> dict[int, dict[str, float]]:
    """``index, util, used, total`` lines -> index -> metrics.  A field nvidia-smi cannot give
    (``[N/A]``, ``[Not Supported]``) is left out; anything else not a number raises _Garbage."""
    gpus: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4 or not fields[0].isdigit():
            raise _Garbage(line)
        values: dict[str, float] = {}
        for name, raw in zip(_GPU_FIELDS, fields[1:], strict=True):
            if raw.startswith("["):
                continue
            try:
                value = float(raw)
            except ValueError:
                raise _Garbage(line) from None
            if math.isfinite(value):
                values[name] = value
        gpus[int(fields[0])] = values
    return gpus
