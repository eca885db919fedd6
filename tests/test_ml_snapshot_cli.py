"""``ml`` as a researcher on a laptop uses it: real ``ml`` processes, a real git project built
here, a real server on 127.0.0.1.  Code travels with the job (only what is not ignored, only
what the server lacks), runs where ``ml queue`` ran, and its outputs come back by hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from helpers.gateway import HIGH_LIMITS, HttpSession, Users, make_server_config, serve
from helpers.gateway import until_job as poll_job
from helpers.snapshots import (
    CAPS,
    GIT_ENV,
    MlResult,
    blob_files,
    commit_all,
    file_sha,
    git,
    init_repo,
    run_ml,
    same_place,
    sha,
    stray_files,
    write_tree,
)

import fetchml
from fetchml.client import connect

PYTHON = sys.executable
ENDED = ("succeeded", "failed", "cancelled", "timed_out")
BIG_IGNORED = os.urandom(3_000_000)

TRAIN = """\
import hashlib
import json
import os
from pathlib import Path

import mylib
from mylib import core

out = Path(os.environ["FETCHML_OUTPUT_DIR"])
(out / "results").mkdir(parents=True, exist_ok=True)
values = [mylib.scale(i) for i in range(1000)]
metrics = {"sum": sum(values), "factor": core.FACTOR}
(out / "results" / "metrics.json").write_text(json.dumps(metrics))
(out / "model.bin").write_bytes(hashlib.sha256(str(values).encode()).digest() * 4096)
print("cwd", os.getcwd())
print("factor", core.FACTOR)
print("config", Path("config.yaml").read_text().strip())
print("snapshot", os.environ.get("FETCHML_SNAPSHOT_ID", "none"))
"""

PROJECT = {
    ".gitignore": "data/\n*.ckpt\n",
    "README.md": "# a research project\n",
    "mylib/__init__.py": "from .core import scale\n",
    "mylib/core.py": "FACTOR = 2\n\n\ndef scale(x):\n    return x * FACTOR\n",
    "exp/train.py": TRAIN,
    "exp/config.yaml": "lr: 0.1\n",
}


def server_config(data_dir: Path, users: Users, **caps: int) -> fetchml.Config:
    return make_server_config(
        data_dir.parent, users, snapshots={**CAPS, **caps}, limits=HIGH_LIMITS
    )


def make_project(root: Path) -> str:
    """The git project of the scenario, committed; returns the commit."""
    init_repo(root)
    write_tree(root, PROJECT)
    write_tree(root, {"data/big.bin": BIG_IGNORED, "exp/old.ckpt": os.urandom(50_000)})
    head = commit_all(root, "first version")
    git(root, "remote", "add", "origin", "https://alice:tok3n@git.example.com/lab/proj.git")
    return head


class Laptop:
    """``ml`` as one user, run from folders of the laptop (a home of its own)."""

    def __init__(self, base: str, key: str, home: Path) -> None:
        self.base, self.key, self.home = base, key, home

    async def __call__(self, *args: str, cwd: Path) -> MlResult:
        return await run_ml(self.base, self.key, self.home, *args, cwd=cwd)


async def finished(base: str, key: str, job_id: int, within: float = 20) -> dict[str, Any]:
    async with HttpSession(base) as session:
        return await poll_job(session, key, job_id, ENDED, within)


async def log_of(base: str, key: str, job_id: int) -> str:
    async with HttpSession(base) as session:
        response = await session.request("GET", f"/api/v1/jobs/{job_id}/logs", key=key)
    return response.body.decode()


def run_locally(folder: Path, out: Path) -> Path:
    """Run train.py in ``folder`` here, as the job does, writing to ``out``."""
    subprocess.run(
        [PYTHON, "train.py"],
        cwd=folder,
        env={**os.environ, **GIT_ENV, "FETCHML_OUTPUT_DIR": str(out), "PYTHONPATH": ".."},
        check=True,
        capture_output=True,
        timeout=30,
    )
    return out


def tree_shas(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): file_sha(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


async def test_a_researchers_day(data_dir: Path, tmp_path: Path) -> None:
    users = Users()
    project = tmp_path / "laptop" / "proj"
    head = make_project(project)
    # Uncommitted work: an edit of a tracked file and a new file.
    core = project / "mylib" / "core.py"
    core.write_text(core.read_text().replace("FACTOR = 2", "FACTOR = 3"))
    (project / "exp" / "notes.txt").write_text("try factor 3\n")
    # What the job writes, made here the same way (the "local copies").
    local_out = run_locally(project / "exp", tmp_path / "local-out")
    sent_files = {
        ".gitignore",
        "README.md",
        "mylib/__init__.py",
        "mylib/core.py",
        "exp/train.py",
        "exp/config.yaml",
        "exp/notes.txt",
    }
    sent_bytes = sum((project / p).stat().st_size for p in sent_files)
    with trio.fail_after(80):
        async with serve(server_config(data_dir, users)) as base:
            alice = Laptop(base, users.alice, tmp_path / "alice-home")
            bob = Laptop(base, users.bob, tmp_path / "bob-home")
            exp = project / "exp"

            # 1. Queue from a subfolder: only what git does not ignore travels.
            queued = await alice(
                "queue", "--json", "--env", "PYTHONPATH=..", "--", PYTHON, "train.py", cwd=exp
            )
            assert queued.rc == 0, queued.err
            first = queued.json()
            snap = first["snapshot"]
            assert set(snap) == {"id", "files", "bytes", "uploaded_bytes"}
            assert (snap["files"], snap["bytes"]) == (len(sent_files), sent_bytes)
            assert sent_bytes < snap["uploaded_bytes"] < sent_bytes + 1000
            assert first["user"] == "alice"
            assert first["spec"]["snapshot"] == snap["id"]
            assert first["spec"]["cwd"] == "exp"
            async with HttpSession(base) as s:
                stored = await s.request("GET", f"/api/v1/snapshots/{snap['id']}", key=users.alice)
            assert {f["path"] for f in stored.json()["files"]} == sent_files
            assert sha(BIG_IGNORED) not in blob_files(data_dir)
            assert stray_files(data_dir) == []

            job = await finished(base, users.alice, first["id"])
            assert job["state"] == "succeeded", await log_of(base, users.alice, first["id"])
            printed = dict(
                line.split(" ", 1)
                for line in (await log_of(base, users.alice, first["id"])).splitlines()
            )
            work = data_dir / "jobs" / str(first["id"]) / "work"
            assert same_place(printed["cwd"], work / "exp")
            assert printed["factor"] == "3"  # the uncommitted edit ran
            assert printed["config"] == "lr: 0.1"
            assert printed["snapshot"] == snap["id"]

            # 2. Provenance: the commit, the branch, the dirty tree and its diff, no token.
            status = await alice("status", str(first["id"]), "--json", cwd=exp)
            provenance = status.json()["spec"]["provenance"]
            async with connect(base, users.alice) as client:
                run = await client.manifest(first["id"])
            assert run.spec.provenance is not None
            git_info = run.spec.provenance.git
            assert git_info is not None
            assert provenance["git"]["commit"] == git_info.commit == head
            assert git_info.branch == "trunk"
            assert git_info.dirty is True
            assert git_info.diff is not None
            assert "-FACTOR = 2" in git_info.diff
            assert "+FACTOR = 3" in git_info.diff
            assert git_info.remote == "https://git.example.com/lab/proj.git"
            assert "tok3n" not in json.dumps(provenance)
            assert provenance["root"] == str(project)
            assert provenance["command_line"][1:] == [
                "queue",
                "--json",
                "--env",
                "PYTHONPATH=..",
                "--",
                PYTHON,
                "train.py",
            ]
            assert run.snapshot is not None
            assert (run.snapshot.id, run.snapshot.files) == (snap["id"], len(sent_files))

            # 3. Pull the outputs back: the same bytes the job writes here.
            pulled = tmp_path / "pulled"
            pull = await alice("pull", str(first["id"]), "-o", str(pulled), cwd=tmp_path)
            assert pull.rc == 0, pull.err
            assert "2 file(s)" in pull.err
            assert "checked against the manifest" in pull.err
            assert tree_shas(pulled) == tree_shas(local_out)
            recorded = {f.path: f.sha256 for f in run.outputs or []}
            assert recorded == tree_shas(local_out)
            only = tmp_path / "only"
            part = await alice(
                "--json", "pull", str(first["id"]), "results", "-o", str(only), cwd=tmp_path
            )
            assert part.rc == 0, part.err
            assert [f["path"] for f in part.json()] == ["results/metrics.json"]
            assert tree_shas(only) == {"results/metrics.json": recorded["results/metrics.json"]}

            # 4. A small edit, queued again: little is sent.
            (exp / "config.yaml").write_text("lr: 0.2\n")
            second = await alice(
                "queue", "--json", "--env", "PYTHONPATH=..", "--", PYTHON, "train.py", cwd=exp
            )
            assert second.rc == 0, second.err
            snap2 = second.json()["snapshot"]
            assert snap2["id"] != snap["id"]
            assert snap2["files"] == snap["files"]
            assert snap2["uploaded_bytes"] == 64 + len(" 8\n") + len("lr: 0.2\n")
            assert (await finished(base, users.alice, second.json()["id"]))["state"] == "succeeded"
            assert "config lr: 0.2" in await log_of(base, users.alice, second.json()["id"])

            # 5. Requeue the first job after the tree changed again: its snapshot runs.
            core.write_text(core.read_text().replace("FACTOR = 3", "FACTOR = 5"))
            again = await alice("requeue", str(first["id"]), "--json", cwd=exp)
            assert again.rc == 0, again.err
            third = await finished(base, users.alice, again.json()["id"])
            assert third["state"] == "succeeded"
            assert third["spec"]["requeued_from"] == first["id"]
            assert third["spec"]["snapshot"] == snap["id"]
            third_log = await log_of(base, users.alice, third["id"])
            assert "factor 3" in third_log
            assert "config lr: 0.1" in third_log

            # 6. Validate: the snapshot and the outputs are as recorded.
            valid = await alice("validate", str(first["id"]), cwd=exp)
            assert valid.rc == 0, valid.err
            assert valid.out.strip() == f"job {first['id']}: ok ({len(sent_files) + 2} checks)"

            # 7. Another researcher sees nothing of it.
            for args in (
                ("status", str(first["id"])),
                ("pull", str(first["id"]), "-o", str(tmp_path / "bob-pulled")),
                ("validate", str(first["id"])),
                ("requeue", str(first["id"])),
            ):
                refused = await bob(*args, cwd=tmp_path)
                assert refused.rc == 6, (args, refused.err)
                assert f"no job with id {first['id']}" in refused.err
            assert not (tmp_path / "bob-pulled").exists()
            listed = await bob("status", "--json", cwd=tmp_path)
            assert listed.json() == []

            # 8. Paths that leave the output folder are refused.
            target = tmp_path / "escape"
            for wanted in ("../../etc/passwd", "../log", "/etc/passwd"):
                escape = await alice(
                    "pull", str(first["id"]), wanted, "-o", str(target), cwd=tmp_path
                )
                assert escape.rc != 0, wanted
                assert "Traceback" not in escape.err
            assert not target.exists() or list(target.rglob("*")) == []
            async with HttpSession(base) as s:
                for attempt in ("..%2Flog", "%2e%2e/log", "results/..%2F..%2Flog"):
                    response = await s.request(
                        "GET", f"/api/v1/jobs/{first['id']}/files/{attempt}", key=users.alice
                    )
                    assert response.status == 404, attempt


async def test_imports_from_the_project_root_work_from_a_subfolder(
    data_dir: Path, tmp_path: Path
) -> None:
    users = Users()
    project = tmp_path / "proj"
    make_project(project)
    with trio.fail_after(40):
        async with serve(server_config(data_dir, users)) as base:
            alice = Laptop(base, users.alice, tmp_path / "home")
            queued = await alice("queue", "--wait", "--", PYTHON, "train.py", cwd=project / "exp")
    assert queued.rc == 0, queued.out + queued.err


async def test_queue_options_and_refusals(data_dir: Path, tmp_path: Path) -> None:
    users = Users()
    plain = tmp_path / "plain"  # not a git repository: the folder itself is the project
    write_tree(plain, {"sub/job.sh": "echo from $(basename $(pwd))\n", "top.txt": "t"})
    with trio.fail_after(60):
        async with serve(server_config(data_dir, users, max_bytes=40_000)) as base:
            alice = Laptop(base, users.alice, tmp_path / "home")
            # Outside a repository the project is where ml queue runs.
            here = await alice("queue", "--json", "--", "sh", "job.sh", cwd=plain / "sub")
            assert here.rc == 0, here.err
            assert here.json()["snapshot"]["files"] == 1
            assert here.json()["spec"]["cwd"] is None
            assert (await finished(base, users.alice, here.json()["id"]))["state"] == "succeeded"
            assert await log_of(base, users.alice, here.json()["id"]) == "from work\n"
            rooted = await alice(
                "queue", "--json", "--root", str(plain), "--", "sh", "job.sh", cwd=plain / "sub"
            )
            assert rooted.rc == 0, rooted.err
            job = rooted.json()
            assert job["spec"]["cwd"] == "sub"
            assert job["snapshot"]["files"] == 2
            assert (await finished(base, users.alice, job["id"]))["state"] == "succeeded"
            assert await log_of(base, users.alice, job["id"]) == "from sub\n"
            outside = await alice("queue", "--root", str(plain / "sub"), "--", "true", cwd=plain)
            assert outside.rc != 0
            assert "not inside the snapshot root" in outside.err
            bare = await alice("queue", "--json", "--no-snapshot", "--", "true", cwd=plain)
            assert bare.rc == 0, bare.err
            assert bare.json()["snapshot"] is None
            assert bare.json()["spec"]["snapshot"] is None
            blobs_before = set(blob_files(data_dir))

            os.symlink("/etc/hostname", plain / "sub" / "host")
            link = await alice("queue", "--", "true", cwd=plain)
            assert link.rc != 0
            assert "sub/host" in link.err
            assert "absolute" in link.err
            (plain / "sub" / "host").unlink()

            write_tree(plain, {"data/a.bin": b"a" * 30_000, "weights.pt": b"w" * 20_000})
            over = await alice("queue", "--", "true", cwd=plain)
            assert over.rc == 2, over.err
            assert "snapshots.max_bytes (40000)" in over.err
            assert "data/a.bin" in over.err
            assert "weights.pt" in over.err
            assert "Traceback" not in over.err
            assert set(blob_files(data_dir)) == blobs_before
            assert stray_files(data_dir) == []
            status = await alice("status", "--json", cwd=plain)
            assert len(status.json()) == 3  # the refused ones queued nothing


async def test_queue_a_job_named_requeue(data_dir: Path, tmp_path: Path) -> None:
    users = Users()
    write_tree(tmp_path / "proj", {"a.txt": "a"})
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base:
            alice = Laptop(base, users.alice, tmp_path / "home")
            queued = await alice("queue", "--name", "requeue", "--", "true", cwd=tmp_path / "proj")
    assert queued.rc == 0, queued.err
