"""The HTTP API against its own OpenAPI document, checked from outside by schemathesis.

A real ``fetchml serve`` (rate limits off: schemathesis's wrong-key probes would ban 127.0.0.1)
is fuzzed through the schemathesis CLI: boundary values (coverage), random valid and invalid
requests (fuzzing) and chains of requests that follow the document's links (stateful), with
a fixed seed and a bounded number of examples (well under two minutes on two cores).  It must
find no 5xx, no response that violates the document, no status code the document does not
list, no valid request refused and no invalid one accepted; afterwards the server still
answers and still runs a job.

Before it, the test makes what random requests cannot: a snapshot (a plan, a pack, a blob sent
in two parts, the commit) and job 1, run from it, which leaves the output files the document's
examples name (``metrics.json``, ``checkpoints/epoch-1.pt``).  So the coverage phase (which
tries job id 1 and the examples) and the links (a job's file list to its files) reach real
files, byte ranges and folders; those setup requests are checked against the document too.
``prune`` runs last, in a second schemathesis run of its own: a real prune removes job 1's
outputs, which the first run needs (jobs themselves stay, so the final checks are unaffected).

schemathesis submits random job specs and the server runs them.  They run with an empty
``PATH`` (so no program can be found by name) in a temporary directory, and every job process is
killed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from helpers.core import kill_everything_under
from helpers.gateway import HOST, SERVE_PROGRAM, Users, free_port, server_yaml

from fetchml.errors import InvalidRequestError
from fetchml.gateway._openapi import MANIFEST_PATH_PATTERN
from fetchml.snapshots import check_path

# Per operation (every operation is exercised); the stateful phase runs about as many
# scenarios.  60 keeps the suite inside its 10 minutes on 2 cores (150 took ~150 s).
MAX_EXAMPLES = 60
SEED = 20261202
CLI_TIMEOUT_S = 300

# The checks that run: every built-in check, less these (schemathesis's own config format).
SCHEMATHESIS_TOML = """\
[checks.negative_data_rejection]
# schemathesis's own list, and 413: a schema-violating body may be larger than the route takes
# (1,001 `provenance.command_line` items of 4,096 characters), refused before it is decoded.
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx",
]

[[operations]]
# A spec the schema allows may still be refused with 400: more cpus, memory or GPUs than this
# server has, an unknown `depends_on` job or `snapshot`, a NUL byte or a lone surrogate in a
# string; or with 413, a spec larger than `server.max_body_bytes`.  The document says so; it
# cannot express it.  Invalid specs must still be refused (negative_data_rejection), and every
# answer must match the document.
include-operation-id = "submitJob"
checks.positive_data_acceptance.enabled = false

[[operations]]
# A manifest the schema allows may still be refused: a path listed twice or over 4096 bytes, a
# file that is also a folder, a link out of the tree, an attachment name that is not an
# identifier (400), more than `snapshots.max_files` / `max_bytes` (413: random sizes go up to
# 2**62); a commit, also one whose blobs were never sent (400).  The document says so.
include-operation-id = ["planSnapshot", "commitSnapshot"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# The body's schema is bytes: the server stores only blobs a plan of the caller announced, each
# matching its hash, at the offset where its copy ends.  Random bytes are refused with 400
# (an empty pack is accepted); the setup sends real blobs and checks the answers.
include-operation-id = ["uploadBlobPack", "uploadBlobPart"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# `GET /api/v1/snapshots/plan` reaches `GET /api/v1/snapshots/{snapshot_id}` (werkzeug takes
# `plan` for an id, and refuses it with 400, as the document says there), so the server's
# `Allow` for this URL names GET too.  Every other check runs.
include-operation-id = "planSnapshot"
checks.allow_header_conformance.enabled = false

[[operations]]
# A valid `Range` may not fit the file: past its end, the answer is 416 (which the document
# lists).  The other statuses of valid requests are schemathesis's own list.
include-operation-id = "getJobFile"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "416", "429", "5xx",
]

[[operations]]
# `before` is an opaque cursor (the `next` of a previous page of the same sort): any other text
# the schema allows is refused with 400 naming it, as the document says.
include-operation-id = "listExperimentRuns"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx",
]
"""
PRUNE = "prune"

# Job 1: run from a snapshot, it leaves the output files the document's examples name.
RUN_PY = b"""\
import json, os, pathlib
out = pathlib.Path(os.environ["FETCHML_OUTPUT_DIR"])
(out / "metrics.json").write_text(json.dumps({"loss": 0.25}))
(out / "checkpoints").mkdir()
(out / "checkpoints" / "epoch-1.pt").write_bytes(pathlib.Path("latest").read_bytes())
"""
WEIGHTS = bytes(range(256)) * 12  # 3,072 bytes, sent in two parts


def _exchange(
    port: int,
    method: str,
    path: str,
    *,
    key: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; (status, headers (lowercase names), body).  A
    ``bytes`` body is sent as it is (octet-stream), anything else as JSON."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        sent = dict(headers or {})
        if key:
            sent["Authorization"] = f"Bearer {key}"
        data = None
        if isinstance(body, bytes):
            data = body
            sent["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, raw
    finally:
        conn.close()


def _request(
    port: int, method: str, path: str, *, key: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """One request on a fresh connection; (status, JSON body or None)."""
    status, headers, raw = _exchange(port, method, path, key=key, body=body)
    kind = headers.get("content-type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else None


class _Document:
    """The server's own OpenAPI document, to check the answers of the setup requests by: the
    status is listed, the content type is, a JSON body matches its schema, and every
    required header is there and matches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def check(
        self,
        template: str,
        method: str,
        answer: tuple[int, dict[str, str], bytes],
    ) -> Any:
        """The JSON body of ``answer`` (None if not JSON), once checked."""
        status, headers, raw = answer
        operation = self.document["paths"][template][method.lower()]
        responses = operation["responses"]
        assert str(status) in responses, (template, method, status, raw[:500])
        response = responses[str(status)]
        kind = headers.get("content-type", "").split(";")[0].strip()
        assert kind in response.get("content", {}), (template, status, kind)
        for name, header in response.get("headers", {}).items():
            value = headers.get(name.lower())
            if value is None:
                assert not header.get("required"), (template, status, name)
            else:
                self._validate(header["schema"], value)
        if kind != "application/json":
            return None
        body = json.loads(raw)
        self._validate(response["content"][kind]["schema"], body)
        return body

    def _validate(self, schema: dict[str, Any], value: Any) -> None:
        rooted = {**schema, "components": self.document["components"]}
        errors = [e.message for e in jsonschema_rs.validator_for(rooted).iter_errors(value)]
        assert not errors, (schema, value, errors)


def _seed(port: int, key: str) -> int:
    """A snapshot, sent as the client sends one, and a job run from it that leaves output
    files; returns the job's id once it has succeeded.  Every answer is checked against the
    document and for what it must say."""
    status, document = _request(port, "GET", "/api/v1/openapi.json")
    assert status == 200
    doc = _Document(document)
    run_sha = hashlib.sha256(RUN_PY).hexdigest()
    weights_sha = hashlib.sha256(WEIGHTS).hexdigest()
    manifest = {
        "files": [
            {"path": "run.py", "mode": 0o644, "size": len(RUN_PY), "sha256": run_sha},
            {
                "path": "data/weights.bin",
                "mode": 0o644,
                "size": len(WEIGHTS),
                "sha256": weights_sha,
            },
        ],
        "links": [{"path": "latest", "target": "data/weights.bin"}],
    }

    def call(template: str, method: str, path: str, **kwargs: Any) -> Any:
        return doc.check(template, method, _exchange(port, method, path, key=key, **kwargs))

    plan = call("/api/v1/snapshots/plan", "POST", "/api/v1/snapshots/plan", body=manifest)
    assert plan["missing"] == dict.fromkeys(sorted([run_sha, weights_sha]), 0), plan
    pack = f"{run_sha} {len(RUN_PY)}\n".encode() + RUN_PY
    stored = call("/api/v1/blobs", "POST", "/api/v1/blobs", body=pack)
    assert stored == {"stored": 1, "bytes": len(RUN_PY)}, stored
    part = f"/api/v1/blobs/{weights_sha}?total={len(WEIGHTS)}"
    for offset, end in ((0, 2000), (2000, len(WEIGHTS))):
        have = call(
            "/api/v1/blobs/{sha256}", "PUT", f"{part}&offset={offset}", body=WEIGHTS[offset:end]
        )
        assert have == {"have": end}, have
    created = call("/api/v1/snapshots", "POST", "/api/v1/snapshots", body=manifest)
    sid = created["snapshot"]["id"]
    assert sid == plan["id"], (created, plan)
    stored_manifest = call("/api/v1/snapshots/{snapshot_id}", "GET", f"/api/v1/snapshots/{sid}")
    assert [f["path"] for f in stored_manifest["files"]] == ["data/weights.bin", "run.py"]

    spec = {"command": [sys.executable, "run.py"], "snapshot": sid, "name": "seed"}
    job = call("/api/v1/jobs", "POST", "/api/v1/jobs", body=spec)["job"]
    path = f"/api/v1/jobs/{job['id']}"
    deadline = time.monotonic() + 30
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = call("/api/v1/jobs/{job_id}", "GET", path)["job"]
    assert job["state"] == "succeeded", job

    run = call("/api/v1/jobs/{job_id}/manifest", "GET", f"{path}/manifest")
    assert run["snapshot"] == {"id": sid, "files": 2, "bytes": len(RUN_PY) + len(WEIGHTS)}, run
    files = call("/api/v1/jobs/{job_id}/files", "GET", f"{path}/files")
    assert files["final"] is True, files
    assert [f["path"] for f in files["files"]] == ["checkpoints/epoch-1.pt", "metrics.json"]
    valid = call("/api/v1/jobs/{job_id}/validate", "POST", f"{path}/validate")
    assert valid == {"ok": True, "checks": 4, "errors": []}, valid

    template = "/api/v1/jobs/{job_id}/files/{path}"
    weights = f"{path}/files/checkpoints/epoch-1.pt"
    answer = _exchange(port, "GET", weights, key=key)
    doc.check(template, "GET", answer)
    assert answer[2] == WEIGHTS
    answer = _exchange(port, "GET", weights, key=key, headers={"Range": "bytes=1000-1999"})
    doc.check(template, "GET", answer)
    assert (answer[0], answer[2]) == (206, WEIGHTS[1000:2000])
    assert answer[1]["content-range"] == f"bytes 1000-1999/{len(WEIGHTS)}"
    answer = _exchange(port, "GET", weights, key=key, headers={"Range": "bytes=5000-"})
    doc.check(template, "GET", answer)
    assert answer[0] == 416
    answer = _exchange(port, "GET", f"{path}/files/checkpoints", key=key)
    doc.check(template, "GET", answer)
    assert answer[1]["content-type"] == "application/x-tar", answer[1]
    return int(job["id"])


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


def _schemathesis(
    tmp: Path, port: int, key: str, *options: str
) -> subprocess.CompletedProcess[str]:
    config = tmp / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    argv = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config)),
        *("run", f"http://{HOST}:{port}/api/v1/openapi.json"),
        *("--header", f"Authorization: Bearer {key}"),
        *("--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED)),
        *("--request-timeout", "15", "--generation-database", "none", "--no-color"),
        *options,
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


def test_manifest_path_pattern_is_what_the_server_takes() -> None:
    """The document's pattern for a snapshot path accepts exactly what ``check_path`` does
    (but the byte limit and lone surrogates, which it says in words)."""
    samples = [
        *("a", "a/b", "a/b/c.txt", ".a", "..a", "...", "a.", "a..", "a/.b", " ", "é/ü", "a\n"),
        *("", ".", "..", "/a", "a/", "a//b", "./a", "a/./b", "a/../b", "a/..", "a\\b", "a\x00"),
    ]
    for path in samples:
        try:
            check_path(path, "path")
            taken = True
        except InvalidRequestError:
            taken = False
        assert (re.search(MANIFEST_PATH_PATTERN, path) is not None) == taken, repr(path)


@pytest.mark.slow
def test_http_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    users = Users()
    with _server(tmp_path, users) as (port, log):
        started = time.monotonic()
        assert _seed(port, users.admin) == 1
        runs = [
            (
                "every operation but prune",
                ("--exclude-operation-id", PRUNE, "--phases", "coverage,fuzzing,stateful"),
            ),
            # No links lead to or from prune: the stateful phase would have nothing of it.
            ("prune", ("--include-operation-id", PRUNE, "--phases", "coverage,fuzzing")),
        ]
        for what, options in runs:
            run = _schemathesis(tmp_path, port, users.admin, *options)
            took = time.monotonic() - started
            assert run.returncode == 0, (
                f"schemathesis found problems in {what} (exit {run.returncode}, {took:.0f} s):\n"
                f"{run.stdout}\n{run.stderr}\n--- server log (tail) ---\n"
                f"{log.read_text()[-20000:]}"
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
