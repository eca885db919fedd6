"""Client settings: precedence, URLs, the config file, and the key never shown."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetchml.client import default_config_path, load_settings, mask_key, websocket_url, write_config
from fetchml.client._settings import _plain_settings, http_url
from fetchml.errors import ConfigError

KEY = "fml_abcdefghijkl_secretsecretsecret"


def test_precedence_flags_env_file_default(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, url="http://file:1", key="file-key")
    env = {"FETCHML_URL": "http://env:2", "FETCHML_API_KEY": "env-key"}
    flags = load_settings(url="http://flag:3", key="flag-key", config_path=path, env=env)
    assert (flags.url, flags.key, flags.url_source, flags.key_source) == (
        "http://flag:3",
        "flag-key",
        "flag",
        "flag",
    )
    from_env = load_settings(config_path=path, env=env)
    assert (from_env.url, from_env.key, from_env.key_source) == ("http://env:2", "env-key", "env")
    from_file = load_settings(config_path=path, env={})
    assert (from_file.url, from_file.key, from_file.url_source) == (
        "http://file:1",
        "file-key",
        "config",
    )
    nothing = load_settings(config_path=tmp_path / "missing.yaml", env={})
    assert (nothing.url, nothing.key, nothing.key_source) == (
        "http://127.0.0.1:9103",
        None,
        "none",
    )
    assert "file-key" not in repr(from_file)


def test_config_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "new" / "fetchml" / "config.yaml"
    write_config(path, url="http://h:9103", key=KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.write_text("url: http://h\napi_kee: typo\n")
    with pytest.raises(ConfigError, match="unknown setting 'api_kee'"):
        load_settings(config_path=path, env={})
    path.write_text("url: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(config_path=path, env={})
    # Everything a plain-http connection needs given elsewhere: the broken file is not read...
    plain = load_settings(config_path=path, env={"FETCHML_URL": "http://h", "FETCHML_API_KEY": KEY})
    assert plain.ca_file is None
    # ... while for TLS it could hold the CA file, so it is.
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(config_path=path, env={"FETCHML_URL": "https://h", "FETCHML_API_KEY": KEY})


def test_default_config_path_follows_xdg(tmp_path: Path) -> None:
    xdg = default_config_path({"XDG_CONFIG_HOME": str(tmp_path)})
    assert xdg == tmp_path / "fetchml" / "config.yaml"
    assert default_config_path({}).parts[-3:] == (".config", "fetchml", "config.yaml")


@pytest.mark.parametrize(
    ("url", "ws", "http"),
    [
        ("http://127.0.0.1:9103", "ws://127.0.0.1:9103/ws", "http://127.0.0.1:9103"),
        ("https://ml.lab/", "wss://ml.lab/ws", "https://ml.lab"),
        ("http://proxy/fetchml", "ws://proxy/fetchml/ws", "http://proxy/fetchml"),
        ("ws://h:1/ws", "ws://h:1/ws", "http://h:1"),
        ("h:9103", "ws://h:9103/ws", "http://h:9103"),
    ],
)
def test_urls(url: str, ws: str, http: str) -> None:
    assert websocket_url(url) == ws
    assert http_url(url) == http


@pytest.mark.parametrize("url", ["ftp://h", "http://", "http://h:notaport"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(url=url, env={})


def test_mask_key_shows_only_the_key_id() -> None:
    assert mask_key(KEY) == "fml_abcdefghijkl_****"
    assert mask_key("some-hand-made-key") == "****"
    assert mask_key(None) == "(none)"


_VALUE = r"(?:[A-Za-z][A-Za-z0-9+.-]*://|fml_|/)[A-Za-z0-9_./:@%+=~-]*"


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["url", "api_key", "ca_file"]), value=st.from_regex(_VALUE, fullmatch=True)
)
def test_a_setting_read_without_pyyaml_is_what_pyyaml_reads(name: str, value: str) -> None:
    import yaml

    text = f"# written by hand\n\n{name}: {value}\n"
    plain = _plain_settings(text)
    if plain is not None:
        assert plain == yaml.safe_load(text)


def test_the_file_write_config_writes_is_read_without_pyyaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    key = "fml_abcdefghijkl_-Zz09_aZ-"
    write_config(path, url="https://lab.example:9103/base", key=key, ca_file="/etc/lab/ca.pem")
    expected = {
        "url": "https://lab.example:9103/base",
        "api_key": key,
        "ca_file": "/etc/lab/ca.pem",
    }
    assert _plain_settings(path.read_text()) == expected
    settings = load_settings(config_path=path, env={})
    assert (settings.url, settings.key, settings.ca_file) == (
        expected["url"],
        key,
        "/etc/lab/ca.pem",
    )
    for other in (
        "url: 'http://h'\n",  # quoted
        "url: http://h  # a comment\n",
        "url: http://h\nurl: http://g\n",  # twice
        "url: 123\n",  # a number to YAML
        "url: http://h:\n",  # a mapping to YAML
        "api_key: fml_x\r\n",
        "--- \nurl: http://h\n",
    ):
        assert _plain_settings(other) is None, other
