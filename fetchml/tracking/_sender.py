"""The track sender: run on a Ray node beside a job, it sends the job's track file to the server,
and samples the job's processes and GPUs as the server samples a local job's.

Not imported by the server: its text is :data:`fetchml.tracking.TRACK_SENDER`, run by the
job's wrapper as ``python3 -I -c "$FETCHML_TRACK_SENDER"`` (isolated: neither the job's
working directory nor its PYTHON* variables change what it imports) in the background while
the job's command runs (``_upload`` says the protocol).  So it uses the standard library only
and runs on any Python 3 a node has; everything it needs is in the environment (neither the
program nor the token shows in the job's log): FETCHML_RESULTS_URL, FETCHML_JOB_ID, FETCHML_ATTEMPT,
FETCHML_RUN_TOKEN, FETCHML_TRACK_FILE, FETCHML_PART_BYTES, FETCHML_TRACK_SEND_S,
FETCHML_TRACK_FINAL_S, and FETCHML_SYSTEM_INTERVAL_S (absent or 0: no system metrics).

It stops (after sending the rest) once FETCHML_TRACK_FILE + ".end" exists (the wrapper's sign
that the command ended), on SIGTERM or SIGINT, or when the wrapper is gone.  A file is polled
rather than a signal awaited: a signal sent before Python has set its handler would kill it
unsent.  Exit status 0: all sent (the node's files are removed); 1: some lines could not be
sent (they stay).

System metrics: the job's process tree is the wrapper's (this program's parent) without this
program and what it runs; its CPU use, RSS and process count come from ``/proc`` (none on a
system without it), its GPUs are those of CUDA_VISIBLE_DEVICES (which Ray sets for a job given
GPUs), read with ``nvidia-smi``.  Each sample is a ``{"system": {...}, "time": t}`` line sent
with the job's lines but never written into the job's file (a job writing a line in two parts
would have it cut).  Samples wait in memory while the server is away (at most
:data:`MAX_WAITING` of them, the oldest dropped first, said once in the job's log).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable

MAX_WAITING = 10_000  # system samples kept while the server is away (a day at 10 s)
_GPU_QUERY = "--query-gpu=index,uuid,utilization.gpu,memory.used,memory.total"
_GPU_FIELDS = ("util_percent", "memory_used_mb", "memory_total_mb")
_SMI_TIMEOUT_S = 5.0


class Refused(Exception):
    """The server will not take the lines (or did not answer for too long): stop, keep them."""


def say(text: str) -> None:
    """A line in the job's log (the sender's stderr is the job's)."""
    print(f"[fetchml] metrics: {text}", file=sys.stderr, flush=True)


class Stop:
    """Whether the sender is told to stop (first time told, monotonic), and naps until then."""

    def __init__(self, end_file: str) -> None:
        self.end_file, self.parent = end_file, os.getppid()
        self.at: float | None = None
        self.on_nap: list[Callable[[], None]] = []  # called while napping (the sampler)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, *_: object) -> None:
        if self.at is None:
            self.at = time.monotonic()

    def stopping(self) -> bool:
        if self.at is None and (os.path.exists(self.end_file) or os.getppid() != self.parent):
            self.at = time.monotonic()
        return self.at is not None

    def nap(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self.stopping():
            for call in self.on_nap:
                call()
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))


class Tree:
    """CPU, RSS and process count of the wrapper's process tree, from ``/proc``."""

    def __init__(self, root: int, skip: int) -> None:
        self.root, self.skip = root, skip
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.before: tuple[float, dict[tuple[int, int], float]] | None = None

    def sample(self) -> dict[str, float]:
        """The tree's metrics; ``{}`` without ``/proc``.  ``sys/cpu_percent`` is left out of
        the first sample (it is over the time since the previous one)."""
        stats = _stats()
        if not stats:
            return {}
        pids = _tree(stats, self.root, self.skip)
        now = time.monotonic()
        cpu = {(pid, stats[pid][2]): stats[pid][1] / self.ticks for pid in pids}
        metrics = {
            "sys/rss_mb": sum(_rss_pages(pid) for pid in pids) * self.page / (1 << 20),
            "sys/processes": float(len(pids)),
        }
        if self.before is not None and now > self.before[0]:
            at, seen = self.before
            used = sum(max(0.0, s - seen.get(key, 0.0)) for key, s in cpu.items())
            metrics["sys/cpu_percent"] = 100.0 * used / (now - at)
        self.before = (now, cpu)
        return metrics


def _stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, CPU ticks (user + system), start time) of every process, from
    ``/proc/<pid>/stat``; ``{}`` without ``/proc``."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    found: dict[int, tuple[int, int, int]] = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
            # After the command's name (in parentheses, which may hold anything).
            fields = data[data.rfind(b")") + 2 :].split()
            found[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]))
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
    return found


def _tree(stats: dict[int, tuple[int, int, int]], root: int, skip: int) -> list[int]:
    """``root`` and its descendants, without ``skip`` and its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root] if root in stats else []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child in children.get(pid, ()) if child != skip]
    return found


def _rss_pages(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


class Gpus:
    """Utilisation and memory of the GPUs of CUDA_VISIBLE_DEVICES, through ``nvidia-smi``."""

    def __init__(self, visible: str | None) -> None:
        self.visible = [v.strip() for v in (visible or "").split(",") if v.strip()]
        self.warned: set[str] = set()

    def warn(self, problem: str, text: str) -> None:
        if problem not in self.warned:
            self.warned.add(problem)
            say(text)

    def sample(self) -> dict[str, float]:
        """``sys/gpu{index}/...`` of each visible GPU; ``{}`` (said once) if nvidia-smi fails.
        Waits up to 5 s for it."""
        if not self.visible:
            return {}
        argv = ["nvidia-smi", _GPU_QUERY, "--format=csv,noheader,nounits"]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self.warn("run", f"GPUs not sampled: cannot run nvidia-smi ({exc})")
            return {}
        if done.returncode != 0:
            self.warn("exit", f"GPUs not sampled: nvidia-smi exited {done.returncode}")
            return {}
        metrics: dict[str, float] = {}
        for line in done.stdout.splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != 5 or not fields[0].isdigit():
                continue
            if fields[0] not in self.visible and fields[1] not in self.visible:
                continue
            for name, raw in zip(_GPU_FIELDS, fields[2:]):  # noqa: B905 (any Python 3)
                try:
                    value = float(raw)
                except ValueError:  # [N/A], [Not Supported]
                    continue
                if value == value and abs(value) != float("inf"):
                    metrics[f"sys/gpu{fields[0]}/{name}"] = value
        return metrics


class System:
    """System samples every ``interval`` seconds, as lines waiting to be sent.  Each waiting
    line carries a number, so that what was sent is taken off by number: samples taken (and
    old ones dropped) while a send was under way cannot make a sent line stay, or a dropped
    one count as sent."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tree = Tree(os.getppid(), os.getpid())
        self.gpus = Gpus(os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.waiting: deque[tuple[int, bytes]] = deque()
        self.taken = 0  # samples taken so far: the next one's number
        self.dropped = 0
        self.due = time.monotonic()

    def poll(self) -> None:
        """Take a sample if one is due; drops the oldest waiting one if MAX_WAITING wait."""
        if self.interval <= 0 or time.monotonic() < self.due:
            return
        self.due = time.monotonic() + self.interval
        metrics = {**self.tree.sample(), **self.gpus.sample()}
        if not metrics:
            return
        line = {"system": metrics, "time": time.time()}
        self.waiting.append((self.taken, json.dumps(line, separators=(",", ":")).encode() + b"\n"))
        self.taken += 1
        if len(self.waiting) > MAX_WAITING:
            self.waiting.popleft()
            self.dropped += 1
            if self.dropped == 1:
                say(f"more than {MAX_WAITING} system samples wait: the oldest are dropped")

    def lines(self, room: int) -> tuple[bytes, int]:
        """The oldest waiting lines that fit in ``room`` bytes (they stay waiting), and the
        number after the last of them (for :meth:`sent`)."""
        out: list[bytes] = []
        size, upto = 0, self.waiting[0][0] if self.waiting else self.taken
        for number, line in self.waiting:
            if size + len(line) > room:
                break
            out.append(line)
            size += len(line)
            upto = number + 1
        return b"".join(out), upto

    def sent(self, upto: int) -> None:
        """The lines numbered below ``upto`` (from :meth:`lines`) are on the server."""
        while self.waiting and self.waiting[0][0] < upto:
            self.waiting.popleft()


class Sender:
    """Sends the track file's whole lines, and the system samples, in order, exactly once."""

    def __init__(self, env: dict[str, str]) -> None:
        url, job = env["FETCHML_RESULTS_URL"], env["FETCHML_JOB_ID"]
        attempt = env["FETCHML_ATTEMPT"]
        self.token, self.path = env["FETCHML_RUN_TOKEN"], env["FETCHML_TRACK_FILE"]
        self.part = int(env["FETCHML_PART_BYTES"])
        self.every = float(env.get("FETCHML_TRACK_SEND_S", "1"))
        self.final_s = float(env.get("FETCHML_TRACK_FINAL_S", "120"))
        self.target = f"{url}/api/v1/jobs/{job}/track?attempt={attempt}&offset="
        self.stop = Stop(self.path + ".end")
        self.system = System(float(env.get("FETCHML_SYSTEM_INTERVAL_S") or 0))
        self.stop.on_nap.append(self.system.poll)

    def read(self, at: int, size: int) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(at)
                return handle.read(size)
        except FileNotFoundError:
            return b""

    def put(self, offset: int, data: bytes) -> tuple[bool, int]:
        """One PUT: (whether it was appended, the server's size).  Raises Refused for a refusal
        that retrying cannot mend, OSError and the like for one it may."""
        request = urllib.request.Request(self.target + str(offset), data=data, method="PUT")
        request.add_header("X-Fetchml-Run-Token", self.token)
        request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                answer.read()
                size = answer.headers.get("X-Fetchml-Track-Size")
        except urllib.error.HTTPError as exc:
            size, text = exc.headers.get("X-Fetchml-Track-Size"), exc.read()[:300]
            if exc.code == 409 and size is not None:
                return False, int(size)
            if exc.code >= 500 or exc.code in (408, 429):
                raise
            reason = text.decode(errors="replace")
            raise Refused(f"the server refused them ({exc.code}): {reason}") from None
        if size is None:
            raise Refused("the server does not take metrics from runs elsewhere")
        return True, int(size)

    def send(self, offset: int, data: bytes) -> tuple[bool, int]:
        """:meth:`put`, retried with backoff while the server is away (for at most
        FETCHML_TRACK_FINAL_S once told to stop)."""
        delay, told = 0.5, False
        while True:
            try:
                answer = self.put(offset, data)
                if told:
                    say("the server answers again")
                return answer
            except (OSError, ValueError, http.client.HTTPException) as exc:
                stop = self.stop
                if stop.at is not None and time.monotonic() > stop.at + self.final_s:
                    text = f"the server did not answer for {self.final_s:.0f} s: {exc}"
                    raise Refused(text) from None
                if not told:
                    say(f"cannot reach the server ({exc}); they wait on the node, retrying")
                    told = True
                if stop.stopping():
                    time.sleep(delay)
                else:
                    stop.nap(delay)
                delay = min(delay * 2, 10.0)

    def line_end(self, at: int) -> int | None:
        while block := self.read(at, self.part):
            if (cut := block.find(b"\n")) >= 0:
                return at + cut + 1
            at += len(block)
        return None

    def run(self) -> None:
        """Send until told to stop and everything is sent.  Raises Refused."""
        pos, have, warned = 0, None, False
        while True:
            done = self.stop.stopping()
            if not done:
                self.system.poll()
            extra, upto = self.system.lines(self.part // 2)
            room = self.part - len(extra)
            chunk = self.read(pos, room)
            whole = chunk[: chunk.rfind(b"\n") + 1]
            skip = 0
            oversized = not whole and not extra and len(chunk) >= self.part
            if oversized and (end := self.line_end(pos)) is not None:
                # A line longer than a part cannot be sent whole: sent as a line the server
                # counts as invalid, as it would count the line itself.
                skip, whole = end - pos, b'{"oversized_line_bytes": %d}\n' % (end - pos)
                if not warned:
                    say(f"a line of {end - pos} bytes is longer than a part ({self.part}): skipped")
                    warned = True
            if whole or extra:
                if have is None:
                    have = self.send(0, b"")[1]
                data = whole + extra
                sent, size = self.send(have, data)
                if sent or size == have + len(data):
                    pos += skip or len(whole)
                    self.system.sent(upto)
                have = size
                continue
            if done:
                return
            self.stop.nap(self.every)


def main() -> None:
    sender = Sender(dict(os.environ))
    try:
        sender.run()
    except Refused as exc:
        say(f"{exc}; what was not sent is in {sender.path}")
        sys.exit(1)
    for name in (sender.path, sender.stop.end_file):
        with contextlib.suppress(OSError):
            os.unlink(name)


if __name__ == "__main__":
    main()
