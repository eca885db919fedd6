"""The transport of Ray runs' metrics, without Ray: ``PUT /api/v1/jobs/{id}/track`` on a real
server (a local job stands for the run; its run token is made as the Ray backend makes one),
the sender program (``TRACK_SENDER``) run as a real subprocess, against a real server that goes
down and comes back and against a stand-in that loses a reply, and the Ray job's whole wrapper
(``entrypoint``) run by ``/bin/sh`` as a node runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
from helpers.core import until
from helpers.gateway import HIGH_LIMITS, HttpSession, Users, free_port, serve, until_job

import fetchml
from fetchml import JobSpec
from fetchml.actors.backends import job_dir, track_path
from fetchml.actors.backends._ray import Results, entrypoint
from fetchml.artifacts import check_run_token, run_token
from fetchml.tracking import TRACK_SENDER, TRACK_SIZE_HEADER, append_track

PART = 1 << 16
TOKEN = "X-Fetchml-Run-Token"


@pytest.fixture
def users() -> Users:
    return Users()


def config(
    data_dir: Path, users: Users, port: int = 0, system_interval_s: float = 10.0
) -> fetchml.Config:
    """A local server; it samples its own (stand-in) jobs every ``system_interval_s``."""
    auth_file = users.write(data_dir.parent / "auth.yaml")
    return fetchml.make_config(
        data_dir=str(data_dir),
        port=port,
        auth_file=str(auth_file),
        cpus=8,
        memory_mb=4000,
        gpus=[],
        kill_grace_s=0.5,
        limits=HIGH_LIMITS,
        snapshots={"part_bytes": PART},
        tracking={"ingest_interval_s": 0.05, "system_interval_s": system_interval_s},
    )


def line(step: int) -> bytes:
    return json.dumps({"step": step, "metrics": {"loss": step / 10}}).encode() + b"\n"


async def start_job(s: HttpSession, key: str, data_dir: Path) -> tuple[int, str]:
    """A running local job (it sleeps) and a run token of its attempt 1."""
    response = await s.request(
        "POST", "/api/v1/jobs", key=key, json_body={"command": ["sleep", "120"]}
    )
    assert response.status == 201, response.body
    job_id: int = response.json()["job"]["id"]
    await until_job(s, key, job_id, ("running",))
    return job_id, run_token(job_dir(data_dir, job_id), 1)


async def put(
    s: HttpSession, job_id: int, token: str | None, body: bytes, **query: Any
) -> tuple[int, str | None, dict[str, Any]]:
    """(status, the size header, the JSON body) of one PUT of ``body``."""
    params = {"attempt": 1, **query}
    target = f"/api/v1/jobs/{job_id}/track?" + "&".join(f"{k}={v}" for k, v in params.items())
    headers = [(TOKEN, token)] if token is not None else []
    response = await s.request("PUT", target, body=body, headers=headers)
    return response.status, response.headers.get(TRACK_SIZE_HEADER.lower()), response.json()


async def raw_steps(s: HttpSession, key: str, job_id: int, name: str) -> list[int]:
    """The steps of the job's metric ``name`` the server has (none: not logged yet)."""
    response = await s.request(
        "GET", f"/api/v1/jobs/{job_id}/metrics/{name}?raw=1&limit=10000", key=key
    )
    if response.status == 404 and "no metric" in response.error["message"]:
        return []
    assert response.status == 200, response.body
    steps: list[int] = response.json()["step"]
    return steps


async def until_steps(s: HttpSession, key: str, job_id: int, count: int) -> list[int]:
    """The steps of ``loss`` once the server has at least ``count`` of them."""

    async def enough() -> bool:
        return len(await raw_steps(s, key, job_id, "loss")) >= count

    await until(enough, within=10)
    return await raw_steps(s, key, job_id, "loss")


async def test_the_track_route_appends_in_order_and_refuses_what_it_must(
    data_dir: Path, users: Users
) -> None:
    first, second = line(0), line(1) + line(2)
    with trio.fail_after(60):
        async with serve(config(data_dir, users)) as base, HttpSession(base) as s:
            job_id, token = await start_job(s, users.alice, data_dir)
            for bad in (None, "", "not-the-token"):
                status, size, body = await put(s, job_id, bad, first, offset=0)
                assert (status, size, body["error"]["code"]) == (401, None, "unauthorized")
            assert (await put(s, job_id, token, first))[0] == 400  # no offset
            status, _, body = await put(s, job_id, token, b'{"step": 0', offset=0)
            assert (status, body["error"]["field"]) == (400, "body")
            status, _, body = await put(s, job_id, token, b"x" * PART + b"\n", offset=0)
            assert (status, body["error"]["code"]) == (413, "too_large")
            assert await put(s, job_id, token, b"", offset=0) == (200, "0", {"have": 0})

            assert await put(s, job_id, token, first, offset=0) == (
                200,
                str(len(first)),
                {"have": len(first)},
            )
            # The same part again (its reply lost) and a part out of order: nothing stored,
            # and the size to send from.
            for offset in (0, 3, 10**6):
                status, size, body = await put(s, job_id, token, second, offset=offset)
                assert (status, size, body["error"]["code"]) == (409, str(len(first)), "conflict")
            status, size, _ = await put(s, job_id, token, second, offset=len(first))
            assert (status, size) == (200, str(len(first + second)))
            assert await until_steps(s, users.alice, job_id, 3) == [0, 1, 2]

            # Another attempt's token, of an attempt the job does not run.
            other = run_token(job_dir(data_dir, job_id), 2)
            status, size, body = await put(s, job_id, other, line(3), offset=0, attempt=2)
            assert (status, size, body["error"]["code"]) == (409, None, "conflict")
            assert "current" in body["error"]["message"]

            cancel = await s.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=users.alice)
            assert cancel.status == 200, cancel.body
            await until_job(s, users.alice, job_id, ("cancelled",))
            status, size, body = await put(s, job_id, token, line(3), offset=len(first + second))
            assert (status, size, body["error"]["code"]) == (409, None, "conflict")
            assert "cancelled" in body["error"]["message"]
            assert await raw_steps(s, users.alice, job_id, "loss") == [0, 1, 2]
    assert track_path(data_dir, job_id).read_bytes() == first + second


def test_concurrent_appends_at_one_offset_store_one(tmp_path: Path) -> None:
    path = tmp_path / "track.jsonl"
    results: list[tuple[bool, int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(append_track(path, 0, line(0))))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [(False, len(line(0)))] * 7 + [(True, len(line(0)))]
    assert path.read_bytes() == line(0)


def sender_env(url: str, job_id: int, token: str, node_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FETCHML_RESULTS_URL": url,
        "FETCHML_JOB_ID": str(job_id),
        "FETCHML_ATTEMPT": "1",
        "FETCHML_RUN_TOKEN": token,
        "FETCHML_TRACK_FILE": str(node_file),
        "FETCHML_PART_BYTES": str(PART),
        "FETCHML_TRACK_SEND_S": "0.1",
        "FETCHML_TRACK_FINAL_S": "20",
    }


@contextmanager
def sender(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """The sender program running, as the wrapper runs it; killed if still there at the end."""
    proc = subprocess.Popen([sys.executable, "-c", TRACK_SENDER], env=env, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def append_lines(path: Path, steps: range) -> bytes:
    data = b"".join(line(step) for step in steps)
    with path.open("ab") as handle:
        handle.write(data)
    return data


async def finish(proc: subprocess.Popen[bytes], node_file: Path) -> str:
    """Tell the sender the job ended (as the wrapper does); its stderr once it exits 0."""
    await trio.Path(f"{node_file}.end").touch()
    code = await trio.to_thread.run_sync(proc.wait, 30)
    assert proc.stderr is not None
    errors = proc.stderr.read().decode()
    assert code == 0, errors
    return errors


async def test_the_sender_keeps_lines_while_the_server_is_down_and_sends_them_once(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    port = free_port()
    settings = config(data_dir, users, port)
    url = f"http://127.0.0.1:{port}"
    node_file = tmp_path / "node" / "track.jsonl"
    node_file.parent.mkdir()
    sent = b""
    with trio.fail_after(90):
        async with serve(settings) as base, HttpSession(base) as s:
            job_id, token = await start_job(s, users.alice, data_dir)
        # The server is down (the job runs on): the sender keeps trying.
        with sender(sender_env(url, job_id, token, node_file)) as proc:
            sent += append_lines(node_file, range(100))
            await trio.sleep(0.5)
            async with serve(settings) as base, HttpSession(base) as s:
                assert await until_steps(s, users.alice, job_id, 100) == list(range(100))
                sent += append_lines(node_file, range(100, 200))
                await until_steps(s, users.alice, job_id, 200)
            sent += append_lines(node_file, range(200, 300))
            await trio.sleep(0.5)
            async with serve(settings) as base, HttpSession(base) as s:
                sent += append_lines(node_file, range(300, 400))
                with node_file.open("ab") as handle:
                    handle.write(b'{"step": 400, "metr')  # a line the job never ended
                errors = await finish(proc, node_file)
                assert await until_steps(s, users.alice, job_id, 400) == list(range(400))
                cancel = await s.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=users.alice)
                assert cancel.status == 200
    assert "cannot reach the server" in errors
    assert track_path(data_dir, job_id).read_bytes() == sent
    assert not await trio.Path(node_file).exists()
    assert not await trio.Path(f"{node_file}.end").exists()


class _Flaky(BaseHTTPRequestHandler):
    """The track route's protocol on a real file, whose first data part is stored but its
    reply lost (the connection dropped): what a server killed at the wrong moment does."""

    path_of: Path
    lost: list[int]

    def do_PUT(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        data = self.rfile.read(int(self.headers["Content-Length"]))
        appended, size = append_track(self.path_of, int(query["offset"][0]), data)
        if appended and data and not self.lost:
            self.lost.append(size)
            self.close_connection = True
            self.connection.close()
            return
        self.send_response(200 if appended else 409)
        self.send_header(TRACK_SIZE_HEADER, str(size))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_a_lost_reply_and_an_overlong_line_store_nothing_twice(tmp_path: Path) -> None:
    server_file = tmp_path / "server.jsonl"
    node_file = tmp_path / "node.jsonl"
    lost_replies: list[int] = []

    class Handler(_Flaky):
        path_of = server_file
        lost = lost_replies

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with trio.fail_after(30), sender(sender_env(url, 1, "t", node_file)) as proc:
            first = append_lines(node_file, range(10))
            await trio.sleep(0.3)
            overlong = b'{"params": {"blob": "' + b"x" * PART + b'"}}\n'
            with node_file.open("ab") as handle:
                handle.write(overlong)
            last = append_lines(node_file, range(10, 20))
            await finish(proc, node_file)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert lost_replies, "no reply was lost"
    marker = b'{"oversized_line_bytes": %d}\n' % len(overlong)
    assert server_file.read_bytes() == first + marker + last


JOB = """
from fetchml import track
for step in range(20):
    track.log({"loss": step / 10}, step=step)
raise SystemExit(3)
"""
UPLOADER_STAND_IN = """
import os, sys
done = not os.path.exists(os.environ["FETCHML_TRACK_FILE"])
print("outputs' turn: the sender is", "done" if done else "still going", file=sys.stderr)
"""


async def test_the_wrapper_sends_the_last_lines_before_the_job_ends(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    node = tmp_path / "node"
    node.mkdir()
    with trio.fail_after(60):
        async with serve(config(data_dir, users)) as base, HttpSession(base) as s:
            job_id, token = await start_job(s, users.alice, data_dir)
            results = Results(base, job_id, 1, token, PART)
            env = {
                **os.environ,
                **results.env(),
                "FETCHML_JOB_ID": str(job_id),
                "FETCHML_ATTEMPT": "1",
                "TMPDIR": str(node),
                # Nothing is sent before the job ends but by the final flush, and the outputs'
                # turn comes only once the sender is done (it removes the node's file then).
                "FETCHML_TRACK_SEND_S": "30",
                "FETCHML_UPLOADER": UPLOADER_STAND_IN,
            }
            wrapper = entrypoint(JobSpec(command=[sys.executable, "-c", JOB]), results=True)
            done = await trio.run_process(
                ["/bin/sh", "-c", wrapper], env=env, cwd=node, capture_stderr=True, check=False
            )
            # The moment the wrapper exits, every line is on the server (nothing waits).
            stored = track_path(data_dir, job_id).read_bytes()
            cancel = await s.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=users.alice)
            assert cancel.status == 200
    assert done.returncode == 3, done.stderr
    assert b"[fetchml] metrics" not in done.stderr
    assert b"outputs' turn: the sender is done" in done.stderr
    assert [json.loads(text)["step"] for text in stored.splitlines()] == list(range(20))
    assert sorted(p.name for p in node.iterdir()) == [".fetchml-output"]


# Logs without steps (they must stay 0, 1, 2...: the samples between do not count), while it
# holds 64 MiB and keeps a core busy for a while.
BUSY_JOB = """
import time
from fetchml import track
held = b"x" * (64 << 20)
end, n, logged = time.monotonic() + 1.5, 0, 0
while time.monotonic() < end:
    n += 1
    if n % 50000 == 0:
        track.log({"loss": 1.0 / (logged + 1)})
        logged += 1
print("logged", logged)
"""
SMI = "echo '0, GPU-aaaa, 10, 100, 16000'; echo '1, GPU-bbbb, 55, 2048, 16000'"


async def test_the_sender_samples_the_jobs_processes_and_gpus_on_the_node(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    node, tools = tmp_path / "node", tmp_path / "bin"
    node.mkdir()
    tools.mkdir()
    smi = tools / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{SMI}\n")
    smi.chmod(0o755)
    with trio.fail_after(60):
        # The server samples nothing itself (its stand-in job is not the run on the node).
        async with (
            serve(config(data_dir, users, system_interval_s=3600)) as base,
            HttpSession(base) as s,
        ):
            job_id, token = await start_job(s, users.alice, data_dir)
            results = Results(base, job_id, 1, token, PART, system_interval_s=0.2)
            env = {
                **os.environ,
                **results.env(),
                "FETCHML_JOB_ID": str(job_id),
                "FETCHML_ATTEMPT": "1",
                "TMPDIR": str(node),
                "FETCHML_TRACK_SEND_S": "0.1",
                "FETCHML_UPLOADER": "pass",
                "PATH": f"{tools}:{os.environ['PATH']}",
                "CUDA_VISIBLE_DEVICES": "1",  # as Ray sets it for a run given GPU 1
            }
            wrapper = entrypoint(JobSpec(command=[sys.executable, "-c", BUSY_JOB]), results=True)
            done = await trio.run_process(
                ["/bin/sh", "-c", wrapper], env=env, cwd=node, capture_stdout=True, check=False
            )
            logged = int(done.stdout.split()[-1])
            await until_steps(s, users.alice, job_id, logged)
            info = (
                await s.request("GET", f"/api/v1/jobs/{job_id}/metrics", key=users.alice)
            ).json()
            loss = await raw_steps(s, users.alice, job_id, "loss")
            cpu = await s.request(
                "GET", f"/api/v1/jobs/{job_id}/metrics/sys/cpu_percent?raw=1", key=users.alice
            )
            await s.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=users.alice)
    assert done.returncode == 0
    metrics = {m["name"]: m for m in info["metrics"]}
    assert loss == list(range(logged))
    assert logged > 0
    assert set(metrics) == {
        "loss",
        "sys/cpu_percent",
        "sys/rss_mb",
        "sys/processes",
        "sys/gpu1/util_percent",
        "sys/gpu1/memory_used_mb",
        "sys/gpu1/memory_total_mb",
    }
    assert metrics["sys/processes"]["count"] >= 3
    assert metrics["sys/rss_mb"]["max"] > 64  # the job's 64 MiB, not the sender's
    assert metrics["sys/cpu_percent"]["max"] > 25  # it spins: ~100 on an idle machine
    assert metrics["sys/gpu1/util_percent"]["last"] == 55
    assert metrics["sys/gpu1/memory_used_mb"]["last"] == 2048
    steps = cpu.json()["step"]
    assert steps == list(range(len(steps)))  # each sample at the next step of its metric
    assert info["invalid"] == 0


def test_an_attempts_run_token_is_made_once(tmp_path: Path) -> None:
    """A start retried after a lost reply finds the run on the cluster with the token it was
    given first: the same attempt always gets that token; another attempt another one."""
    folder = tmp_path / "jobs" / "7"
    first = run_token(folder, 1)
    assert run_token(folder, 1) == first
    assert run_token(folder, 2) != first
    assert check_run_token(folder, 1, first)
    assert not check_run_token(folder, 2, first)
    (folder / "run.3.token").write_text("")  # left empty by a crash mid-write
    made = run_token(folder, 3)
    assert made
    assert check_run_token(folder, 3, made)


def test_samples_taken_while_a_send_is_under_way_are_neither_resent_nor_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender's waiting samples are taken off by number: if the oldest are dropped (too
    many wait) while a send of them is under way, what was sent is not sent again, and the
    samples taken meanwhile still wait."""
    from fetchml.tracking import _sender

    monkeypatch.setattr(_sender, "MAX_WAITING", 3)
    system = _sender.System(interval=1.0)
    values = iter(range(100))
    monkeypatch.setattr(system.tree, "sample", lambda: {"sys/n": float(next(values))})
    monkeypatch.setattr(system.gpus, "sample", dict)

    def take(count: int) -> None:
        for _ in range(count):
            system.due = 0.0
            system.poll()

    def waiting() -> list[float]:
        return [json.loads(text)["system"]["sys/n"] for _, text in system.waiting]

    take(2)
    data, upto = system.lines(1 << 16)
    assert [json.loads(text)["system"]["sys/n"] for text in data.splitlines()] == [0, 1]
    take(3)  # while the send of samples 0 and 1 is under way: 0 and 1 are dropped
    assert (waiting(), system.dropped) == ([2, 3, 4], 2)
    system.sent(upto)
    assert waiting() == [2, 3, 4]
    data, upto = system.lines(1 << 16)
    system.sent(upto)
    assert (waiting(), data.count(b"\n")) == ([], 3)
    assert system.lines(1 << 16) == (b"", system.taken)
