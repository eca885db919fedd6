"""Shared helpers of the client and ``ml`` tests (this module has no tests of its own).

A real server runs in-process (``run_server`` in the test's nursery) on a free loopback port,
with three users (admin, researcher bob, analyst carol) whose keys are hashed with bcrypt at
4 rounds; ``ml`` runs as a real subprocess with ``FETCHML_URL`` / ``FETCHML_API_KEY``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from fetchml import Config, make_config
from fetchml.auth import generate_key, hash_key, key_id_of
from fetchml.server import run_server

ROLES = {"admin": "admin", "bob": "researcher", "carol": "analyst"}
KEYS: dict[str, str] = {user: generate_key()[1] for user in ROLES}
SERVER_SETTINGS: dict[str, Any] = {
    "cpus": 2,
    "memory_mb": 4000,
    "gpus": [],
    "kill_grace_s": 0.5,
}

_BIN = Path(sys.executable).parent / "ml"
ML_ARGV = (
    [str(_BIN)]
    if _BIN.exists()
    else [sys.executable, "-c", "import sys; from fetchml.cli import ml_main; sys.exit(ml_main())"]
)


def auth_section() -> dict[str, Any]:
    """The inline ``auth:`` config of the three test users."""
    return {
        "enabled": True,
        "api_keys": {
            user: {
                "hash": hash_key(KEYS[user], rounds=4),
                "key_id": key_id_of(KEYS[user]),
                "roles": [role],
            }
            for user, role in ROLES.items()
        },
    }


_AUTH = auth_section()


def server_config(data_dir: Path, **settings: Any) -> Config:
    """A server config on a free loopback port with the test users."""
    return make_config(
        data_dir=str(data_dir), port=0, auth=_AUTH, **{**SERVER_SETTINGS, **settings}
    )


@asynccontextmanager
async def running_server(data_dir: Path, **settings: Any) -> AsyncIterator[str]:
    """Run a server on a free port for the block; yields its base URL (``http://…``)."""
    config = server_config(data_dir, **settings)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(run_server, config, stop=stop, handle_signals=False)
        )
        try:
            yield binds[0]
        finally:
            stop.set()


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def ml_env(url: str | None, user: str | None, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for ``ml``: no FETCHML_* of the caller, a private config dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHML_")}
    env["XDG_CONFIG_HOME"] = str(home / "xdg")
    env.pop("COLUMNS", None)
    if url is not None:
        env["FETCHML_URL"] = url
    if user is not None:
        env["FETCHML_API_KEY"] = KEYS[user]
    env.update(extra)
    return env


async def run_ml(
    *args: str,
    env: Mapping[str, str],
    stdin: bytes | None = None,
    limit_s: float = 20,
    cwd: Path | None = None,
    argv: Sequence[str] = ML_ARGV,
) -> Result:
    """Run ``ml ARGS`` to its end (in ``cwd``: what ``ml queue`` snapshots); returns exit
    status, stdout and stderr.  ``argv``: how to start ``ml`` (another entry point)."""
    with trio.fail_after(limit_s):
        proc = await trio.run_process(
            [*argv, *args],
            cwd=cwd,
            env=dict(env),
            stdin=stdin if stdin is not None else b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


class Ml:
    """``ml`` bound to one server URL and a home dir: ``await ml("bob", "status")``."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home

    async def __call__(self, user: str | None, *args: str, **kwargs: Any) -> Result:
        """``ml ARGS`` as ``user``, run in an empty project folder of the home dir."""
        project = self.home / "project"
        project.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("cwd", project)
        env = ml_env(self.url, user, self.home, XDG_CACHE_HOME=str(self.home / "cache"))
        return await run_ml(*args, env=env, **kwargs)
