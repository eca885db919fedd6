"""Client settings: the server URL, the API key and the CA file, from arguments, environment or
config file.

Precedence: explicit values (command-line flags, ``connect()`` arguments), then ``FETCHML_URL`` /
``FETCHML_API_KEY`` / ``FETCHML_CA_FILE``, then the YAML file
``$XDG_CONFIG_HOME/fetchml/config.yaml`` (by default ``~/.config/fetchml/config.yaml``), then the
default URL ``http://127.0.0.1:9103``.  The key is kept as given and sent as-is; nothing here ever
prints it (:func:`mask_key` shows its key id).  The CA file (for ``https``/``wss`` servers whose
certificate no system CA signed) is a path; in the config file a relative path is relative to the
config file's directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from fetchml.errors import AuthError, ConfigError

__all__ = [
    "DEFAULT_URL",
    "ENV_CA_FILE",
    "ENV_KEY",
    "ENV_URL",
    "Settings",
    "check_key",
    "default_config_path",
    "http_url",
    "load_settings",
    "mask_key",
    "websocket_url",
    "write_config",
]

DEFAULT_URL: Final = "http://127.0.0.1:9103"
ENV_URL: Final = "FETCHML_URL"
ENV_KEY: Final = "FETCHML_API_KEY"
ENV_CA_FILE: Final = "FETCHML_CA_FILE"
CONFIG_KEYS: Final = ("url", "api_key", "ca_file")
_SCHEMES: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
# A setting as ``write_config`` writes it: ``name: value``, the value a URL, one of our keys or an
# absolute path, in characters that YAML reads as that very string (a plain scalar that no YAML
# rule turns into a number, a boolean, a date or null).
_PLAIN_SETTING: Final = re.compile(
    r"(url|api_key|ca_file): ((?:[A-Za-z][A-Za-z0-9+.-]*://|fml_|/)[A-Za-z0-9_./:@%+=~-]*(?<!:))"
)


@dataclass(frozen=True)
class Settings:
    """Where to connect, with which key and CA file, and where each came from (for
    ``ml config show``).

    ``url_source`` / ``key_source`` / ``ca_file_source`` are ``"flag"``, ``"env"``,
    ``"config"`` or ``"default"`` (``"none"`` without a key or a CA file).  ``ca_file`` is None
    when the system's CAs are trusted.  The key is left out of ``repr``.
    """

    url: str
    key: str | None = field(repr=False)
    url_source: str
    key_source: str
    config_path: Path
    ca_file: str | None = None
    ca_file_source: str = "none"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/fetchml/config.yaml``, else ``~/.config/fetchml/config.yaml``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "fetchml" / "config.yaml"


def read_config_file(path: Path) -> dict[str, str]:
    """The settings in a client config file ({} if it does not exist).  Raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    plain = _plain_settings(text)
    if plain is not None:
        return _check_config(path, plain)
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    return _check_config(path, data)


def _plain_settings(text: str) -> dict[str, str] | None:
    """The settings of a file in the form ``write_config`` writes (comments, blank lines and
    plain ``name: value`` lines, each name once), as YAML reads it; None for any other file,
    which is then read with PyYAML (importing it costs about 15 ms, a command's start-up)."""
    settings: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        match = _PLAIN_SETTING.fullmatch(line)
        if match is None or match.group(1) in settings:
            return None
        settings[match.group(1)] = match.group(2)
    return settings


def _check_config(path: Path, data: Any) -> dict[str, str]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'url' and 'api_key'")
    settings: dict[str, str] = {}
    for name, value in data.items():
        if name not in CONFIG_KEYS:
            known = ", ".join(CONFIG_KEYS)
            raise ConfigError(f"{path}: unknown setting {name!r} (known: {known})")
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {name}: must be a non-empty string")
        settings[name] = value.strip()
    return settings


def load_settings(
    *,
    url: str | None = None,
    key: str | None = None,
    ca_file: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve the settings; ``url``/``key``/``ca_file`` win over the environment, which wins
    over the file.

    The config file is only read when the environment and arguments leave something unset
    (the CA file counts only for an ``https``/``wss`` URL).
    Does not open the CA file (only a TLS connection needs it).  Raises :class:`ConfigError`
    for an unreadable or invalid config file.
    """
    env = os.environ if env is None else env
    path = Path(config_path) if config_path is not None else default_config_path(env)
    url_value, url_source = _first((url, "flag"), (env.get(ENV_URL), "env"))
    key_value, key_source = _first((key, "flag"), (env.get(ENV_KEY), "env"))
    ca_value, ca_source = _first((ca_file, "flag"), (env.get(ENV_CA_FILE), "env"))
    if ca_value is not None:
        ca_value = os.path.expanduser(ca_value)
    # A CA file matters only for a TLS URL: a plain-http setup given wholly by flags or the
    # environment never depends on the config file.
    wants_ca = ca_value is None and (url_value is None or _is_tls(url_value))
    if url_value is None or key_value is None or wants_ca:
        stored = read_config_file(path)
        if url_value is None:
            url_value, url_source = _first((stored.get("url"), "config"), (DEFAULT_URL, "default"))
        if key_value is None:
            key_value, key_source = _first((stored.get("api_key"), "config"))
        if ca_value is None and "ca_file" in stored:
            # Relative to the config file, which may be read from any working directory.
            ca_value = str(path.parent / os.path.expanduser(stored["ca_file"]))
            ca_source = "config"
    assert url_value is not None
    return Settings(
        url=normalize_url(url_value),
        key=key_value,
        url_source=url_source,
        key_source=key_source if key_value is not None else "none",
        config_path=path,
        ca_file=ca_value,
        ca_file_source=ca_source if ca_value is not None else "none",
    )


def _is_tls(url: str) -> bool:
    return url.strip().lower().startswith(("https://", "wss://"))


def _first(*candidates: tuple[str | None, str]) -> tuple[str | None, str]:
    for value, source in candidates:
        if value is not None and value.strip():
            return value.strip(), source
    return None, "none"


def normalize_url(url: str) -> str:
    """``url`` with a scheme (``http://`` when it has none) and no trailing slash.

    Raises :class:`ConfigError` for a scheme other than http, https, ws or wss, or no host.
    """
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme.lower() not in _SCHEMES:
        raise ConfigError(f"server URL {url!r}: the scheme must be http, https, ws or wss")
    if not parts.hostname:
        raise ConfigError(f"server URL {url!r}: no host")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"server URL {url!r}: invalid port") from None
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def websocket_url(url: str) -> str:
    """The WebSocket endpoint for a server URL: ``http://h:p`` → ``ws://h:p/ws``.

    A ``ws://`` or ``wss://`` URL is taken as is when its path already ends in ``/ws``.
    """
    parts = urlsplit(normalize_url(url))
    path = parts.path
    if not path.endswith("/ws"):
        path = f"{path}/ws"
    return urlunsplit((_SCHEMES[parts.scheme], parts.netloc, path, "", ""))


def http_url(url: str) -> str:
    """The HTTP base URL for a server URL: ``ws://h:p/ws`` → ``http://h:p``."""
    parts = urlsplit(normalize_url(url))
    scheme = "https" if parts.scheme in ("https", "wss") else "http"
    path = parts.path
    if parts.scheme in ("ws", "wss") and path.endswith("/ws"):
        path = path[: -len("/ws")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def check_key(key: str | None) -> None:
    """Raise :class:`AuthError` for a key no server issues (spaces, control characters): it
    could not be sent in a header as it is."""
    if key is not None and (not key.isascii() or not key.isprintable() or " " in key):
        raise AuthError("the API key has characters no API key has (spaces or control)")


def mask_key(key: str | None) -> str:
    """A key shown safely: ``fml_<key id>_****`` for keys of our format, else ``****``."""
    if not key:
        return "(none)"
    prefix, _, rest = key.partition("_")
    key_id, sep, _secret = rest.partition("_")
    if prefix == "fml" and sep and len(key_id) == 12:
        return f"fml_{key_id}_****"
    return "****"


def write_config(path: Path, *, url: str, key: str, ca_file: str | None = None) -> None:
    """Write the client config file atomically, mode 0600 (its directory 0700 when created).

    ``ca_file`` is stored as given (make it absolute: a relative one is read relative to the
    config file's directory).  Raises :class:`ConfigError` when the file cannot be written.
    """
    import yaml

    from fetchml._files import write_atomic

    settings = {"url": url, "api_key": key} | ({"ca_file": ca_file} if ca_file else {})
    body = (
        "# Fetch ML client settings, written by `ml config init`.\n"
        "# It holds your API key: keep this file private (mode 0600).\n"
        + yaml.safe_dump(settings, default_flow_style=False, sort_keys=False)
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, body.encode(), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
