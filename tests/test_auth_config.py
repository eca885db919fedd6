"""Tests of fetchml.auth's config parsing: every error names the source and the field path."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from fetchml.auth import AuthConfig, load_auth_file, parse_auth_config
from fetchml.errors import ConfigError

SRC = "auth.yaml"


def fast_hash(key: str) -> str:
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(4)).decode()


def test_load_auth_file_happy_path(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text(
        "auth:\n"
        "  enabled: false\n"
        "  api_keys:\n"
        f"    eve:\n      hash: '{fast_hash('k')}'\n      roles: [analyst]\n"
    )
    config = load_auth_file(path)
    assert config.enabled is False
    assert config.api_keys["eve"].roles == ("analyst",)


def test_parse_minimal_section_defaults() -> None:
    config = parse_auth_config({}, source=SRC)
    assert config == AuthConfig(enabled=True, api_keys={}, roles={})


GOOD = fast_hash("x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "auth.yaml: auth: expected a mapping, got `null`"),
        ({"enabled": "yes"}, "auth.yaml: auth.enabled: expected `bool`, got `str`"),
        ({"api_key": {}}, "auth.yaml: auth.api_key: unknown field"),
        ({"api_keys": None}, "auth.yaml: auth.api_keys: expected a mapping, got `null`"),
        ({"api_keys": {"alice": {}}}, "auth.yaml: auth.api_keys.alice.hash: missing field"),
        (
            {"api_keys": {"alice": {"hash": GOOD, "role": ["admin"]}}},
            "auth.yaml: auth.api_keys.alice.role: unknown field",
        ),
        (
            {"api_keys": {"alice": {"hash": GOOD, "roles": ["resercher"]}}},
            "auth.yaml: auth.api_keys.alice.roles[0]: unknown role 'resercher'",
        ),
        (
            {"api_keys": {"alice": {"hash": GOOD, "roles": ["analyst", 3]}}},
            "auth.yaml: auth.api_keys.alice.roles[1]: expected `str`, got `int`",
        ),
        (
            {"api_keys": {"alice": {"hash": GOOD, "admin": "no"}}},
            "auth.yaml: auth.api_keys.alice.admin: expected `bool`, got `str`",
        ),
        (
            {"api_keys": {"alice": {"hash": GOOD, "permissions": {"jobs:raed": True}}}},
            "auth.yaml: auth.api_keys.alice.permissions.jobs:raed: unknown permission 'jobs:raed'",
        ),
        (
            {"api_keys": {"alice": {"hash": GOOD, "permissions": {"jobs:read": "yes"}}}},
            "auth.yaml: auth.api_keys.alice.permissions.jobs:read: expected `bool`, got `str`",
        ),
        (
            {
                "api_keys": {
                    "alice": {"hash": GOOD, "admin": True, "permissions": {"jobs:read": False}}
                }
            },
            "auth.yaml: auth.api_keys.alice.permissions.jobs:read: an admin holds every permission",
        ),
        (
            {"api_keys": {"alice": {"hash": GOOD, "key_id": "ABC"}}},
            "auth.yaml: auth.api_keys.alice.key_id: a key id is 12 characters",
        ),
        (
            {
                "api_keys": {
                    "alice": {"hash": GOOD, "key_id": "aaaaaaaaaaaa"},
                    "bob": {"hash": GOOD, "key_id": "aaaaaaaaaaaa"},
                }
            },
            "auth.yaml: auth.api_keys.bob.key_id: key id already used by user 'alice'",
        ),
        (
            {"api_keys": {"bad name": {"hash": GOOD}}},
            "auth.yaml: auth.api_keys.bad name: invalid name 'bad name'",
        ),
        (
            {"api_keys": {7: {"hash": GOOD}}},
            "auth.yaml: auth.api_keys: expected `str`, got `int` (in a mapping key)",
        ),
        (
            {"roles": {"ops": "status:read"}},
            "auth.yaml: auth.roles.ops: expected a list, got `str`",
        ),
        (
            {"roles": {"ops": ["status:raed"]}},
            "auth.yaml: auth.roles.ops[0]: unknown permission 'status:raed'",
        ),
        (
            {"roles": {"admin": ["status:read"]}},
            "auth.yaml: auth.roles.admin: role 'admin' is built in and cannot be redefined",
        ),
    ],
)
def test_parse_errors_name_the_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_auth_config(data, source=SRC)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "value",
    [
        "hunter2",
        "$2b$12$short",
        GOOD[:-1] + "!",
        "sha256:abcd",
        GOOD[:28] + "x" + GOOD[29:],  # the salt's last character can only be one of ".Oeu"
    ],
)
def test_hash_that_is_not_bcrypt_is_rejected_without_echo(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_auth_config({"api_keys": {"alice": {"hash": value}}}, source=SRC)
    message = str(info.value)
    assert message.startswith("auth.yaml: auth.api_keys.alice.hash: not a bcrypt hash")
    assert value not in message


@pytest.mark.parametrize("cost", ["03", "17", "31"])
def test_hash_with_unusable_cost_is_rejected(cost: str) -> None:
    value = GOOD[:4] + cost + GOOD[6:]
    with pytest.raises(ConfigError) as info:
        parse_auth_config({"api_keys": {"alice": {"hash": value}}}, source=SRC)
    assert str(info.value) == (
        f"auth.yaml: auth.api_keys.alice.hash: bcrypt cost {int(cost)} is outside 4..16"
    )


def test_every_hash_that_passes_the_config_check_is_usable_by_bcrypt() -> None:
    hashed = GOOD.encode()
    for prefix in (b"$2a$", b"$2b$", b"$2x$", b"$2y$"):
        for last in b".Oeu":
            candidate = prefix + hashed[4:28] + bytes([last]) + hashed[29:]
            parse_auth_config({"api_keys": {"a": {"hash": candidate.decode()}}}, source=SRC)
            bcrypt.checkpw(b"x", candidate)  # raises ValueError on a hash it refuses


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("auth: [\n", "invalid YAML at line 2, column 1"),
        ("auth:\n  enabled: true\n  enabled: false\n", "invalid YAML at line 3, column 3"),
        ("", "the file is empty"),
        ("- 1\n", "expected a mapping, got a list"),
        ("auth: {}\nserver: {}\n", "server: unknown field"),
        ("auth:\n", "auth: expected a mapping, got `null`"),
        ("auth:\n  api_keys:\n    x: {hash: nope}\n", "auth.api_keys.x.hash: not a bcrypt hash"),
    ],
)
def test_load_auth_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_auth_file(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_load_auth_file_rejects_duplicate_users(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text(f"auth:\n  api_keys:\n    a: {{hash: '{GOOD}'}}\n    a: {{hash: '{GOOD}'}}\n")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_auth_file(path)


def test_load_auth_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_auth_file(tmp_path / "nope.yaml")
