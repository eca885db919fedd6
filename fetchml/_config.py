"""Server and scheduler configuration: one YAML file (``configs/server.yaml``) or keyword arguments.

Every section is a msgspec struct that rejects unknown keys, so a typo in the file is an error that
names the key instead of a setting silently ignored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from ._models import describe_validation_error
from .errors import ConfigError

__all__ = [
    "AuditSettings",
    "Config",
    "ExecutorSettings",
    "LimitsSettings",
    "RaySettings",
    "SchedulerSettings",
    "SnapshotSettings",
    "TlsSettings",
    "TrackingSettings",
    "load_config",
    "make_config",
]

Positive = Annotated[float, msgspec.Meta(gt=0)]
GpuId = Annotated[int, msgspec.Meta(ge=0)]


class SchedulerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the scheduler may hand out, and its policy knobs.

    ``cpus``/``memory_mb`` default to the machine's (with the ``ray`` backend: the cluster's,
    re-read as nodes come and go); ``gpus`` is ``"auto"`` (ask ``nvidia-smi``, or the cluster)
    or an explicit list of device ids.  ``max_scan`` bounds how many queued jobs one dispatch pass
    examines (as Slurm's ``default_queue_depth``), which keeps dispatch fast with deep queues.
    """

    cpus: Annotated[float, msgspec.Meta(ge=0)] | None = None
    memory_mb: Annotated[int, msgspec.Meta(ge=0)] | None = None
    gpus: list[GpuId] | Literal["auto"] = "auto"
    max_running_per_user: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_requeues: Annotated[int, msgspec.Meta(ge=0)] = 3
    max_scan: Annotated[int, msgspec.Meta(ge=1)] = 1000


class RaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The Ray cluster the ``ray`` backend submits to (through its dashboard's Job API).

    ``poll_interval_s``: how often each running job's state is asked for (its end is seen
    within about that; one request per running job each time).  ``capacity_interval_s``: how
    often the cluster's resources are read (nodes join and leave, the cluster may vanish).
    ``request_timeout_s`` bounds each HTTP request.  ``callback_url`` is where runs send their
    outputs back (``http://gpu-server.lab:9103``).
    """

    address: str = "http://127.0.0.1:8265"
    # The URL of this server as the cluster's nodes reach it: a run sends its outputs back
    # there when it ends (None: outputs stay on the node).
    callback_url: str | None = None
    poll_interval_s: Positive = 1.0
    capacity_interval_s: Positive = 5.0
    request_timeout_s: Positive = 10.0


class ExecutorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How jobs run: ``local`` processes, or jobs on a ``ray`` cluster (settings in ``ray``).

    ``kill_grace_s`` is the wait between SIGTERM and SIGKILL on cancel/timeout (local backend;
    Ray applies its own, ``RAY_JOB_STOP_WAIT_TIME_S`` on the cluster).
    """

    backend: Literal["local", "ray"] = "local"
    kill_grace_s: Positive = 10.0
    ray: RaySettings = msgspec.field(default_factory=RaySettings)


class StoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """SQLite durability: ``full`` survives power loss; ``normal`` survives a process crash."""

    synchronous: Literal["full", "normal"] = "full"


class TlsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """HTTPS and WSS on the server's one port (hypercorn terminates TLS; TLS 1.2 at least).

    ``cert_file`` is the PEM certificate chain (leaf first), ``key_file`` its unencrypted PEM
    private key; both are required when ``enabled`` and are read at start-up, relative to the
    directory the server starts in.  ``fetchml certs new`` makes a self-signed pair.
    """

    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None


def _check_tls(tls: TlsSettings, *, source: str) -> None:
    """Raise :class:`ConfigError` naming the file setting that ``enabled: true`` lacks."""
    if not tls.enabled:
        return
    for name in ("cert_file", "key_file"):
        if not getattr(tls, name):
            raise ConfigError(
                f"{source}: server.tls.{name}: required when server.tls.enabled is true"
            )


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where the gateway listens, how much it accepts, and whether it speaks TLS."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9103
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1 << 20
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1 << 20
    subscriber_buffer: Annotated[int, msgspec.Meta(ge=1)] = 1000
    cors_origins: list[str] = []  # browser origins allowed cross-origin; empty: CORS off
    tls: TlsSettings = msgspec.field(default_factory=TlsSettings)


class LoggingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Server log output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class AuditSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The tamper-evident audit log: one hash-chained JSON line per action or refusal.

    ``file`` defaults to ``<data_dir>/audit.log``.
    """

    enabled: bool = True
    file: str | None = None


class LimitsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Rate limits: per API key for authenticated traffic, per address for failed keys.

    Each API key has a token bucket: ``burst`` requests at once, refilled at ``requests_per_s``
    (every HTTP request and every WebSocket op but the first ``auth`` counts as one).  The
    defaults are far above what people and their scripts do: an ``ml`` command makes a handful
    of requests, a script that queues a few hundred jobs at once stays within the burst, and
    50 per second sustained is 180,000 an hour, while a runaway loop is slowed to that.
    ``auth_failures`` wrong keys from one address within ``auth_failure_window_s`` ban that
    address for ``ban_s``: a person with a stale key gives up long before ten tries in a minute,
    while a guessing script is held to about 1.7 guesses a minute (what it costs in bcrypt work
    too).  A request with no key at all is not a guess and does not count.  Behind a reverse
    proxy every client shares the proxy's address.  ``enabled: false`` turns all of it off.
    """

    enabled: bool = True
    requests_per_s: Positive = 50.0
    burst: Annotated[int, msgspec.Meta(ge=1)] = 500
    auth_failures: Annotated[int, msgspec.Meta(ge=1)] = 10
    auth_failure_window_s: Positive = 60.0
    ban_s: Positive = 300.0


class SnapshotSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Caps on the code that travels with jobs.

    ``max_bytes`` and ``max_files`` bound one snapshot (a client over either says so before
    sending anything, naming the largest files and folders); ``max_user_bytes`` bounds what one
    user's snapshots keep on the server (each blob counted once, however many snapshots share
    it).  ``part_bytes`` is the largest request body of an upload (a large file goes in parts of
    this size, and an interrupted upload resumes by part).
    """

    max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1 << 30
    max_files: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    max_user_bytes: Annotated[int, msgspec.Meta(ge=1)] = 10 << 30
    part_bytes: Annotated[int, msgspec.Meta(ge=1 << 16, le=1 << 30)] = 8 << 20


class TrackingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Experiment tracking.

    Each running job's track file is read every ``ingest_interval_s``; its process tree and GPUs
    are sampled every ``system_interval_s`` (series under ``sys/``).  Points past
    ``max_points_per_run`` are counted as dropped, not stored.
    """

    ingest_interval_s: Annotated[float, msgspec.Meta(ge=0.01, le=60)] = 0.25
    system_interval_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 10.0
    max_points_per_run: Annotated[int, msgspec.Meta(ge=1, le=10**10)] = 10_000_000


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole server configuration (the shape of ``configs/server.yaml``).

    ``auth`` holds an inline auth section (parsed by :mod:`fetchml.auth`); without it the server
    reads ``auth_file``.
    """

    data_dir: str = "data"
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    executor: ExecutorSettings = msgspec.field(default_factory=ExecutorSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    snapshots: SnapshotSettings = msgspec.field(default_factory=SnapshotSettings)
    tracking: TrackingSettings = msgspec.field(default_factory=TrackingSettings)
    auth: dict[str, Any] | None = None
    auth_file: str = "configs/auth.yaml"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def audit_path(self) -> Path:
        return Path(self.audit.file) if self.audit.file else self.data_path / "audit.log"


def _convert(data: object, *, source: str) -> Config:
    try:
        config = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        _, message = describe_validation_error(exc)
        raise ConfigError(f"{source}: {message}") from None
    _check_tls(config.server.tls, source=source)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a YAML config file.  Raises :class:`ConfigError` naming the file and the bad key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return _convert({} if data is None else data, source=str(path))


_SECTIONS = ("scheduler", "executor", "store", "server", "logging")


def make_config(config: Config | str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Build a :class:`Config` from a Config, a YAML path or defaults, then apply ``overrides``.

    An override is a top-level key (``data_dir``) or the name of a key in any section
    (``gpus=[0, 1]`` sets ``scheduler.gpus``); a path may be a :class:`~pathlib.Path`.  Raises
    :class:`ConfigError` for an unknown name or a bad value.
    """
    base = (
        config
        if isinstance(config, Config)
        else (load_config(config) if config is not None else Config())
    )
    data: dict[str, Any] = msgspec.to_builtins(base)
    for key, raw in overrides.items():
        # A path may be given as one (``data_dir=Path("runs")``): the config holds its text.
        value = os.fspath(raw) if isinstance(raw, os.PathLike) else raw
        if key in data and key not in _SECTIONS:
            data[key] = value
            continue
        section = next((s for s in _SECTIONS if key in data[s]), None)
        if section is None:
            raise ConfigError(f"unknown setting {key!r}")
        data[section][key] = value
    return _convert(data, source="settings")


def gpu_inventory() -> dict[int, tuple[str, str]]:
    """The GPUs ``nvidia-smi`` lists: index -> (name, UUID); ``{}`` without it.  Blocks up to
    10 s."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[int, tuple[str, str]] = {}
    for line in out.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) >= 3 and fields[0].isdigit():
            found[int(fields[0])] = (fields[1], fields[2])
        elif fields and fields[0].isdigit():
            found[int(fields[0])] = ("", "")
    return found


def discover_gpus() -> list[int]:
    """GPU ids that ``nvidia-smi`` lists, or ``[]`` without it.  Blocks up to 10 s."""
    return sorted(gpu_inventory())


def machine_memory_mb() -> int:
    """Physical memory of this machine in MiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
