"""What a job leaves, against real servers: ``run_manifest.json`` (with a fake ``nvidia-smi``),
the files listing, one file with ``Range``, a folder as tar, paths that try to leave the output
folder, who may see them, ``ml validate``, ``ml prune`` and ``ml requeue``."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.gateway import HIGH_LIMITS, HttpSession, Response, Users, make_server_config, serve
from helpers.gateway import until_job as poll_job
from helpers.snapshots import (
    CAPS,
    blob_files,
    fake_nvidia_smi,
    run_ml,
    sha,
    upload,
    write_tree,
)

import fetchml

ENDED = ("succeeded", "failed", "cancelled", "timed_out")
NUMBERS = "".join(f"{i}\n" for i in range(1, 20001)).encode()
CODE = {"train.py": b"print('train')\n", "lib/util.py": b"X = 1\n"}


@pytest.fixture
def users() -> Users:
    return Users()


def server_config(data_dir: Path, users: Users, **settings: Any) -> fetchml.Config:
    return make_server_config(
        data_dir.parent, users, snapshots=CAPS, limits=HIGH_LIMITS, **settings
    )


async def submit(session: HttpSession, key: str, spec: dict[str, Any]) -> int:
    response = await session.request("POST", "/api/v1/jobs", key=key, json_body=spec)
    assert response.status == 201, response.body
    job_id: int = response.json()["job"]["id"]
    return job_id


async def ended(session: HttpSession, key: str, job_id: int, within: float = 15) -> dict[str, Any]:
    return await poll_job(session, key, job_id, ENDED, within)


async def get(session: HttpSession, key: str, path: str, **kwargs: Any) -> Response:
    return await session.request("GET", path, key=key, **kwargs)


# ---- run manifest and listing ---------------------------------------------------------------

OUTPUTS = r"""
out=$FETCHML_OUTPUT_DIR
mkdir -p $out/sub/deeper
printf alpha > $out/a.txt
seq 1 20000 > $out/sub/numbers.txt
printf beta > $out/sub/deeper/b.txt
echo "$CUDA_VISIBLE_DEVICES" > $out/cuda
while [ ! -e "$GO" ]; do sleep 0.02; done
printf late > $out/late.txt
"""


async def test_run_manifest_and_files_listing(
    data_dir: Path, users: Users, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    go = tmp_path / "go"
    config = server_config(data_dir, users, gpus=[0])
    with trio.fail_after(40):
        async with serve(config) as base, HttpSession(base) as s:
            sid = await upload(s, users.alice, CODE)
            spec = {
                "command": OUTPUTS,
                "shell": True,
                "snapshot": sid,
                "resources": {"gpus": 1},
                "env": {"GO": str(go)},
                "name": "manifest-test",
            }
            job_id = await submit(s, users.alice, spec)
            # While it runs: the manifest of its start, and files without hashes.
            while True:
                early = await get(s, users.alice, f"/api/v1/jobs/{job_id}/manifest")
                listing = await get(s, users.alice, f"/api/v1/jobs/{job_id}/files")
                paths = [f["path"] for f in listing.json().get("files", [])]
                if early.status == 200 and "cuda" in paths:
                    break
                await trio.sleep(0.05)
            started = early.json()
            assert started["job_id"] == job_id
            assert started["attempt"] == 1
            assert started["user"] == "alice"
            assert started["spec"]["snapshot"] == sid
            assert started["spec"]["name"] == "manifest-test"
            assert started["snapshot"] == {
                "id": sid,
                "files": 2,
                "bytes": sum(len(d) for d in CODE.values()),
            }
            assert started["host"] == socket.gethostname()
            assert started["gpus"] == [{"index": 0, "name": "Fake GPU", "uuid": "GPU-1234"}]
            assert isinstance(started["started_at"], float)
            for key in ("finished_at", "exit_code", "end", "outputs"):
                assert started[key] is None, key
            running = listing.json()
            assert running["final"] is False
            assert all("sha256" not in f for f in running["files"])
            assert "late.txt" not in paths
            assert "run_manifest.json" not in paths
            go.touch()
            job = await ended(s, users.alice, job_id)
            assert job["state"] == "succeeded", job
            assert job["gpus"] == [0]
            final = await get(s, users.alice, f"/api/v1/jobs/{job_id}/manifest")
            done = final.json()
            files = await get(s, users.alice, f"/api/v1/jobs/{job_id}/files")
    assert done["end"] == "exit"
    assert done["exit_code"] == 0
    assert done["finished_at"] >= done["started_at"] == started["started_at"]
    expected = {
        "a.txt": b"alpha",
        "cuda": b"0\n",
        "late.txt": b"late",
        "sub/deeper/b.txt": b"beta",
        "sub/numbers.txt": NUMBERS,
    }
    outputs = done["outputs"]
    assert [f["path"] for f in outputs] == sorted(expected)
    for item in outputs:
        assert (item["size"], item["sha256"]) == (
            len(expected[item["path"]]),
            sha(expected[item["path"]]),
        )
        assert isinstance(item["mtime"], float)
    assert files.json() == {"files": outputs, "final": True}
    on_disk = json.loads(
        (data_dir / "jobs" / str(job_id) / "output" / "run_manifest.json").read_text()
    )
    assert on_disk == done


async def test_a_file_with_range_and_a_folder_as_tar(data_dir: Path, users: Users) -> None:
    script = (
        "out=$FETCHML_OUTPUT_DIR; mkdir -p $out/sub/deeper; seq 1 20000 > $out/sub/numbers.txt;"
        " printf beta > $out/sub/deeper/b.txt; chmod 755 $out/sub/deeper/b.txt;"
        " ln -s ../a.txt $out/sub/up; printf alpha > $out/a.txt"
    )
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            job_id = await submit(s, users.alice, {"command": script, "shell": True})
            assert (await ended(s, users.alice, job_id))["state"] == "succeeded"
            path = f"/api/v1/jobs/{job_id}/files/sub/numbers.txt"
            whole = await get(s, users.alice, path)
            assert whole.status == 200
            assert whole.body == NUMBERS
            assert whole.headers["accept-ranges"] == "bytes"
            assert whole.headers["content-length"] == str(len(NUMBERS))
            size = len(NUMBERS)
            for header, start, end in [
                ("bytes=0-9", 0, 10),
                ("bytes=100-", 100, size),
                ("bytes=-5", size - 5, size),
                (f"bytes={size - 1}-{size + 100}", size - 1, size),
            ]:
                part = await get(s, users.alice, path, headers=[("Range", header)])
                assert part.status == 206, (header, part.status)
                assert part.body == NUMBERS[start:end], header
                assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
                assert part.headers["content-length"] == str(end - start)
            beyond = await get(s, users.alice, path, headers=[("Range", f"bytes={size}-")])
            assert beyond.status == 416
            assert beyond.headers["content-range"] == f"bytes */{size}"
            tar = await get(s, users.alice, f"/api/v1/jobs/{job_id}/files/sub")
            assert tar.status == 200
            assert tar.headers["content-type"].startswith("application/x-tar")
            assert 'filename="sub.tar"' in tar.headers["content-disposition"]
            deeper = await get(s, users.alice, f"/api/v1/jobs/{job_id}/files/sub/deeper/")
    with tarfile.open(fileobj=io.BytesIO(tar.body)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert set(members) == {"sub/deeper/b.txt", "sub/numbers.txt"}  # no symlink
        assert all(m.isfile() for m in members.values())
        contents = {name: archive.extractfile(m).read() for name, m in members.items()}  # type: ignore[union-attr]
        assert members["sub/deeper/b.txt"].mode == 0o755
    assert contents == {"sub/deeper/b.txt": b"beta", "sub/numbers.txt": NUMBERS}
    with tarfile.open(fileobj=io.BytesIO(deeper.body)) as archive:
        assert archive.getnames() == ["sub/deeper/b.txt"]


# ---- paths that try to leave the output folder -----------------------------------------------

LINKS = r"""
out=$FETCHML_OUTPUT_DIR
printf alpha > $out/a.txt
mkdir -p $out/sub
printf inside > $out/sub/in.txt
ln -s /etc/passwd $out/link_out
ln -s a.txt $out/link_in
ln -s /etc $out/dir_out
ln -s sub $out/dir_in
ln -s ../log $out/up_log
mkfifo $out/fifo
"""

TRAVERSALS = [
    "../log",
    "..%2Flog",
    "%2e%2e/log",
    "%2E%2E%2Flog",
    "sub/../../log",
    "sub/..%2F..%2Flog",
    "sub%2F..%2F..%2Flog",
    "..%252Flog",
    "a.txt%00",
    "link_out",
    "link_in",
    "dir_out/passwd",
    "dir_out",
    "dir_in/in.txt",
    "dir_in",
    "up_log",
    "fifo",
    "missing.txt",
]


async def test_paths_that_leave_the_output_folder_are_404(data_dir: Path, users: Users) -> None:
    with trio.fail_after(40):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            job_id = await submit(s, users.alice, {"command": LINKS, "shell": True})
            assert (await ended(s, users.alice, job_id))["state"] == "succeeded"
            for attempt in TRAVERSALS:
                response = await get(s, users.admin, f"/api/v1/jobs/{job_id}/files/{attempt}")
                assert response.status == 404, (attempt, response.status, response.body[:200])
                assert response.error["code"] == "not_found", attempt
            ok = await get(s, users.admin, f"/api/v1/jobs/{job_id}/files/sub/in.txt")
            assert (ok.status, ok.body) == (200, b"inside")
            listing = await get(s, users.admin, f"/api/v1/jobs/{job_id}/files")
            manifest = await get(s, users.admin, f"/api/v1/jobs/{job_id}/manifest")
    assert [f["path"] for f in listing.json()["files"]] == ["a.txt", "sub/in.txt"]
    assert [f["path"] for f in manifest.json()["outputs"]] == ["a.txt", "sub/in.txt"]


async def test_an_absolute_path_with_a_double_slash_is_404(data_dir: Path, users: Users) -> None:
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            job_id = await submit(s, users.alice, {"command": ["true"]})
            await ended(s, users.alice, job_id)
            answers = {}
            for attempt in ("/etc/passwd", "%2Fetc%2Fpasswd", "%2F%2Fetc%2Fpasswd"):
                response = await get(s, users.admin, f"/api/v1/jobs/{job_id}/files/{attempt}")
                answers[attempt] = (response.status, response.headers.get("location"))
    assert {status for status, _ in answers.values()} == {404}, answers


REPLACE_OUTPUT = 'rm -rf "$FETCHML_OUTPUT_DIR" && ln -s "$VICTIM" "$FETCHML_OUTPUT_DIR"'


async def test_an_output_folder_replaced_by_a_symlink_serves_nothing(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    write_tree(victim, {"secret.txt": "not the job's", "sub/x.txt": "x"})
    spec = {"command": REPLACE_OUTPUT, "shell": True, "env": {"VICTIM": str(victim)}}
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            job_id = await submit(s, users.alice, spec)
            assert (await ended(s, users.alice, job_id))["state"] == "succeeded"
            root = f"/api/v1/jobs/{job_id}"
            listing = await get(s, users.alice, f"{root}/files")
            assert listing.status in (200, 404)
            if listing.status == 200:
                assert listing.json()["files"] == []
            for path in ("secret.txt", "sub", "sub/x.txt"):
                response = await get(s, users.alice, f"{root}/files/{path}")
                assert response.status == 404, path
            manifest = await get(s, users.alice, f"{root}/manifest")
            assert b"secret" not in manifest.body


async def test_an_output_folder_replaced_by_a_symlink_is_never_written_or_pruned_through(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    write_tree(victim, {"secret.txt": "not the job's"})
    spec = {"command": REPLACE_OUTPUT, "shell": True, "env": {"VICTIM": str(victim)}}
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            job_id = await submit(s, users.alice, spec)
            await ended(s, users.alice, job_id)
            pruned = await s.request(
                "POST", "/api/v1/prune", key=users.admin, json_body={"older_than_s": 0}
            )
            assert pruned.status == 200
    assert sorted(p.name for p in victim.iterdir()) == ["secret.txt"]


# ---- visibility -----------------------------------------------------------------------------


async def test_files_have_the_jobs_visibility(data_dir: Path, users: Users) -> None:
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            job_id = await submit(
                s, users.alice, {"command": "printf x > $FETCHML_OUTPUT_DIR/a.txt", "shell": True}
            )
            await ended(s, users.alice, job_id)
            routes = [
                ("GET", "/files"),
                ("GET", "/files/a.txt"),
                ("GET", "/manifest"),
                ("POST", "/validate"),
            ]
            for method, route in routes:
                for user in ("alice", "carol", "admin"):
                    response = await s.request(
                        method, f"/api/v1/jobs/{job_id}{route}", key=users.keys[user]
                    )
                    assert response.status == 200, (user, route, response.body)
                hidden = await s.request(method, f"/api/v1/jobs/{job_id}{route}", key=users.bob)
                missing = await s.request(method, f"/api/v1/jobs/99999{route}", key=users.bob)
                assert hidden.status == missing.status == 404, route
                assert hidden.error == {"code": "not_found", "message": f"no job with id {job_id}"}
                assert missing.error == {"code": "not_found", "message": "no job with id 99999"}
                nobody = await s.request(method, f"/api/v1/jobs/{job_id}{route}")
                assert nobody.status == 401


# ---- validate -------------------------------------------------------------------------------


async def test_validate_then_tamper(data_dir: Path, users: Users, tmp_path: Path) -> None:
    script = "printf alpha > $FETCHML_OUTPUT_DIR/a.txt; printf beta > $FETCHML_OUTPUT_DIR/b.txt"
    with trio.fail_after(40):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            sid = await upload(s, users.alice, CODE)
            job_id = await submit(
                s, users.alice, {"command": script, "shell": True, "snapshot": sid}
            )
            await ended(s, users.alice, job_id)

            async def ml(user: str, *args: str) -> Any:
                return await run_ml(base, users.keys[user], tmp_path, *args, cwd=tmp_path)

            good = await ml("alice", "validate", str(job_id))
            assert (good.rc, good.out) == (0, f"job {job_id}: ok (4 checks)\n"), good.err
            as_json = await ml("alice", "--json", "validate", str(job_id))
            assert as_json.json() == {"ok": True, "checks": 4, "errors": []}
            assert (await ml("carol", "validate", str(job_id))).rc == 0
            assert (await ml("bob", "validate", str(job_id))).rc == 6

            output = data_dir / "jobs" / str(job_id) / "output"
            (output / "a.txt").write_bytes(b"ALPHA")
            (output / "b.txt").unlink()
            (output / "c.txt").write_bytes(b"added")
            damaged = blob_files(data_dir)[sha(CODE["lib/util.py"])]
            damaged.chmod(0o644)
            damaged.write_bytes(b"X = 2\n")
            bad = await ml("alice", "validate", str(job_id))
            assert bad.rc == 1, bad.err
            assert bad.out.splitlines() == [
                "error: snapshot file lib/util.py: its blob does not match its hash (damaged)",
                "error: output a.txt: changed since the run ended",
                "error: output b.txt: missing",
                "error: output c.txt: not in the manifest (added later)",
                f"job {job_id}: 4 problem(s) (4 checks)",
            ]
            report = await ml("alice", "--json", "validate", str(job_id))
            assert report.rc == 1
            assert report.json()["ok"] is False
            assert len(report.json()["errors"]) == 4


# ---- prune ----------------------------------------------------------------------------------


def job_folder(data_dir: Path, job_id: int) -> Path:
    return data_dir / "jobs" / str(job_id)


async def test_prune(data_dir: Path, users: Users, tmp_path: Path) -> None:
    shared, old_only, old2_only = b"shared blob\n", b"only old job 1\n", b"only old job 2\n"
    queued_only, running_only = b"only the queued job\n", b"only the running job\n"
    write = "seq 1 5000 > $FETCHML_OUTPUT_DIR/out.txt; mkdir $FETCHML_OUTPUT_DIR/d;"
    write += " printf x > $FETCHML_OUTPUT_DIR/d/x; echo logged"
    with trio.fail_after(60):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            s_old = await upload(s, users.alice, {"shared.txt": shared, "old.txt": old_only})
            s_old2 = await upload(s, users.alice, {"old2.txt": old2_only})
            s_queued = await upload(s, users.alice, {"shared.txt": shared, "q.txt": queued_only})
            s_running = await upload(s, users.alice, {"r.txt": running_only})
            old = await submit(s, users.alice, {"command": write, "shell": True, "snapshot": s_old})
            await ended(s, users.alice, old)
            old2 = await submit(
                s, users.alice, {"command": write, "shell": True, "snapshot": s_old2}
            )
            await ended(s, users.alice, old2)
            plain = await submit(s, users.alice, {"command": write, "shell": True})
            await ended(s, users.alice, plain)
            # A running job that takes every CPU, and a queued one behind it.
            running = await submit(
                s,
                users.alice,
                {"command": ["sleep", "60"], "snapshot": s_running, "resources": {"cpus": 8}},
            )
            await poll_job(s, users.alice, running, ("running",))
            queued = await submit(
                s,
                users.alice,
                {"command": "cat q.txt shared.txt", "shell": True, "snapshot": s_queued},
            )
            assert (await get(s, users.alice, f"/api/v1/jobs/{queued}")).json()["job"][
                "state"
            ] == "queued"

            async def ml(user: str, *args: str) -> Any:
                return await run_ml(base, users.keys[user], tmp_path, *args, cwd=tmp_path)

            # Only who may update every job prunes.
            refused = await s.request(
                "POST", "/api/v1/prune", key=users.alice, json_body={"older_than_s": 0}
            )
            assert refused.status == 403
            assert refused.error["permission"] == "jobs:update:all"
            assert (await ml("alice", "prune", "--older-than", "1s")).rc == 5
            assert (await ml("carol", "prune", "--older-than", "1s")).rc == 5
            # Nothing is old enough yet.
            none = await ml("admin", "--json", "prune", "--older-than", "30d", "--dry-run")
            assert none.json()["jobs"] == []

            dry_keep = await ml(
                "admin", "--json", "prune", "--older-than", "0.01s", "--keep-last", "1", "--dry-run"
            )
            assert dry_keep.rc == 0, dry_keep.err
            assert dry_keep.json()["jobs"] == [old, old2]
            dry = await ml("admin", "--json", "prune", "--older-than", "0.01s", "--dry-run")
            report = dry.json()
            assert report["dry_run"] is True
            assert report["jobs"] == [old, old2, plain]
            assert report["snapshots"] == 2
            outputs_size = len("".join(f"{i}\n" for i in range(1, 5001))) + 1  # out.txt, d/x
            assert report["bytes_freed"] >= 3 * outputs_size + 2 * len(old_only)
            text = await ml("admin", "prune", "--older-than", "0.01s", "--dry-run")
            assert text.out.startswith("would free ")
            assert "3 job(s), 2 snapshot(s)" in text.out
            for job_id in (old, old2, plain):
                assert (job_folder(data_dir, job_id) / "output" / "out.txt").exists()
            assert (job_folder(data_dir, old) / "work" / "old.txt").exists()
            assert sha(old_only) in blob_files(data_dir)
            assert (await get(s, users.admin, f"/api/v1/snapshots/{s_old}")).status == 200

            kept_last = await ml(
                "admin", "--json", "prune", "--older-than", "0.01s", "--keep-last", "1"
            )
            assert kept_last.json()["jobs"] == [old, old2]
            assert kept_last.json()["dry_run"] is False
            assert kept_last.json()["snapshots"] == 2
            assert kept_last.json()["blobs"] == 2
            assert (job_folder(data_dir, plain) / "output" / "out.txt").exists()
            rest = await ml("admin", "prune", "--older-than", "0.01s")
            assert rest.rc == 0, rest.err
            assert rest.out.startswith("freed ")
            assert "1 job(s), 0 snapshot(s), 0 blob(s)" in rest.out
            again = await ml("admin", "--json", "prune", "--older-than", "0.01s")
            assert (again.json()["jobs"], again.json()["blobs"]) == ([], 0)

            for job_id in (old, old2, plain):
                folder = job_folder(data_dir, job_id)
                assert not (folder / "work").exists()
                assert sorted(p.name for p in (folder / "output").iterdir()) == [
                    "run_manifest.json"
                ]
                assert (folder / "log").read_text() == "logged\n"
                recorded = await get(s, users.alice, f"/api/v1/jobs/{job_id}/manifest")
                assert recorded.status == 200
                assert [f["path"] for f in recorded.json()["outputs"]] == ["d/x", "out.txt"]
            for sid, status in ((s_old, 404), (s_old2, 404), (s_queued, 200), (s_running, 200)):
                shown = await get(s, users.admin, f"/api/v1/snapshots/{sid}")
                assert shown.status == status, sid
            assert set(blob_files(data_dir)) == {sha(shared), sha(queued_only), sha(running_only)}
            assert (job_folder(data_dir, running) / "work" / "r.txt").exists()
            # The queued job still runs from its snapshot once the CPUs are free.
            cancel = await s.request("POST", f"/api/v1/jobs/{running}/cancel", key=users.alice)
            assert cancel.status == 200, cancel.body
            done = await ended(s, users.alice, queued)
            assert done["state"] == "succeeded", done
            log = await get(s, users.alice, f"/api/v1/jobs/{queued}/logs")
            assert log.body == queued_only + shared


async def test_prune_dry_run_reports_what_the_prune_frees(data_dir: Path, users: Users) -> None:
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            sid = await upload(s, users.alice, {"a.bin": b"a" * 50_000})
            job_id = await submit(s, users.alice, {"command": ["true"], "snapshot": sid})
            await ended(s, users.alice, job_id)
            await trio.sleep(0.05)
            dry = await s.request(
                "POST",
                "/api/v1/prune",
                key=users.admin,
                json_body={"older_than_s": 0.01, "dry_run": True},
            )
            real = await s.request(
                "POST", "/api/v1/prune", key=users.admin, json_body={"older_than_s": 0.01}
            )
    assert {**dry.json(), "dry_run": False} == real.json()


async def test_prune_takes_jobs_that_never_ran(data_dir: Path, users: Users) -> None:
    # A job cancelled while it waited has no folder: pruning it marks it, and fails nothing.
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            blocker = await submit(s, users.alice, {"command": ["sleep", "30"]})
            waiting = await submit(s, users.alice, {"command": ["true"], "depends_on": [blocker]})
            for job_id in (waiting, blocker):
                cancel = await s.request("POST", f"/api/v1/jobs/{job_id}/cancel", key=users.alice)
                assert cancel.status == 200, cancel.body
                await ended(s, users.alice, job_id)
            await trio.sleep(0.05)
            body = {"older_than_s": 0.01}
            pruned = await s.request("POST", "/api/v1/prune", key=users.admin, json_body=body)
            assert pruned.status == 200, pruned.body
            assert waiting in pruned.json()["jobs"]
            again = await s.request("POST", "/api/v1/prune", key=users.admin, json_body=body)
            assert again.json()["jobs"] == []


# ---- requeue --------------------------------------------------------------------------------


async def test_requeue_runs_the_old_snapshot_after_the_tree_changed(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    write_tree(project, {"version.txt": "v1\n", "run.sh": "cat version.txt\n"})
    with trio.fail_after(60):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:

            async def ml(user: str, *args: str) -> Any:
                return await run_ml(base, users.keys[user], tmp_path, *args, cwd=project)

            queued = await ml("alice", "queue", "--json", "--name", "first", "--", "sh", "run.sh")
            assert queued.rc == 0, queued.err
            first = queued.json()
            sid = first["snapshot"]["id"]
            assert (await ended(s, users.alice, first["id"]))["state"] == "succeeded"
            (project / "version.txt").write_text("v2 (never snapshotted)\n")
            again = await ml("alice", "requeue", str(first["id"]), "--json")
            assert again.rc == 0, again.err
            second = await ended(s, users.alice, again.json()["id"])
            assert second["state"] == "succeeded"
            assert second["spec"]["requeued_from"] == first["id"]
            assert second["spec"]["snapshot"] == sid
            assert second["spec"]["name"] == "first"
            log = await get(s, users.alice, f"/api/v1/jobs/{second['id']}/logs")
            assert log.body == b"v1\n"
            changed = await ml(
                "alice",
                "requeue",
                str(first["id"]),
                "--name",
                "changed",
                "--env",
                "WHO=you",
                "--",
                "sh",
                "-c",
                'cat version.txt; echo "hi $WHO"',
            )
            assert changed.rc == 0, changed.err
            third = await ended(s, users.alice, int(changed.out.strip()))
            assert "queued again as job" in changed.err
            assert (third["spec"]["name"], third["spec"]["requeued_from"]) == (
                "changed",
                first["id"],
            )
            assert third["spec"]["snapshot"] == sid
            log = await get(s, users.alice, f"/api/v1/jobs/{third['id']}/logs")
            assert log.body == b"v1\nhi you\n"
            assert (await ml("bob", "requeue", str(first["id"]))).rc == 6
