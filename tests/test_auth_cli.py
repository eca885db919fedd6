"""Tests of the auth file (first start, atomic 0600 writes) and the ``fetchml keys`` commands."""

from __future__ import annotations

import argparse
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import trio

from fetchml.auth import (
    AuthActor,
    AuthConfig,
    KeyEntry,
    UserEntry,
    ensure_auth_file,
    load_auth_file,
    parse_auth_config,
    with_user,
    write_auth_file,
)
from fetchml.cli._keys import register
from fetchml.errors import AuthError, ConfigError

REPO = Path(__file__).resolve().parent.parent
ROUNDS = "4"
# The same parser a test builds in-process, built in a fresh interpreter.
SUBPROCESS_SCRIPT = (
    "import argparse, sys\n"
    "from fetchml.cli._keys import register\n"
    "parser = argparse.ArgumentParser(prog='fetchml')\n"
    "register(parser.add_subparsers(dest='command', required=True))\n"
    "args = parser.parse_args()\n"
    "sys.exit(args.func(args))\n"
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_keys(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fetchml")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", *argv])
    result: int = args.func(args)
    return result


def run_subprocess(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, "keys", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def authenticate(path: Path, key: str) -> str:
    actor = AuthActor(load_auth_file(path))
    with trio.fail_after(10):
        return (await actor.authenticate(key)).user


# ---- auth file -------------------------------------------------------------------------------


async def test_ensure_auth_file_creates_admin_once(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "auth.yaml"
    key = ensure_auth_file(path, rounds=4)
    assert key is not None
    assert key.startswith("fml_")
    assert mode_of(path) == 0o600
    assert key not in path.read_text()
    config = load_auth_file(path)
    entry = config.api_keys["admin"]
    assert entry.admin is True
    assert entry.roles == ("admin",)
    assert entry.keys[0].key_id is not None
    assert key.startswith(f"fml_{entry.keys[0].key_id}_")
    assert await authenticate(path, key) == "admin"
    before = path.read_bytes()
    assert ensure_auth_file(path, rounds=4) is None
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["auth.yaml"]


def test_ensure_auth_file_keeps_any_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text("anything\n")
    assert ensure_auth_file(path, rounds=4) is None
    assert path.read_text() == "anything\n"


def test_write_auth_file_round_trips_and_is_private(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"k", bcrypt.gensalt(4)).decode()
    config = parse_auth_config(
        {
            "enabled": False,
            "api_keys": {
                "alice": {"hash": hashed, "roles": ["ops"], "permissions": {"jobs:read:all": True}},
                "bob": {"hash": hashed, "key_id": "234567234567", "admin": True},
            },
            "roles": {"ops": ["status:read"]},
        },
        source="test",
    )
    path = tmp_path / "auth.yaml"
    path.write_text("old\n")
    path.chmod(0o644)
    write_auth_file(path, config)
    assert mode_of(path) == 0o600
    assert load_auth_file(path) == config  # an all-digit key id must come back as a string
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auth.yaml"]


def test_write_auth_file_reports_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        write_auth_file(blocker / "auth.yaml", AuthConfig())


def test_with_user_validates(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"k", bcrypt.gensalt(4)).decode()
    entry = UserEntry(keys=(KeyEntry(hash=hashed),), roles=("nosuch",))
    with pytest.raises(ConfigError, match=r"auth\.api_keys\.eve\.roles\[0\]: unknown role"):
        with_user(AuthConfig(), "eve", entry, source="x")


# ---- keys new / keys hash through argparse ------------------------------------------------------


async def test_keys_new_creates_then_preserves_and_replaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "configs" / "auth.yaml"
    file_arg = ["--auth-file", str(path), "--rounds", ROUNDS]
    assert run_keys("new", "--user", "alice", "--role", "researcher", *file_arg) == 0
    out, err = capsys.readouterr()
    alice_key = out.strip()
    assert out == alice_key + "\n"
    assert alice_key.startswith("fml_")
    assert err.count("\n") == 1
    assert "will not be shown again" in err
    assert alice_key not in err
    assert mode_of(path) == 0o600
    assert alice_key not in path.read_text()

    assert run_keys("new", "--user", "root", "--admin", *file_arg) == 0
    root_key = capsys.readouterr().out.strip()
    config = load_auth_file(path)
    assert set(config.api_keys) == {"alice", "root"}
    assert config.api_keys["root"].admin is True
    assert config.api_keys["root"].roles == ("admin",)
    assert await authenticate(path, alice_key) == "alice"
    assert await authenticate(path, root_key) == "root"

    # A second key for alice (rotation): both work until the old one is revoked.
    assert run_keys("new", "--user", "alice", "--role", "analyst", *file_arg) == 0
    out, err = capsys.readouterr()
    assert "added; 1 other key(s) still valid" in err
    second_key = out.strip()
    assert load_auth_file(path).api_keys["alice"].roles == ("analyst",)
    assert len(load_auth_file(path).api_keys["alice"].keys) == 2
    assert await authenticate(path, second_key) == "alice"
    assert await authenticate(path, alice_key) == "alice"

    # --replace revokes the user's other keys; roles stay when none are given.
    assert run_keys("new", "--user", "alice", "--replace", *file_arg) == 0
    out, err = capsys.readouterr()
    assert "replaces 2 old key(s)" in err
    assert load_auth_file(path).api_keys["alice"].roles == ("analyst",)
    assert await authenticate(path, out.strip()) == "alice"
    for old in (alice_key, second_key):
        with pytest.raises(AuthError):
            await authenticate(path, old)
    assert await authenticate(path, root_key) == "root"


def test_keys_new_accepts_a_custom_role_from_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text("auth:\n  roles:\n    ops: [status:read]\n")
    assert (
        run_keys("new", "--user", "o", "--role", "ops", "--auth-file", str(path), "--rounds", "4")
        == 0
    )
    config = load_auth_file(path)
    assert config.roles == {"ops": ("status:read",)}
    assert config.principal_for("o").permissions == {"status:read"}
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--user", "eve", "--role", "resercher"], "unknown role 'resercher'"),
        (["--user", "bad name", "--role", "analyst"], "invalid user name 'bad name'"),
        (["--user", "eve"], "give the user a role with --role ROLE (or --admin)"),
        (
            ["--user", "eve", "--role", "analyst", "--rounds", "2"],
            "bcrypt rounds must be between 4 and 16",
        ),
    ],
)
def test_keys_new_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    path = tmp_path / "auth.yaml"
    assert run_keys("new", *argv, "--auth-file", str(path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"fetchml keys new: error: {message}")
    assert err.count("\n") == 1
    assert not path.exists()


def test_keys_new_refuses_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text("auth:\n  api_keys:\n    x: {hash: nope}\n")
    assert run_keys("new", "--user", "eve", "--role", "analyst", "--auth-file", str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fetchml keys new: error: ")
    assert "auth.api_keys.x.hash: not a bcrypt hash" in err
    assert path.read_text() == "auth:\n  api_keys:\n    x: {hash: nope}\n"


def test_keys_hash_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("my own key\n"))
    assert run_keys("hash", "--rounds", ROUNDS) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert bcrypt.checkpw(b"my own key", out.strip().encode())


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no key on stdin"), ("a\nb\n", "exactly one key"), ("x" * 80, "at most 72 bytes")],
)
def test_keys_hash_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert run_keys("hash", "--rounds", ROUNDS) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("fetchml keys hash: error: ")
    assert message in err
    assert err.count("\n") == 1


# ---- the same commands in a real process --------------------------------------------------------


def test_keys_new_and_hash_in_a_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    done = run_subprocess(
        "new", "--user", "sam", "--role", "researcher", "--auth-file", str(path), "--rounds", ROUNDS
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert done.stdout == key + "\n"
    assert "will not be shown again" in done.stderr
    assert key not in done.stderr
    assert mode_of(path) == 0o600
    assert trio.run(authenticate, path, key) == "sam"

    hashed = run_subprocess("hash", "--rounds", ROUNDS, stdin="hand made key\n")
    assert hashed.returncode == 0, hashed.stderr
    assert bcrypt.checkpw(b"hand made key", hashed.stdout.strip().encode())

    bad = run_subprocess("new", "--user", "sam", "--role", "nope", "--auth-file", str(path))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr == "fetchml keys new: error: unknown role 'nope'\n"
