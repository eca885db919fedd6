"""Helpers of the key lifecycle and session tests: real `fetchml keys` runs, auth file edits,
the audit log, and polling until the server has applied a change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from fetchml.cli import main as fetchml_main

from .core import until

__all__ = [
    "WITHIN",
    "audit_lines",
    "audited",
    "edit",
    "hashed",
    "keys_cli",
    "new_key",
    "until",
]

# A revoked key's connections close within POLL_INTERVAL_S plus the close; allow for a busy CI.
WITHIN = 5.0


def hashed(key: str) -> str:
    """A cheap bcrypt hash of ``key`` (cost 4)."""
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(4)).decode()


def new_key(auth_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    """``fetchml keys new`` for real; returns (key id, key)."""
    code = fetchml_main(["keys", "new", *args, "--auth-file", str(auth_file), "--rounds", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    key = out.strip()
    return key.split("_")[1], key


def keys_cli(auth_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = fetchml_main(["keys", *args, "--auth-file", str(auth_file)])
    out, err = capsys.readouterr()
    return code, out + err


def audit_lines(config: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in config.audit_path.read_bytes().splitlines()]


def audited(config: Any, action: str, key_id: str) -> bool:
    """Whether the audit log has ``action`` for ``key_id`` (the server applied the change)."""
    entries = audit_lines(config) if config.audit_path.exists() else []
    return any(
        e["action"] == action and (e.get("detail") or {}).get("key_id") == key_id for e in entries
    )


def edit(path: Path, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` once in the file; return the text it had before."""
    text = path.read_text()
    path.write_text(text.replace(old, new, 1))
    return text
