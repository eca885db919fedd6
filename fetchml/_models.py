"""The job model: what a user submits (:class:`JobSpec`), what the server tracks (:class:`Job`) and
what subscribers receive (:class:`JobEvent`).

These are msgspec structs: immutable, msgpack- and JSON-encodable, and validated on decode with
precise error paths.  The same structs serve the WebSocket (msgpack), HTTP (JSON), the store
(msgpack blobs) and the embedding API.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import re
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from .errors import InvalidRequestError, InvalidSpecError

__all__ = [
    "MAX_DATASETS",
    "TERMINAL_STATES",
    "DatasetName",
    "DatasetRef",
    "GitInfo",
    "Job",
    "JobEvent",
    "JobMatch",
    "JobSpec",
    "JobState",
    "Provenance",
    "Resources",
    "StatusReport",
    "check_name",
    "check_spec",
    "dataset_env_name",
    "decode_spec_json",
    "spec_problem",
    "surrogate_path",
    "text_problem",
    "validate_spec",
]

# Upper bounds far above any machine or cluster, low enough that the scheduler's arithmetic on
# them stays exact (it counts integer milli-cpus) and never overflows.
MAX_CPUS = 1_000_000
MAX_MEMORY_MB = 1 << 40
MAX_GPUS = 65_536
# Ten years: a timeout beyond it means "none", and would overflow a backend's integer seconds.
MAX_TIMEOUT_S = 10 * 365 * 86_400
# What exec accepts on Linux: one argument or environment string (MAX_ARG_STRLEN, with its NUL)
# and a path (PATH_MAX, with its NUL); the whole command and env together stay well under ARG_MAX.
MAX_ARG_BYTES = 131_071
MAX_PATH_BYTES = 4095
MAX_EXEC_BYTES = 1 << 20
MAX_DEPENDENCIES = 10_000
MAX_TAGS = 100

# 0 cpus is allowed (a job that only waits, as in Ray); negative is not.
Cpus = Annotated[float, msgspec.Meta(ge=0, le=MAX_CPUS)]
MemoryMb = Annotated[int, msgspec.Meta(ge=0, le=MAX_MEMORY_MB)]
Gpus = Annotated[int, msgspec.Meta(ge=0, le=MAX_GPUS)]
Priority = Annotated[int, msgspec.Meta(ge=1, le=10)]
# SQLite's INTEGER range: a larger id names no job and would overflow the store.
JobId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Name = Annotated[str, msgspec.Meta(max_length=200)]


class JobState(enum.StrEnum):
    """Where a job is in its life.  ``queued`` → ``running`` → a terminal state."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.LOST}
)


class Resources(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a job needs while it runs.

    ``memory_mb = 0`` means "not stated" and reserves nothing.
    """

    cpus: Cpus = 1.0
    memory_mb: MemoryMb = 0
    gpus: Gpus = 0


Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
# The research narrative of a job: a hypothesis, an intent, an expected outcome, an outcome.
Narrative = Annotated[str, msgspec.Meta(max_length=10_000)]
# A diff kept with the job; a larger one travels with the snapshot as a blob.
MAX_INLINE_DIFF = 64 * 1024


class GitInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The git state of the project a job's snapshot was made from, as the client saw it.

    ``remote`` is the ``origin`` URL without credentials; ``dirty`` says the work tree had
    changes against ``commit``; ``diff`` is ``git diff HEAD`` when it is at most
    :data:`MAX_INLINE_DIFF` bytes, else ``diff_sha256`` names the snapshot's ``git_diff``
    attachment that holds it.
    """

    commit: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    branch: Text | None = None
    remote: Text | None = None
    dirty: bool = False
    diff: Annotated[str, msgspec.Meta(max_length=MAX_INLINE_DIFF)] | None = None
    diff_sha256: Sha256 | None = None


class Provenance(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a job came from: the command line that queued it, the client's host and project
    folder, and the project's git state (None outside a repository)."""

    command_line: Annotated[list[Text], msgspec.Meta(max_length=1000)] = msgspec.field(
        default_factory=list
    )
    host: Name | None = None
    root: Text | None = None
    git: GitInfo | None = None


# A registered dataset's name, and a spec's reference to one: ``NAME`` (its latest version at
# submit) or ``NAME@VERSION``.
DATASET_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
DatasetName = Annotated[str, msgspec.Meta(pattern=f"^{DATASET_NAME}$")]
DatasetUse = Annotated[str, msgspec.Meta(pattern=f"^{DATASET_NAME}(@[1-9][0-9]{{0,8}})?$")]
MAX_DATASETS = 32


class DatasetRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A dataset as a job uses it: the registered version its spec's name resolved to at submit
    (where it lives and its hash; Fetch ML records datasets, it does not copy them)."""

    name: DatasetName
    version: Annotated[int, msgspec.Meta(ge=1, le=999_999_999)]
    uri: Text
    sha256: Sha256 | None = None

    @property
    def env_name(self) -> str:
        """The variable that gives the job the dataset's URI."""
        return dataset_env_name(self.name)


def dataset_env_name(name: str) -> str:
    """``FETCHML_DATASET_<NAME>``: upper case, every character but letters and digits ``_``."""
    return "FETCHML_DATASET_" + "".join(c if c.isalnum() else "_" for c in name.upper())


class JobSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A job as submitted.

    ``command`` is an argv list; a single string is accepted only with ``shell=True`` and then run
    by ``/bin/sh -c``.  ``priority`` runs 1 to 10, higher first.  With ``snapshot`` (a snapshot
    id) the job runs in a private working copy of that snapshot and ``cwd`` is a folder inside
    it (relative; the copy's root by default).  ``requeued_from`` names the job this one repeats.
    ``hypothesis``, ``intent`` and ``expected_outcome`` are the research narrative, kept with the
    run's metrics (its outcome is recorded after the run).  ``datasets`` names registered
    datasets (``NAME`` or ``NAME@VERSION``); the server resolves them at submit into
    ``dataset_refs`` (whatever a client put there is replaced), which the job gets as
    ``FETCHML_DATASET_<NAME>`` and its run manifest records.
    """

    command: list[str] | str
    name: Name | None = None
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    priority: Priority = 5
    resources: Resources = msgspec.field(default_factory=Resources)
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)] | None = None
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    depends_on: Annotated[list[JobId], msgspec.Meta(max_length=MAX_DEPENDENCIES)] = msgspec.field(
        default_factory=list
    )
    tags: Annotated[list[Name], msgspec.Meta(max_length=MAX_TAGS)] = msgspec.field(
        default_factory=list
    )
    experiment: Name | None = None
    snapshot: Sha256 | None = None
    provenance: Provenance | None = None
    requeued_from: JobId | None = None
    hypothesis: Narrative | None = None
    intent: Narrative | None = None
    expected_outcome: Narrative | None = None
    datasets: Annotated[list[DatasetUse], msgspec.Meta(max_length=MAX_DATASETS)] = msgspec.field(
        default_factory=list
    )
    dataset_refs: Annotated[list[DatasetRef], msgspec.Meta(max_length=MAX_DATASETS)] = (
        msgspec.field(default_factory=list)
    )

    @property
    def narrative(self) -> dict[str, str | None]:
        """The research narrative as tracking keeps it with the run."""
        return {
            "hypothesis": self.hypothesis,
            "intent": self.intent,
            "expected_outcome": self.expected_outcome,
        }

    def argv(self) -> list[str]:
        """The argv the executor starts (``/bin/sh -c`` for shell jobs)."""
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the server tracks it.  Replaced (never mutated) on every state change.

    ``seq`` is the sequence number of the event that announced this version of the job, so
    ``subscribe(job_id=..., since=job.seq)`` continues exactly after it.  ``attempts`` counts the
    runs started; ``requeues`` counts runs lost without an exit status and put back in the queue
    (they do not spend a retry).  ``cancel_requested`` marks a running job being stopped: it turns
    ``cancelled`` when its process has ended.
    """

    id: int
    user: str
    spec: JobSpec
    state: JobState
    seq: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    requeues: int = 0
    exit_code: int | None = None
    reason: str | None = None
    gpus: tuple[int, ...] = ()
    cancel_requested: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class JobMatch(msgspec.Struct, frozen=True, kw_only=True):
    """What a job listing keeps beyond owner and state: the jobs of ``experiment`` (exactly),
    with ``tag`` among their tags, whose name contains ``name`` (any case)."""

    experiment: str | None = None
    tag: str | None = None
    name: str | None = None

    @classmethod
    def of(cls, *, experiment: str | None, tag: str | None, name: str | None) -> JobMatch | None:
        """The match of the filters given, or None when none is (every job matches)."""
        if experiment is None and tag is None and not name:
            return None
        return cls(experiment=experiment, tag=tag, name=name.casefold() if name else None)

    def __call__(self, job: Job) -> bool:
        spec = job.spec
        if self.experiment is not None and spec.experiment != self.experiment:
            return False
        if self.tag is not None and self.tag not in spec.tags:
            return False
        return self.name is None or self.name in (spec.name or "").casefold()


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """Queue and resource summary at one instant (the ``status`` op and ``GET /status``).

    Job counts by state and per user, the CPUs, memory and GPUs the scheduler hands out (total
    and free; free may be negative for a while after a cluster shrank), and ``last_seq``, the
    newest committed event.  ``backend`` names the executor backend (``local``, ``ray``);
    ``backend_status`` is None while it works and says what is wrong otherwise (``ray cluster at
    … unreachable: …``).
    """

    counts: dict[str, int]
    running_by_user: dict[str, int]
    queued_by_user: dict[str, int]
    cpus_total: float
    cpus_free: float
    memory_mb_total: int
    memory_mb_free: int
    gpus_total: list[int]
    gpus_free: list[int]
    last_seq: int
    backend: str = "local"
    backend_status: str | None = None


class JobEvent(msgspec.Struct, frozen=True, kw_only=True, tag="job"):
    """A job changed state.  ``seq`` is store-assigned and increases monotonically."""

    seq: int
    ts: float
    job: Job


_spec_decoder = msgspec.json.Decoder(JobSpec)


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?P<what>missing required|contains unknown) field `(?P<name>[^`]*)`$")


def describe_validation_error(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """Split a msgspec validation error into (field path, message that starts with the field).

    msgspec reports ``Expected `int` >= 1 - at `$.priority``` or ``Object contains unknown field
    `foo` - at `$.resources```; callers want ``priority`` / ``resources.foo`` as the field.
    """
    text = str(exc)
    match = _AT.search(text)
    path = match.group("path").lstrip(".") if match else ""
    detail = text[: match.start()] if match else text
    named = _NAMED.match(detail)
    if named:
        name = named.group("name")
        path = f"{path}.{name}" if path else name
        what = "required field is missing" if named.group("what") == "missing required" else None
        if what is None:
            what = "unknown field" if name else "unknown field '' (an empty name)"
        return path, f"{path}: {what}" if path else what
    field = path or None
    return field, (f"{field}: {detail}" if field else detail)


def _invalid(exc: msgspec.ValidationError) -> InvalidSpecError:
    field, message = describe_validation_error(exc)
    return InvalidSpecError(message, field=field)


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored, sent or passed to the OS as text, or None if it can.

    Refused: a lone surrogate (not Unicode: UTF-8 cannot encode it, so neither the store nor the
    wire can carry it) and a NUL byte (exec, the environment and paths end a string there).
    """
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        return f"not valid Unicode (a lone surrogate at index {exc.start})"
    if "\0" in value:
        return f"contains a NUL byte (at index {value.index(chr(0))})"
    return None


def check_name(value: object, field: str, *, max_length: int = 200) -> str:
    """``value`` as a label (a user name, a tag): a non-empty string of at most ``max_length``
    characters that is valid text.  Raises :class:`InvalidRequestError` naming ``field``."""
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{field}: must be a non-empty string", field=field)
    problem = text_problem(value)
    if problem is None and len(value) > max_length:
        problem = f"longer than {max_length} characters"
    if problem is not None:
        raise InvalidRequestError(f"{field}: {problem}", field=field)
    return value


def _exec_strings(spec: JobSpec) -> list[tuple[str, str, int]]:
    """(field, text, byte limit) of every string of ``spec`` that reaches exec or a path."""
    command = spec.command
    found: list[tuple[str, str, int]] = (
        [("command", command, MAX_ARG_BYTES)]
        if isinstance(command, str)
        else [(f"command[{i}]", arg, MAX_ARG_BYTES) for i, arg in enumerate(command)]
    )
    for key, value in spec.env.items():
        # A key that is not clean text cannot name the field either.
        where = f"env.{key}" if text_problem(key) is None else "env"
        found.append((where, key, MAX_ARG_BYTES))
        found.append((where, value, MAX_ARG_BYTES - len(key.encode(errors="replace")) - 1))
    if spec.cwd is not None:
        found.append(("cwd", spec.cwd, MAX_PATH_BYTES))
    return found


def _plainly_fine(spec: JobSpec) -> bool:
    """Whether every string of ``spec`` is plain ASCII without a NUL and within the sizes exec
    accepts: what nearly every spec is, told without building any field name."""
    command = spec.command
    total = 0
    for text in [command] if isinstance(command, str) else command:
        if not text.isascii() or "\0" in text or len(text) > MAX_ARG_BYTES:
            return False
        total += len(text) + 1
    for key, value in spec.env.items():
        entry = len(key) + 1 + len(value)
        if not (key + value).isascii() or "\0" in key or "\0" in value or entry > MAX_ARG_BYTES:
            return False
        total += entry + 1
    if spec.provenance is not None:
        return False  # its strings are checked one by one
    labels = [spec.name or "", spec.experiment or "", spec.cwd or "", *spec.tags]
    if any(not label.isascii() or "\0" in label for label in labels):
        return False
    return len(spec.cwd or "") <= MAX_PATH_BYTES and total <= MAX_EXEC_BYTES


def spec_problem(spec: JobSpec) -> tuple[str, str] | None:
    """(field, message) for the first part of ``spec`` that the OS or the store would refuse,
    or None.  The message starts with the field."""
    if _plainly_fine(spec):
        return None
    total = 0
    for field, text, limit in _exec_strings(spec):
        problem = text_problem(text)
        if problem is None:
            size = len(text.encode())
            total += size + 1
            if size > limit:
                problem = f"longer than {limit} bytes (what exec accepts)"
        if problem is not None:
            return field, f"{field}: {problem}"
    if total > MAX_EXEC_BYTES:
        return "command", f"command: with env, longer than {MAX_EXEC_BYTES} bytes in all"
    labels = [("name", spec.name), ("experiment", spec.experiment)]
    labels += [(f"tags[{i}]", tag) for i, tag in enumerate(spec.tags)]
    labels += [(key, getattr(spec, key)) for key in ("hypothesis", "intent", "expected_outcome")]
    labels += _provenance_strings(spec.provenance)
    for field, label in labels:
        problem = None if label is None else text_problem(label)
        if problem is not None:
            return field, f"{field}: {problem}"
    return None


def _provenance_strings(provenance: Provenance | None) -> list[tuple[str, str | None]]:
    if provenance is None:
        return []
    found: list[tuple[str, str | None]] = [
        (f"provenance.command_line[{i}]", arg) for i, arg in enumerate(provenance.command_line)
    ]
    found += [("provenance.host", provenance.host), ("provenance.root", provenance.root)]
    git = provenance.git
    if git is not None:
        found += [
            (f"provenance.git.{name}", getattr(git, name))
            for name in ("commit", "branch", "remote", "diff")
        ]
    return found


def check_spec(spec: JobSpec) -> JobSpec:
    """Check what a schema cannot say about a type-checked spec (one msgspec decoded, or read
    from the store): a usable command, strings the OS accepts, env names, no repeated
    dependency.  Returns ``spec``.  Raises :class:`InvalidSpecError` naming the field."""
    command = spec.command
    if isinstance(command, str):
        if not spec.shell:
            raise InvalidSpecError(
                "command: a single string needs shell: true; otherwise give an argv list",
                field="command",
            )
        if not command.strip():
            raise InvalidSpecError("command: must not be empty", field="command")
    elif not command or not command[0]:
        raise InvalidSpecError("command: must be a non-empty argv list", field="command")
    problem = spec_problem(spec)
    if problem is not None:
        raise InvalidSpecError(problem[1], field=problem[0])
    for key in spec.env:
        if not key or "=" in key:
            field = f"env.{key}" if key else "env"
            raise InvalidSpecError(f"env: invalid variable name {key!r}", field=field)
    if len(set(spec.depends_on)) != len(spec.depends_on):
        raise InvalidSpecError("depends_on: lists a job twice", field="depends_on")
    names = [dataset_env_name(use.split("@")[0]) for use in spec.datasets]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise InvalidSpecError(
                f"datasets[{index}]: names a dataset twice (or one whose variable {name} "
                "another already sets)",
                field=f"datasets[{index}]",
            )
    if spec.snapshot is not None and spec.cwd is not None:
        _check_snapshot_cwd(spec.cwd)
    return spec


def _check_snapshot_cwd(cwd: str) -> None:
    """With a snapshot, ``cwd`` is a folder inside the working copy: relative, normalised."""
    parts = cwd.split("/")
    if cwd.startswith("/") or (any(part in ("", ".", "..") for part in parts) and cwd != "."):
        raise InvalidSpecError(
            "cwd: with a snapshot, a relative folder inside it (no .., not absolute)",
            field="cwd",
        )


def validate_spec(spec: JobSpec | Mapping[str, Any]) -> JobSpec:
    """Validate ``spec`` (a :class:`JobSpec` or a plain mapping) and return a checked JobSpec.

    Struct constructors do not check constraints, so a JobSpec built in Python is re-validated
    through msgspec as if it had been decoded.  Raises :class:`InvalidSpecError` naming the field.
    """
    try:
        data = _builtins_of(spec) if isinstance(spec, JobSpec) else spec
        checked = msgspec.convert(data, JobSpec, strict=True)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except UnicodeError:
        # msgspec names no path for a string it cannot encode: find it.
        path = surrogate_path(spec if isinstance(spec, Mapping) else {}, "")
        field = path or None
        raise InvalidSpecError(
            f"{path or 'spec'}: not valid Unicode (a lone surrogate)", field=field
        ) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # to_builtins of a struct holding values of no JSON-like type.
        raise InvalidSpecError(f"not a job spec: {exc}") from None
    return check_spec(checked)


# Left as they are by to_builtins (which would turn bytes into base64 text and a datetime into
# ISO text), so that conversion refuses them where a string is expected.
_KEPT_AS_IS = (
    bytes,
    bytearray,
    memoryview,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
)


def _builtins_of(spec: JobSpec) -> dict[str, Any]:
    """A JobSpec built in Python as plain data, field by field, so that a value of no JSON-like
    type (or nested too deep) is refused naming its field.  Raises :class:`InvalidSpecError`."""
    try:
        whole: dict[str, Any] = msgspec.to_builtins(spec, builtin_types=_KEPT_AS_IS)
    except (TypeError, ValueError, OverflowError, RecursionError):
        pass  # find the field, below
    else:
        return whole
    data: dict[str, Any] = {}
    for name in JobSpec.__struct_fields__:  # no renamed fields: the names are the wire's
        try:
            value = msgspec.to_builtins(getattr(spec, name), builtin_types=_KEPT_AS_IS)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            if isinstance(exc, UnicodeEncodeError):
                problem = "not valid Unicode (a lone surrogate)"
            elif isinstance(exc, RecursionError):
                problem = "nested too deeply"
            else:
                problem = f"not a valid value ({exc})"
            raise InvalidSpecError(f"{name}: {problem}", field=name) from None
        data[name] = value
    return data


def decode_spec_json(data: bytes) -> JobSpec:
    """Decode and validate a JSON job spec (an HTTP body).  Raises :class:`InvalidSpecError`
    naming the field, or :class:`InvalidRequestError` (field ``body``) for text that is not
    JSON, saying where it breaks."""
    try:
        spec = _spec_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError itself for some strings that are not UTF-8.
        raise json_error(data, exc) from None
    except RecursionError:
        raise InvalidRequestError("body: nested too deeply", field="body") from None
    return check_spec(spec)


def json_error(data: bytes, exc: msgspec.DecodeError | UnicodeDecodeError) -> InvalidRequestError:
    """The error for ``data``, which msgspec could not decode as JSON: what is wrong, and where.

    msgspec reports a lone surrogate escape (``"\\ud800"``) as truncated input; the standard
    library's decoder accepts those, which lets this name the string's field (as an
    :class:`InvalidSpecError`).  Other faults are errors of the whole ``body``.
    """
    try:
        text = data.decode()
    except UnicodeDecodeError as bad:
        return InvalidRequestError(f"body: not UTF-8 (byte {bad.start})", field="body")
    import json  # only for this error path: the standard library's decoder is the lenient one

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return InvalidRequestError(f"body: invalid JSON: {exc}", field="body")
    path = surrogate_path(value, "")
    if path is None:
        return InvalidRequestError(f"body: invalid JSON: {exc}", field="body")
    # The body is a spec with a string (or a field name) that is not Unicode.
    field = path or None
    where = field or "a field name"
    return InvalidSpecError(f"{where}: not valid Unicode (a lone surrogate)", field=field)


def surrogate_path(value: object, path: str = "", depth: int = 0) -> str | None:
    """The path of the first string (or key) in ``value`` that is not valid Unicode (a key's
    is the path of its mapping), looking at most 100 levels deep."""
    if isinstance(value, str):
        return path if text_problem(value.replace("\0", "")) is not None else None
    if depth > 100:
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = surrogate_path(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                continue
            if text_problem(key.replace("\0", "")) is not None:
                return path
            found = surrogate_path(item, f"{path}.{key}" if path else key, depth + 1)
            if found is not None:
                return found
    return None
