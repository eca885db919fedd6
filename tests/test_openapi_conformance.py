"""The HTTP API against its own OpenAPI document, checked from outside by schemathesis.

A real ``fetchml serve`` (rate limits off: schemathesis's wrong-key probes would ban 127.0.0.1)
is fuzzed through the schemathesis CLI: boundary values (coverage), random valid and invalid
requests (fuzzing) and chains of requests that follow the document's links (stateful), with
a fixed seed and a bounded number of examples (well under two minutes on two cores).  It must
find no 5xx, no response that violates the document, no status code the document does not
list, no valid request refused and no invalid one accepted; afterwards the server still
answers and still runs a job.

schemathesis submits random job specs and the server runs them.  They run with an empty
``PATH`` (so no program can be found by name) in a temporary directory, and every job process is
killed at the end.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.core import kill_everything_under
from helpers.gateway import HOST, SERVE_PROGRAM, Users, free_port, server_yaml

pytestmark = pytest.mark.slow

# Per operation; the stateful phase runs about as many scenarios.  About 40 s on two cores.
MAX_EXAMPLES = 150
SEED = 20261202
CLI_TIMEOUT_S = 300

# The checks that run: every built-in check, less these (schemathesis's own config format).
SCHEMATHESIS_TOML = """\
[[operations]]
# A spec the schema allows may still be refused with 400: more cpus, memory or GPUs than this
# server has, an unknown `depends_on` job, a NUL byte or a lone surrogate in a string.  The
# document says so; it cannot express it.  Invalid specs must still be refused
# (negative_data_rejection), and every answer must match the document.
include-operation-id = "submitJob"
checks.positive_data_acceptance.enabled = false
"""


def _request(
    port: int, method: str, path: str, *, key: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """One request on a fresh connection; (status, JSON body or None)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(raw) if kind.startswith("application/json") else None
    finally:
        conn.close()


@contextlib.contextmanager
def _server(tmp: Path, users: Users) -> Iterator[tuple[int, Path]]:
    """``fetchml serve`` with rate limits off and an empty PATH; yields (port, its log file).

    Stopped at the end (SIGTERM, then SIGKILL), and every job process under ``tmp`` killed.
    """
    empty_bin = tmp / "empty-bin"
    empty_bin.mkdir()
    config = tmp / "server.yaml"
    extra = "limits:\n  enabled: false\n"
    config.write_text(server_yaml(tmp / "data", users.write(tmp / "auth.yaml"), extra))
    port = free_port()
    log = tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "FETCHML_CONFIG"}
    env["PATH"] = str(empty_bin)  # jobs inherit it: no program is found by name
    argv = [sys.executable, "-c", SERVE_PROGRAM, "serve", "--config", str(config)]
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the server exited:\n{log.read_text()}"
            with contextlib.suppress(OSError, http.client.HTTPException):
                if _request(port, "GET", "/health")[0] == 200:
                    break
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()}"
            time.sleep(0.05)
        yield port, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        kill_everything_under(tmp)


def _schemathesis(tmp: Path, port: int, key: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    argv = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config)),
        *("run", f"http://{HOST}:{port}/api/v1/openapi.json"),
        *("--header", f"Authorization: Bearer {key}"),
        *("--phases", "coverage,fuzzing,stateful"),
        *("--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED)),
        *("--request-timeout", "15", "--generation-database", "none", "--no-color"),
    ]
    # Its own directory: schemathesis looks for a schemathesis.toml from its cwd upwards.
    return subprocess.run(
        argv,
        cwd=tmp,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_http_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    users = Users()
    with _server(tmp_path, users) as (port, log):
        started = time.monotonic()
        run = _schemathesis(tmp_path, port, users.admin)
        took = time.monotonic() - started
        assert run.returncode == 0, (
            f"schemathesis found problems (exit {run.returncode}, {took:.0f} s):\n"
            f"{run.stdout}\n{run.stderr}\n--- server log (tail) ---\n{log.read_text()[-20000:]}"
        )
        assert "Traceback (most recent call last)" not in log.read_text(), log.read_text()

        # Still alive, and still runs jobs: stop whatever schemathesis left queued or running,
        # then one ordinary job.
        assert _request(port, "GET", "/health") == (200, {"status": "ok"})
        status, listed = _request(
            port, "GET", "/api/v1/jobs?state=queued,running&limit=10000", key=users.admin
        )
        assert status == 200, listed
        for job in listed["jobs"]:
            status, body = _request(
                port, "POST", f"/api/v1/jobs/{job['id']}/cancel", key=users.admin
            )
            assert status in (200, 409), body
        spec = {"command": ["/bin/true"], "priority": 10}
        status, created = _request(port, "POST", "/api/v1/jobs", key=users.admin, body=spec)
        assert status == 201, created
        path = f"/api/v1/jobs/{created['job']['id']}"
        deadline = time.monotonic() + 30
        while True:
            status, got = _request(port, "GET", path, key=users.admin)
            assert status == 200, got
            if got["job"]["state"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        assert got["job"]["state"] == "succeeded", got
        assert got["job"]["exit_code"] == 0, got
