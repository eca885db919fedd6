"""Helpers of the snapshot and job-file tests: manifests and packs built by hand, raw uploads,
git repositories, ``ml`` run from a folder, a fake ``nvidia-smi`` and a tiny tmpfs.

Manifests and packs are written here from the issue's description (JSON objects, and for a pack
``<sha256> <size>\\n`` then the bytes), not with the project's encoders, so the tests check the
wire format as well as the behaviour.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .gateway import HttpSession, Response

# Small caps for test servers: a "large" blob is anything over a quarter of a part.
PART_BYTES = 1 << 16
CAPS: dict[str, int] = {
    "max_bytes": 4_000_000,
    "max_files": 200,
    "max_user_bytes": 8_000_000,
    "part_bytes": PART_BYTES,
}

_BIN = Path(sys.executable).parent / "ml"
ML_ARGV = (
    [str(_BIN)]
    if _BIN.exists()
    else [sys.executable, "-c", "import sys; from fetchml.cli import ml_main; sys.exit(ml_main())"]
)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Tester",
    "GIT_AUTHOR_EMAIL": "tester@example.com",
    "GIT_COMMITTER_NAME": "Tester",
    "GIT_COMMITTER_EMAIL": "tester@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    return sha(path.read_bytes())


def same_place(a: str | Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same folder (symlinks resolved)."""
    return Path(a).resolve() == b.resolve()


def entry(path: str, data: bytes, mode: int = 0o644) -> dict[str, Any]:
    """A manifest file entry for ``data`` at ``path``."""
    return {"path": path, "mode": mode, "size": len(data), "sha256": sha(data)}


def manifest(
    files: Mapping[str, bytes],
    links: Mapping[str, str] | None = None,
    modes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A manifest (as JSON) of ``files`` (path -> content, ``modes`` where not 0o644) and
    ``links`` (path -> target)."""
    modes = modes or {}
    return {
        "files": [entry(path, data, modes.get(path, 0o644)) for path, data in files.items()],
        "links": [{"path": path, "target": target} for path, target in (links or {}).items()],
    }


def pack(*blobs: bytes) -> bytes:
    """A pack body: for each blob, ``<sha256> <size>\\n`` then its bytes."""
    return b"".join(f"{sha(blob)} {len(blob)}\n".encode() + blob for blob in blobs)


async def plan(session: HttpSession, key: str | None, body: Any) -> Response:
    return await session.request("POST", "/api/v1/snapshots/plan", key=key, json_body=body)


async def commit(session: HttpSession, key: str, body: Any) -> Response:
    return await session.request("POST", "/api/v1/snapshots", key=key, json_body=body)


async def send_pack(session: HttpSession, key: str, body: bytes) -> Response:
    return await session.request("POST", "/api/v1/blobs", key=key, body=body)


async def send_part(
    session: HttpSession, key: str, blob: bytes, offset: int, size: int | None = None
) -> Response:
    """PUT the part of ``blob`` at ``offset`` (``size`` bytes; default: one part)."""
    data = blob[offset : offset + (size or PART_BYTES)]
    path = f"/api/v1/blobs/{sha(blob)}?offset={offset}&total={len(blob)}"
    return await session.request("PUT", path, key=key, body=data)


async def upload(
    session: HttpSession,
    key: str,
    files: Mapping[str, bytes],
    links: Mapping[str, str] | None = None,
    modes: Mapping[str, int] | None = None,
) -> str:
    """Plan, send what is missing (small blobs in one pack, large ones in parts), commit; the
    snapshot id.  Fails the test on any error."""
    body = manifest(files, links, modes)
    planned = await plan(session, key, body)
    assert planned.status == 200, planned.body
    missing: dict[str, int] = planned.json()["missing"]
    by_hash = {sha(data): data for data in files.values()}
    small = [by_hash[h] for h in missing if len(by_hash[h]) * 4 <= PART_BYTES]
    if small:
        sent = await send_pack(session, key, pack(*small))
        assert sent.status == 200, sent.body
    for blob_hash, have in missing.items():
        blob = by_hash[blob_hash]
        if len(blob) * 4 <= PART_BYTES:
            continue
        for offset in range(have, len(blob), PART_BYTES):
            part = await send_part(session, key, blob, offset)
            assert part.status == 200, part.body
    done = await commit(session, key, body)
    assert done.status == 201, done.body
    sid: str = done.json()["snapshot"]["id"]
    return sid


def blob_files(data_dir: Path) -> dict[str, Path]:
    """The blobs stored under ``data_dir``: sha256 -> file (no temporary or partial files)."""
    root = data_dir / "blobs"
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for folder in root.iterdir():
        if len(folder.name) == 2 and folder.is_dir():
            for child in folder.iterdir():
                found[folder.name + child.name] = child
    return found


def stray_files(data_dir: Path) -> list[Path]:
    """Temporary and partial files left in the blob store."""
    root = data_dir / "blobs"
    if not root.is_dir():
        return []
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and (p.name.startswith(".") or p.parent.name == "partial")
    ]


# ---- git ------------------------------------------------------------------------------------


def git(root: Path, *args: str) -> str:
    """Run ``git -C root ARGS`` with a fixed identity and no user config; its stdout."""
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    return done.stdout


def init_repo(root: Path, branch: str = "trunk") -> None:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", branch)


def commit_all(root: Path, message: str = "commit") -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


def write_tree(root: Path, files: Mapping[str, bytes | str]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)


# ---- ml -------------------------------------------------------------------------------------


@dataclass
class MlResult:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def ml_env(url: str, key: str | None, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for ``ml``: no FETCHML_* of the caller, private config and cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHML_")}
    env.pop("COLUMNS", None)
    env.update(GIT_ENV)
    env["XDG_CONFIG_HOME"] = str(home / "xdg-config")
    env["XDG_CACHE_HOME"] = str(home / "xdg-cache")
    env["FETCHML_URL"] = url
    if key is not None:
        env["FETCHML_API_KEY"] = key
    env.update(extra)
    return env


async def run_ml(
    url: str, key: str | None, home: Path, *args: str, cwd: Path, limit_s: float = 30
) -> MlResult:
    """Run ``ml ARGS`` in ``cwd`` as the user of ``key`` to its end."""
    with trio.fail_after(limit_s):
        proc = await trio.run_process(
            [*ML_ARGV, *args],
            cwd=cwd,
            env=ml_env(url, key, home),
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return MlResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


# ---- GPUs and disks ---------------------------------------------------------------------------

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=index,name,uuid*) echo "0, Fake GPU, GPU-1234" ;;
  *--query-gpu=index*) echo "0" ;;
  *) echo "fake nvidia-smi" ;;
esac
"""


def fake_nvidia_smi(folder: Path) -> Path:
    """A ``nvidia-smi`` in ``folder`` that lists one GPU: 0, "Fake GPU", "GPU-1234"."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(FAKE_NVIDIA_SMI)
    exe.chmod(0o755)
    return folder


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` mounted at ``where`` for the block; yields False (mounting nothing)
    where this process may not mount."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        yield False
        return
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10, check=False)
