"""The dataset registry end to end: ``ml dataset`` against a real server, the HTTP API with its
roles and bad input, a job that names a dataset gets ``FETCHML_DATASET_<NAME>`` and its run
manifest records what it resolved to; versions; the registry outlives the server."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, cast

import hypothesis.strategies as st
import msgspec
import pytest
import trio
from helpers.core import open_sched
from helpers.gateway import HttpSession
from hypothesis import given
from test_client_support import KEYS, Ml, running_server

from fetchml._config import RaySettings
from fetchml._models import DatasetRef, Job, JobSpec, JobState, check_spec, dataset_env_name
from fetchml.actors.backends._ray import RayBackend, RayRun
from fetchml.artifacts import read_run_manifest
from fetchml.client import connect
from fetchml.datasets import DatasetRegistry, check_registration, uri_problem
from fetchml.errors import ConflictError, InvalidRequestError, InvalidSpecError
from fetchml.protocol import RegisterDataset

SHA = "ab" * 32
PRINT_ENV = "import os; print(os.environ.get('FETCHML_DATASET_IMAGENET_1K', 'unset'))"


async def ml_ok(ml: Ml, user: str, *args: str) -> Any:
    result = await ml(user, *args, "--json")
    assert result.rc == 0, result.err
    return result.json()


async def test_register_list_info_and_a_job_that_uses_one(data_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with running_server(data_dir) as url:
            ml = Ml(url, tmp_path)
            first = await ml_ok(
                ml, "bob", "dataset", "register", "imagenet-1k", "s3://data/in1k", "--sha256", SHA
            )
            again = await ml_ok(
                ml,
                "bob",
                "dataset",
                "register",
                "imagenet-1k",
                "s3://data/in1k-v2",
                "--description",
                "re-cropped",
            )
            listed = await ml_ok(ml, "carol", "dataset", "list")
            info = await ml_ok(ml, "carol", "dataset", "info", "imagenet-1k")
            table = await ml("carol", "dataset", "list")
            refused = await ml("carol", "dataset", "register", "x", "/data/x")
            missing = await ml("bob", "dataset", "info", "nope")
            queued = await ml(
                "bob",
                "queue",
                "--no-snapshot",
                "--dataset",
                "imagenet-1k@1",
                "--json",
                "--",
                sys.executable,
                "-c",
                PRINT_ENV,
            )
            assert queued.rc == 0, queued.err
            job_id = queued.json()["id"]
            async with connect(url, KEYS["bob"]) as client:
                job = await client.wait(job_id)
                log = await client.logs(job_id)
            unknown = await ml("bob", "queue", "--no-snapshot", "--dataset", "nope", "--", "true")
    assert [v["version"] for v in first["versions"]] == [1]
    assert [v["version"] for v in again["versions"]] == [2, 1]
    assert [(d["name"], d["versions"], d["latest"]["uri"]) for d in listed] == [
        ("imagenet-1k", 2, "s3://data/in1k-v2")
    ]
    assert info["versions"][1]["sha256"] == SHA
    assert info["versions"][0]["description"] == "re-cropped"
    assert info["versions"][0]["user"] == "bob"
    assert "imagenet-1k" in table.out
    assert "s3://data/in1k-v2" in table.out
    assert refused.rc != 0
    assert "datasets:write" in refused.err
    assert missing.rc != 0
    assert "no dataset named 'nope'" in missing.err
    assert job.state == "succeeded", job
    assert log.strip() == b"s3://data/in1k"  # the pinned version, not the latest
    refs = [(r.name, r.version, r.uri, r.sha256) for r in job.spec.dataset_refs]
    assert refs == [("imagenet-1k", 1, "s3://data/in1k", SHA)]
    manifest = read_run_manifest(data_dir / "jobs" / str(job_id) / "output")
    assert manifest is not None
    assert manifest.spec.dataset_refs == job.spec.dataset_refs
    assert unknown.rc != 0
    assert "datasets[0]: no dataset 'nope' is registered" in unknown.err


async def test_http_roles_bad_input_and_restart(data_dir: Path, tmp_path: Path) -> None:
    async def post(session: HttpSession, user: str, body: Any) -> tuple[int, dict[str, Any]]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = await session.request("POST", "/api/v1/datasets", key=KEYS[user], body=raw)
        return answer.status, answer.error

    with trio.fail_after(90):
        async with running_server(data_dir) as url:
            async with connect(url, KEYS["admin"]) as client:
                await client.register_dataset("cifar.10", "/data/cifar")
            cases = {
                "bad uri": {"name": "x", "uri": "data/relative"},
                "control char": {"name": "x", "uri": "s3://a\u0007b"},
                "bad name": {"name": "-x", "uri": "/d"},
                "long name": {"name": "x" * 101, "uri": "/d"},
                "bad sha": {"name": "x", "uri": "/d", "sha256": "xyz"},
                "NUL description": {"name": "x", "uri": "/d", "description": "a\u0000b"},
                "unknown field": {"name": "x", "uri": "/d", "size": 3},
                "collides": {"name": "cifar_10", "uri": "/d"},
                "newline name": {"name": "x\n", "uri": "/d"},
                "newline sha": {"name": "x", "uri": "/d", "sha256": SHA + "\n"},
                "empty uri": {"name": "x", "uri": ""},
                "not JSON": b"{",
            }
            answers = {}
            async with HttpSession(url) as session:
                for label, body in cases.items():
                    answers[label] = await post(session, "bob", body)
                answers["analyst"] = await post(session, "carol", {"name": "x", "uri": "/d"})
                same = {"name": "cifar.10", "uri": "/data/cifar"}
                repeated = await session.request(
                    "POST", "/api/v1/datasets", key=KEYS["bob"], json_body=same
                )
                changed = await session.request(
                    "POST", "/api/v1/datasets", key=KEYS["bob"], json_body={**same, "uri": "/d2"}
                )
                shown = await session.request("GET", "/api/v1/datasets/cifar.10", key=KEYS["carol"])
                unknown = await session.request("GET", "/api/v1/datasets/nope", key=KEYS["carol"])
        async with running_server(data_dir) as url, connect(url, KEYS["carol"]) as client:
            kept = [d.name for d in await client.datasets()]
    fields = {label: (status, error.get("field")) for label, (status, error) in answers.items()}
    assert fields == {
        "bad uri": (400, "uri"),
        "control char": (400, "uri"),
        "bad name": (400, "name"),
        "long name": (400, "name"),
        "bad sha": (400, "sha256"),
        "NUL description": (400, "description"),
        "unknown field": (400, "size"),
        "collides": (409, None),
        "newline name": (400, "name"),
        "newline sha": (400, "sha256"),
        "empty uri": (400, "uri"),
        "not JSON": (400, "body"),
        "analyst": (403, None),
    }
    assert "FETCHML_DATASET_CIFAR_10" in answers["collides"][1]["message"]
    assert kept == ["cifar.10"]
    assert repeated.status == 200  # what the latest version already says: nothing added
    assert [v["version"] for v in repeated.json()["versions"]] == [1]
    assert changed.status == 201
    assert shown.status == 200
    assert [(v["version"], v["uri"]) for v in shown.json()["versions"]] == [
        (2, "/d2"),
        (1, "/data/cifar"),
    ]
    assert (unknown.status, unknown.error["code"]) == (404, "not_found")


def test_registry_versions_pins_and_collisions(tmp_path: Path) -> None:
    registry = DatasetRegistry(tmp_path)
    try:
        registry.register(RegisterDataset(name="mnist", uri="/data/m1", sha256=SHA.upper()), "bob")
        registry.register(RegisterDataset(name="mnist", uri="/data/m2"), "alice")
        latest, pinned = registry.resolve(["mnist", "mnist@1"])
        assert (latest.version, latest.uri, latest.sha256) == (2, "/data/m2", None)
        assert (pinned.version, pinned.uri, pinned.sha256) == (1, "/data/m1", SHA)
        assert latest.env_name == "FETCHML_DATASET_MNIST"
        with pytest.raises(InvalidSpecError, match=r"datasets\[1\]: no version 3 of"):
            registry.resolve(["mnist", "mnist@3"])
        with pytest.raises(ConflictError, match="FETCHML_DATASET_MNIST"):
            registry.register(RegisterDataset(name="MNIST", uri="/d"), "bob")
        with pytest.raises(InvalidRequestError, match="uri: is neither"):
            registry.register(RegisterDataset(name="other", uri="mnist.tar"), "bob")
    finally:
        registry.close()


@given(st.text(max_size=60))
def test_uri_problem_never_raises_and_refuses_control_characters(uri: str) -> None:
    problem = uri_problem(uri)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in uri):
        assert problem == "has a control character"
    if problem is None:
        assert uri.startswith("/") or "://" in uri


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True))
def test_dataset_env_names_are_valid_variables(name: str) -> None:
    env = dataset_env_name(name)
    assert env.startswith("FETCHML_DATASET_")
    assert env.replace("_", "").isalnum()
    assert env == env.upper()


async def test_every_front_end_resolves_at_submit(data_dir: Path, tmp_path: Path) -> None:
    """The embedding API resolves (latest now, env and manifest); the WebSocket names the
    field of an unknown dataset; ``queue --dry-run`` refuses one as the server would."""
    spec = {"command": [sys.executable, "-c", PRINT_ENV], "datasets": ["imagenet-1k"]}
    with trio.fail_after(60):
        async with open_sched(data_dir) as scheduler:
            with pytest.raises(InvalidSpecError) as unknown:
                await scheduler.submit(spec, user="bob")
            await scheduler.datasets.register(
                RegisterDataset(name="imagenet-1k", uri="gs://b/in1k", sha256=SHA), "bob"
            )
            job = await scheduler.wait((await scheduler.submit(spec, user="bob")).id)
            log = scheduler.log_path(job.id).read_bytes()
        async with running_server(tmp_path / "server") as url:
            async with connect(url, KEYS["bob"]) as client:
                with pytest.raises(InvalidSpecError) as over_ws:
                    await client.submit({"command": ["true"], "datasets": ["a", "b@2"]})
            dry = await Ml(url, tmp_path)(
                "bob", "queue", "--no-snapshot", "--dry-run", "--dataset", "a@1", "--", "true"
            )
    assert unknown.value.field == "datasets[0]"
    assert job.state == "succeeded", job
    assert log.strip() == b"gs://b/in1k"
    assert [(r.version, r.sha256) for r in job.spec.dataset_refs] == [(1, SHA)]
    manifest = read_run_manifest(data_dir / "jobs" / str(job.id) / "output")
    assert manifest is not None
    assert manifest.spec.dataset_refs == job.spec.dataset_refs
    assert over_ws.value.field == "datasets[0]"
    assert "no dataset 'a' is registered" in over_ws.value.message
    assert dry.rc == 2, (dry.out, dry.err)
    assert "datasets[0]: no version 1 of dataset 'a' is registered" in dry.err


def _refusal(asked: RegisterDataset) -> InvalidRequestError | None:
    try:
        check_registration(asked)
    except InvalidRequestError as exc:
        return exc
    return None


@given(st.text(max_size=110))
def test_a_name_is_taken_exactly_when_it_is_one(name: str) -> None:
    """``check_registration`` (what every front end's registration goes through) takes a name
    iff it is 1 to 100 of ``A-Z a-z 0-9 . _ -`` starting with a letter or digit; a refusal
    names the field."""
    fits = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name) is not None
    refused = _refusal(RegisterDataset(name=name, uri="/data"))
    assert (refused is None) == fits
    assert refused is None or refused.field == "name"


@given(uri=st.text(max_size=80), sha256=st.one_of(st.none(), st.text(max_size=70)))
def test_a_uri_and_hash_are_checked_with_the_field_named(uri: str, sha256: str | None) -> None:
    asked = RegisterDataset(name="d", uri=uri, sha256=sha256)
    refused = _refusal(asked)
    if refused is not None:
        assert refused.field in ("uri", "sha256")
        assert refused.message.startswith(f"{refused.field}: ")
        return
    assert uri_problem(uri) is None
    checked = check_registration(asked)
    assert checked.sha256 is None or re.fullmatch("[0-9a-f]{64}", checked.sha256)


def test_the_ray_backend_gives_the_job_its_datasets(tmp_path: Path) -> None:
    """A Ray job gets ``FETCHML_DATASET_<NAME>`` in its submission's environment (the Ray
    backend passes only the variable: Ray never copies data either)."""

    class _Client:
        tail = None

    backend = RayBackend(tmp_path, RaySettings(), cast(Any, _Client()), "instance")
    ref = DatasetRef(name="in1k.v2", version=2, uri="s3://b/in1k", sha256=SHA)
    spec = JobSpec(command=["true"], env={"A": "1"}, datasets=["in1k.v2"], dataset_refs=[ref])
    job = Job(id=3, user="bob", spec=spec, state=JobState.RUNNING, created_at=0.0, attempts=1)
    run = RayRun(job_id=3, attempt=1, submission_id="s-3-1", log=tmp_path / "log")
    env = backend._submission(job, run, None).env
    assert env["FETCHML_DATASET_IN1K_V2"] == "s3://b/in1k"
    assert env["A"] == "1"


def test_a_job_stored_before_datasets_still_loads() -> None:
    """A job record written before specs had datasets decodes (the store's codec) with none."""
    old = {
        "id": 1,
        "user": "bob",
        "spec": {"command": ["true"], "priority": 5},
        "state": "succeeded",
        "seq": 3,
        "created_at": 1.0,
    }
    job = msgspec.msgpack.Decoder(Job).decode(msgspec.msgpack.encode(old))
    assert (job.spec.datasets, job.spec.dataset_refs) == ([], [])
    assert check_spec(job.spec) == job.spec
