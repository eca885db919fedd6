"""Hypothesis strategies for hostile job specs, request bodies and WebSocket frames.

Values are JSON-like trees (None, bool, int, float, str, list, dict) that may hold two markers
for what is too big to keep as a plain object: :class:`Long` (a string of 100 K characters and
more) and :class:`Deep` (nesting 50 to 2000 levels deep).  Deep values are never built as Python
objects on the wire side: :func:`to_json` and :func:`to_msgpack` write them directly (the stdlib
encoders, ``repr`` and hypothesis's own reporting would hit the recursion limit).
:func:`materialize` builds the real object, iteratively, for the embedding API.

Specs are harmless to run (see :func:`harmless`): the first argv item gets a ``fz-`` prefix (no
shell builtin, no path: with the server's ``PATH`` on an empty folder it is never found), a shell
command string starts with ``exit 0`` and its own line, and env never sets ``PATH`` or the
loader's variables.  The hostile parts (NUL bytes, lone surrogates, sizes, types) are kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

# The server's default limits (server.max_body_bytes / max_frame_bytes).
MAX_BODY = 1 << 20
MAX_FRAME = 1 << 20

FIELDS = (
    "command",
    "name",
    "shell",
    "cwd",
    "env",
    "priority",
    "resources",
    "timeout_s",
    "max_retries",
    "depends_on",
    "tags",
    "experiment",
    "datasets",
    "dataset_refs",
)
RESOURCE_FIELDS = ("cpus", "memory_mb", "gpus")
# Ops of the WebSocket protocol, but ``auth``: a failed auth op closes the connection (4001).
WS_OPS = ("whoami", "submit", "get", "list", "cancel", "status", "subscribe", "unsubscribe")
WS_ARGS = (
    "job_id",
    "spec",
    "user",
    "state",
    "limit",
    "before",
    "since",
    "logs",
    "offset",
    "metrics",
    "batch",
    "sub",
)
# Error codes of a client's mistake (HTTP 4xx); anything else for a hostile input is a bug.
CLIENT_CODES = frozenset({"invalid_request", "invalid_spec", "not_found", "conflict", "forbidden"})
NORMAL_JOB: dict[str, Any] = {"command": ["/bin/true"]}


# ---- markers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Long:
    """``prefix + char * count``: a very long string, kept short in reports."""

    char: str
    count: int
    prefix: str = ""

    def text(self) -> str:
        return self.prefix + self.char * self.count


@dataclass(frozen=True)
class Deep:
    """``leaf`` inside ``depth`` lists (``[[[leaf]]]``) or maps (``{"a": {"a": leaf}}``)."""

    kind: Literal["list", "dict"]
    depth: int
    leaf: Any


def materialize(value: Any) -> Any:
    """The plain Python object a marker tree stands for (Deep built without recursion)."""
    if isinstance(value, Long):
        return value.text()
    if isinstance(value, Deep):
        built = materialize(value.leaf)
        for _ in range(value.depth):
            built = [built] if value.kind == "list" else {"a": built}
        return built
    if isinstance(value, list):
        return [materialize(item) for item in value]
    if isinstance(value, dict):
        return {materialize(k): materialize(v) for k, v in value.items()}
    return value


def leaves(value: Any) -> Iterator[Any]:
    """Every scalar of a marker tree, dict keys included (a Long as its text's first char)."""
    if isinstance(value, Long):
        yield value.prefix + value.char
    elif isinstance(value, Deep):
        yield from leaves(value.leaf)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(key)
            yield from leaves(item)
    else:
        yield value


def has_surrogate(value: Any) -> bool:
    return any(isinstance(x, str) and _bad_unicode(x) for x in leaves(value))


def has_nonfinite(value: Any) -> bool:
    return any(isinstance(x, float) and not math.isfinite(x) for x in leaves(value))


def has_deep(value: Any) -> bool:
    if isinstance(value, Deep):
        return True
    if isinstance(value, list):
        return any(has_deep(item) for item in value)
    if isinstance(value, dict):
        return any(has_deep(k) or has_deep(v) for k, v in value.items())
    return False


def msgpack_lossy(value: Any) -> bool:
    """Whether msgpack cannot carry ``value`` as it is (ints beyond 64 bits, lone surrogates)."""
    return has_surrogate(value) or any(
        isinstance(x, int) and not isinstance(x, bool) and not -(2**63) <= x < 2**64
        for x in leaves(value)
    )


def _bad_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


# ---- encoders -----------------------------------------------------------------------------


def to_json(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON as Python's ``json.dumps`` writes it (NaN, Infinity; big ints in full), markers
    included.  With ``ascii_only`` lone surrogates become ``\\ud800`` escapes; without it they
    are written as raw (invalid) UTF-8 bytes."""
    text = "".join(_json_parts(value, ascii_only))
    return text.encode("utf-8", "surrogatepass")


def _json_parts(value: Any, ascii_only: bool) -> Iterator[str]:
    if isinstance(value, Deep):
        yield ("[" if value.kind == "list" else '{"a": ') * value.depth
        yield from _json_parts(value.leaf, ascii_only)
        yield ("]" if value.kind == "list" else "}") * value.depth
    elif isinstance(value, Long):
        yield json.dumps(value.text(), ensure_ascii=ascii_only)
    elif isinstance(value, list):
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ", "
            yield from _json_parts(item, ascii_only)
        yield "]"
    elif isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            if index:
                yield ", "
            name = (
                key.text() if isinstance(key, Long) else key if isinstance(key, str) else str(key)
            )
            yield json.dumps(name, ensure_ascii=ascii_only)
            yield ": "
            yield from _json_parts(item, ascii_only)
        yield "}"
    elif isinstance(value, bool) or value is None:
        yield json.dumps(value)
    elif isinstance(value, int):
        yield str(value)
    elif isinstance(value, float):
        yield json.dumps(value)
    elif isinstance(value, str):
        yield json.dumps(value, ensure_ascii=ascii_only)
    else:
        raise TypeError(f"not JSON-like: {value!r}")


def to_msgpack(value: Any) -> bytes:
    """msgpack, markers included.  A lone surrogate is written as its raw (invalid) UTF-8 bytes
    in a msgpack str; an int msgpack cannot hold is written as the nearest float64 (or inf)."""
    out: list[bytes] = []
    _pack(value, out)
    return b"".join(out)


def _header(n: int, fix: int, fix_max: int, codes: tuple[int, ...], sizes: str) -> bytes:
    if n < fix_max:
        return bytes([fix | n])
    for code, size in zip(codes, sizes, strict=True):
        if n < 1 << (8 * struct.calcsize(">" + size)):
            return bytes([code]) + struct.pack(">" + size, n)
    raise ValueError(f"too long for msgpack: {n}")


def _pack(value: Any, out: list[bytes]) -> None:
    if isinstance(value, Deep):
        header = b"\x91" if value.kind == "list" else b"\x81\xa1a"
        out.append(header * value.depth)
        _pack(value.leaf, out)
    elif isinstance(value, Long):
        _pack(value.text(), out)
    elif value is None or isinstance(value, bool):
        out.append(msgpack.packb(value))
    elif isinstance(value, int):
        if -(2**63) <= value < 2**64:
            out.append(msgpack.packb(value))
        else:
            _pack(math.copysign(math.inf, value) if abs(value) > 2**1023 else float(value), out)
    elif isinstance(value, float):
        out.append(b"\xcb" + struct.pack(">d", value))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        out.append(_header(len(data), 0xA0, 32, (0xD9, 0xDA, 0xDB), "BHI") + data)
    elif isinstance(value, bytes):
        out.append(msgpack.packb(value, use_bin_type=True))
    elif isinstance(value, list):
        out.append(_header(len(value), 0x90, 16, (0xDC, 0xDD), "HI"))
        for item in value:
            _pack(item, out)
    elif isinstance(value, dict):
        out.append(_header(len(value), 0x80, 16, (0xDE, 0xDF), "HI"))
        for key, item in value.items():
            _pack(key, out)
            _pack(item, out)
    else:
        raise TypeError(f"not msgpack-able: {value!r}")


# ---- harmless -----------------------------------------------------------------------------

_UNSAFE_ENV = ("PATH", "ENV", "BASH_ENV", "SHELL", "IFS")


def _harmless_command(command: Any) -> Any:
    if isinstance(command, list) and command and isinstance(command[0], str | Long):
        first = command[0]
        text = first.text() if isinstance(first, Long) else first
        if text:
            return ["fz-" + text.replace("/", "_"), *command[1:]]
    if isinstance(command, Long) and command.text().strip():
        return Long(command.char, command.count, "exit 0\n" + command.prefix)
    if isinstance(command, str) and command.strip():
        return "exit 0\n" + command
    return command


def harmless(spec: Any) -> Any:
    """``spec`` with its command made one that never runs anything (see the module doc)."""
    if not isinstance(spec, dict):
        return spec
    safe = dict(spec)
    if "command" in safe:
        safe["command"] = _harmless_command(safe["command"])
    env = safe.get("env")
    if isinstance(env, dict):
        safe["env"] = {
            k: v
            for k, v in env.items()
            if not (isinstance(k, str) and (k in _UNSAFE_ENV or k.startswith("LD_")))
        }
    return safe


# ---- scalars ------------------------------------------------------------------------------

SPECIAL_CHARS = (
    "\x00",
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\udc80",
    "\ud83d",
    "\ufffe",
    "\uffff",
    "\U0010ffff",
    "\u202e",
    "\x7f",
    "\n",
    "\r",
    "=",
    "/",
    "\\",
    '"',
    "é",
    "\U0001f600",
)
SPECIAL_TEXTS = (
    "",
    " ",
    "\x00",
    "\ud800",
    "\udfff",
    "a\x00b",
    "a\ud800b",
    "\ud83d\ude00",  # a surrogate pair as two lone surrogates in Python
    "\udce9",  # what surrogateescape makes of the byte 0xe9
    "=",
    "A=B",
    ".",
    "/",
    "..",
    "\t\n",
)

any_char = st.characters(exclude_categories=())  # every code point, surrogates included


def _inject(base: str, special: str, at: int) -> str:
    at = at % (len(base) + 1)
    return base[:at] + special + base[at:]


texts: st.SearchStrategy[str] = st.one_of(
    st.text(any_char, max_size=24),
    st.builds(
        _inject, st.text(any_char, max_size=16), st.sampled_from(SPECIAL_CHARS), st.integers(0, 16)
    ),
    st.sampled_from(SPECIAL_TEXTS),
)

_under_limits = st.builds(
    Long,
    st.sampled_from(("a", "é", "\U0001f600", "\x00", "\ud800", " ")),
    st.integers(100_000, 160_000),
    st.sampled_from(("", "x", "\x00")),
)
long_texts: st.SearchStrategy[Long] = st.one_of(
    _under_limits,
    _under_limits,
    _under_limits,
    # over the 1 MiB body and frame limits
    st.builds(Long, st.just("a"), st.integers(MAX_BODY + 1, MAX_BODY + 70_000)),
)

SPECIAL_NUMBERS: tuple[int | float, ...] = (
    0,
    -0.0,
    1,
    -1,
    0.5,
    1e-300,
    5e-324,
    -5e-324,
    1e308,
    -1e308,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
    11,
    10**6,
    1e6,
    1e16,
    2**31,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    2**70,
    10**20,
    -(10**20),
    10**100,
)

numbers: st.SearchStrategy[int | float] = st.one_of(
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(),
    st.floats(),
    st.integers(min_value=-(2**200), max_value=2**200),
)

scalars: st.SearchStrategy[Any] = st.one_of(st.none(), st.booleans(), numbers, texts)

DEPTHS = (50, 100, 127, 128, 129, 255, 256, 257, 500, 999, 1000, 1001, 1023, 1024, 1025, 2000)
deep_values: st.SearchStrategy[Deep] = st.builds(
    Deep,
    st.sampled_from(("list", "dict")),
    st.one_of(st.sampled_from(DEPTHS), st.integers(50, 2000)),
    st.one_of(st.just("x"), scalars),
)


def wide_dict(size: int, value: Any) -> dict[str, Any]:
    return {f"K{i}": value for i in range(size)}


wide_values: st.SearchStrategy[dict[str, Any]] = st.builds(
    wide_dict, st.integers(1000, 1500), st.one_of(st.just("v"), scalars)
)

json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(texts, kids, max_size=4)),
    max_leaves=12,
)

# Anything a client could send where a value goes: small trees, and the big markers.
any_values: st.SearchStrategy[Any] = st.one_of(
    json_values, json_values, json_values, deep_values, long_texts, wide_values
)

# Strings where strings go (and what exec, paths or the store would choke on).
hostile_texts: st.SearchStrategy[Any] = st.one_of(texts, texts, texts, long_texts)


# ---- job specs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A spec to submit; ``top`` is the top-level field holding its one hostile value (an error
    for it must name a field under ``top``), or None for a spec that is random throughout."""

    spec: Any
    top: str | None

    @property
    def deep(self) -> bool:
        return has_deep(self.spec)


_label = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12)

valid_specs: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"command": st.just(["true"])},
    optional={
        "name": _label,
        "tags": st.lists(_label, max_size=3),
        "experiment": _label,
        "priority": st.integers(1, 10),
        "resources": st.fixed_dictionaries(
            {}, optional={"cpus": st.sampled_from([0, 0.5, 1]), "memory_mb": st.integers(0, 100)}
        ),
        "env": st.dictionaries(st.sampled_from(["FZ_A", "FZ_B", "SEED"]), _label, max_size=2),
        "timeout_s": st.floats(1, 100),
        "max_retries": st.integers(0, 2),
    },
)


def _put(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``spec`` with ``value`` at ``path`` (a path of map keys)."""
    out = dict(spec)
    head, rest = path[0], path[1:]
    if not rest:
        out[head] = value
        return out
    inner = out.get(head)
    out[head] = _put(dict(inner) if isinstance(inner, dict) else {}, rest, value)
    return out


# (top-level field, how to place the value, the values to try there)
_STR_OR_ANY = st.one_of(hostile_texts, hostile_texts, any_values)
_NUMBER_OR_ANY = st.one_of(numbers, numbers, numbers, any_values)

TARGETS: dict[str, st.SearchStrategy[Any]] = {
    "command": st.one_of(any_values, st.lists(hostile_texts, max_size=3)),
    "command[0]": _STR_OR_ANY,
    "command[1]": _STR_OR_ANY,
    "command:shell": hostile_texts,
    "shell": any_values,
    "name": _STR_OR_ANY,
    "experiment": _STR_OR_ANY,
    "tags": st.one_of(any_values, st.lists(hostile_texts, max_size=3)),
    "tags[0]": _STR_OR_ANY,
    "cwd": _STR_OR_ANY,
    "env": st.one_of(any_values, wide_values, st.dictionaries(texts, hostile_texts, max_size=3)),
    "env:value": _STR_OR_ANY,
    "env:key": hostile_texts,
    "priority": _NUMBER_OR_ANY,
    "max_retries": _NUMBER_OR_ANY,
    "timeout_s": _NUMBER_OR_ANY,
    "resources": any_values,
    "resources.cpus": _NUMBER_OR_ANY,
    "resources.memory_mb": _NUMBER_OR_ANY,
    "resources.gpus": _NUMBER_OR_ANY,
    "resources:unknown": any_values,
    "depends_on": st.one_of(
        any_values, st.lists(numbers, max_size=4), st.builds(lambda n: [1] * n, st.integers(2, 5))
    ),
    "depends_on[0]": _NUMBER_OR_ANY,
    "unknown": any_values,
}


def place(base: dict[str, Any], target: str, value: Any, key: str = "FZ_X") -> Case:
    """``base`` with the hostile ``value`` put where ``target`` says (``key`` names an unknown
    field or an env variable where the target needs one); the result is made :func:`harmless`."""
    top = target.split("[")[0].split(".")[0].split(":")[0]
    if target == "command:shell":
        spec = {**base, "command": value, "shell": True}
    elif target == "env:value":
        spec = _put(base, ("env", key), value)
    elif target == "env:key":
        spec = {**base, "env": {**base.get("env", {}), value: "x"}}
        if isinstance(value, Long):
            spec["env"] = {value.text(): "x"}
    elif target == "resources:unknown":
        spec = _put(base, ("resources", key), value)
    elif target == "unknown":
        spec = {**base, key: value}
        top = key
    elif target.endswith(("[0]", "[1]")):
        name, index = target[:-3], int(target[-2])
        items = list(base.get(name, ["fz-true"] if name == "command" else []))
        while len(items) <= index:
            items.append("fz-arg")
        items[index] = value
        spec = {**base, name: items}
    elif "." in target:
        spec = _put(base, tuple(target.split(".")), value)
    else:
        spec = {**base, target: value}
    return Case(harmless(spec), top)


_unknown_keys = texts.filter(lambda k: k not in FIELDS)


@st.composite
def hostile_cases(draw: st.DrawFn) -> Case:
    """A valid spec with one hostile field."""
    base = draw(valid_specs)
    target = draw(st.sampled_from(sorted(TARGETS)))
    value = draw(TARGETS[target])
    key = draw(_unknown_keys) if target in ("unknown", "resources:unknown") else "FZ_X"
    return place(base, target, value, key)


random_specs: st.SearchStrategy[Case] = st.builds(
    lambda spec: Case(harmless(spec), None),
    st.one_of(
        any_values,
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), texts), any_values, max_size=6),
    ),
)

# What the property tests submit: mostly one hostile field, sometimes anything at all.
cases: st.SearchStrategy[Case] = st.one_of(hostile_cases(), hostile_cases(), random_specs)


# ---- the known crashers, kept as explicit regression tests ---------------------------------


@dataclass(frozen=True)
class Regression:
    """A spec that once failed.  ``refused``: it must be refused (an invalid_spec error), and
    ``field`` names the field the error must name (None: any field, or none).  Specs that are
    valid, or where either answer is right, have ``refused`` False."""

    spec: Any
    field: str | None
    refused: bool = True


def _spec(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = harmless({"command": ["true"], **fields})
    return spec


def _resources(**values: Any) -> dict[str, Any]:
    return _spec(resources=values)


BAD_CHARS = {"nul": "\x00", "surrogate": "\ud800", "low-surrogate": "\udc80"}

REGRESSIONS: dict[str, Regression] = {}
for _name, _char in BAD_CHARS.items():
    REGRESSIONS |= {
        f"{_name} in argv[0]": Regression(_spec(command=[f"ec{_char}ho", "a"]), "command[0]"),
        f"{_name} in argv item": Regression(_spec(command=["echo", f"a{_char}b"]), "command[1]"),
        f"{_name} in env value": Regression(_spec(env={"FZ_A": f"a{_char}b"}), "env"),
        f"{_name} in env key": Regression(_spec(env={f"FZ{_char}A": "x"}), "env"),
        f"{_name} in cwd": Regression(_spec(cwd=f"/tmp/a{_char}b"), "cwd"),
        f"{_name} in shell command": Regression(
            _spec(command=f"echo a{_char}b", shell=True), "command"
        ),
        f"{_name} in name": Regression(_spec(name=f"a{_char}b"), "name"),
        f"{_name} in tags": Regression(_spec(tags=["ok", f"a{_char}b"]), "tags[1]"),
        f"{_name} in experiment": Regression(_spec(experiment=f"a{_char}b"), "experiment"),
        f"{_name} in an unknown key": Regression(_spec(**{f"k{_char}": 1}), None),
    }
REGRESSIONS |= {
    "cpus 1e308": Regression(_resources(cpus=1e308), "resources.cpus"),
    "cpus inf": Regression(_resources(cpus=math.inf), "resources.cpus"),
    "cpus nan": Regression(_resources(cpus=math.nan), "resources.cpus"),
    "cpus -1": Regression(_resources(cpus=-1), "resources.cpus"),
    "cpus 1e-300": Regression(_resources(cpus=1e-300), None, refused=False),
    "cpus 5e-324": Regression(_resources(cpus=5e-324), None, refused=False),
    "memory_mb 2**63": Regression(_resources(memory_mb=2**63), "resources.memory_mb"),
    "memory_mb 2**64": Regression(_resources(memory_mb=2**64), "resources.memory_mb"),
    "gpus 10**6": Regression(_resources(gpus=10**6), "resources.gpus"),
    "timeout_s 1e308": Regression(_spec(timeout_s=1e308), "timeout_s"),
    "timeout_s inf": Regression(_spec(timeout_s=math.inf), "timeout_s"),
    "timeout_s nan": Regression(_spec(timeout_s=math.nan), "timeout_s"),
    "timeout_s 0": Regression(_spec(timeout_s=0), "timeout_s"),
    "timeout_s -1": Regression(_spec(timeout_s=-1), "timeout_s"),
    "max_retries 10**20": Regression(_spec(max_retries=10**20), "max_retries"),
    "priority 0": Regression(_spec(priority=0), "priority"),
    "priority 11": Regression(_spec(priority=11), "priority"),
    "priority 2**70": Regression(_spec(priority=2**70), "priority"),
    "depends_on [0]": Regression(_spec(depends_on=[0]), "depends_on[0]"),
    "depends_on [2**63]": Regression(_spec(depends_on=[2**63]), "depends_on[0]"),
    "depends_on [1]*100000": Regression(_spec(depends_on=[1] * 100_000), "depends_on"),
    "deep nesting in command": Regression(_spec(command=Deep("list", 2000, "x")), "command"),
    "deep map in command": Regression(_spec(command=Deep("dict", 2000, "x")), "command"),
    "deep nesting in tags": Regression(_spec(tags=Deep("list", 1000, "x")), "tags"),
    "1000-key env": Regression(_spec(env=wide_dict(1000, "v")), None, refused=False),
    # found by the properties
    "an empty unknown key": Regression(_spec(**{"": None}), ""),
    "an empty env key": Regression(_spec(env={"": "x"}), "env"),
    "a lone surrogate key in resources": Regression(_resources(**{"\ud800": None}), "resources"),
    "a spec that is a list 50 deep around a lone surrogate": Regression(
        Deep("list", 50, "\ud800"), None
    ),
    "argv item of 200 KB": Regression(_spec(command=["echo", Long("a", 200_000)]), "command[1]"),
}


# ---- wire-level strategies ----------------------------------------------------------------

SPECIAL_IDS: tuple[Any, ...] = (
    0,
    1,
    2**53,
    2**53 + 1,
    -1,
    2**63,
    2**64 - 1,
    2**64,
    2**70,
    1.0,
    1.5,
    math.nan,
    True,
    False,
    None,
    "1",
    [],
    {},
)
request_ids: st.SearchStrategy[Any] = st.one_of(
    st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from(SPECIAL_IDS), scalars
)


def usable_id(rid: Any) -> bool:
    """Whether the server can echo ``rid`` as ``re`` (the protocol's ids: 0 to 2**53)."""
    return isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= 2**53


@st.composite
def random_frames(draw: st.DrawFn) -> Any:
    """A frame of any shape: a map with a random or real op, random id and arguments, or
    something that is not a map at all."""
    if draw(st.integers(0, 5)) == 0:
        return draw(any_values)
    frame: dict[Any, Any] = {}
    if draw(st.integers(0, 9)):
        frame["op"] = draw(st.one_of(st.sampled_from(WS_OPS), st.sampled_from(WS_OPS), any_values))
    if draw(st.integers(0, 9)):
        frame["id"] = draw(request_ids)
    for name in draw(st.lists(st.sampled_from(WS_ARGS), max_size=3, unique=True)):
        frame[name] = draw(cases).spec if name == "spec" else draw(st.one_of(scalars, any_values))
    if draw(st.integers(0, 9)) == 0:
        frame[draw(texts)] = draw(scalars)
    return frame


raw_binary_frames: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        (
            b"",
            b"\xc1",  # never used in msgpack
            b"\xdd\xff\xff\xff\xff",  # an array that claims 4 G items
            b"\xdf\xff\xff\xff\xff",  # a map that claims 4 G pairs
            b"\xdb\xff\xff\xff\xff",  # a str that claims 4 GB
            b"\x82\xa2op\xa6submit\xa2id\x01",  # a map one pair short
            b"\x83\xa2op\xa6submit\xa2id\x01\xa4spec\xd4\x01\x00",  # an ext type as the spec
            b"\x82\xa2op\xa6whoami\xa2id\xc7\x00\xff",  # ext type -1 (timestamp), empty
        )
    ),
)

raw_text_frames: st.SearchStrategy[str] = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=64),
    st.sampled_from(
        (
            "",
            "{",
            '{"op": "submit", "id": 1, "spec": {"command": ["a"]}',
            '{"op": "whoami", "id": 1}garbage',
            '{"op": "whoami", "id": 1e400}',
            '{"op": "whoami", "id": 1, "id": 2}',
            '{"op": "whoami", "id": NaN}',
            '{"op": "whoami", "id": -0}',
            '{"op": "whoami", "id": 99999999999999999999999999999}',
            '"\\ud800"',
            '{"op": "\\ud800", "id": 1}',
            '{"\\u0000": 1, "op": "whoami", "id": 1}',
            "\ufeff" + '{"op": "whoami", "id": 1}',
        )
    ),
)

RAW_BODIES: tuple[bytes, ...] = (
    b"",
    b"null",
    b"[]",
    b"{}",
    b'"text"',
    b"{",
    b'{"command": ["a"]',
    b'{"command": ["\xff"]}',
    b'{"command": ["a\xc0\x80b"]}',  # an overlong NUL
    b'{"command": ["\xed\xa0\x80"]}',  # a surrogate encoded as UTF-8
    b'\xef\xbb\xbf{"command": ["a"]}',  # a BOM
    b'{"command": ["a"]}\x00',
    b'{"command": ["a"], "command": ["b"]}',
    b'{"command": ["a"], "priority": 1e400}',
    b'{"command": ["a"], "priority": -0}',
    b'{"command": ["a"], "resources": {"cpus": NaN}}',
    b'{"command": ["a"], "resources": {"cpus": Infinity}}',
    b'{"command": ["a"], "resources": {"cpus": 1' + b"0" * 400 + b"}}",
    b'{"command": ["a"], "depends_on": [' + b"9" * 5000 + b"]}",
    b'{"command": ["\\ud800"]}',
    b'{"command": ["\\udc00\\ud800"]}',
    b'{"command": ["a"], "\\ud800": 1}',
    b'{"command": ["a"], "env": {"\\ud800": "x"}}',
    b'{"command": ["a\\u0000b"]}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
)

raw_bodies: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from(RAW_BODIES), st.binary(max_size=128)
)


def field_under(field: object, top: str) -> bool:
    """Whether the error ``field`` names ``top`` or something inside it."""
    return isinstance(field, str) and (field == top or field.startswith((top + ".", top + "[")))


def nameable(top: str) -> bool:
    """Whether an error can name the field ``top`` on the wire (UTF-8 cannot carry a lone
    surrogate, so a key made of one cannot be echoed as it is)."""
    return not _bad_unicode(top)


@contextlib.contextmanager
def reported(**inputs: Any) -> Iterator[None]:
    """Add the inputs to any exception raised in the block, as a note.

    hypothesis prints the failing example itself, but not under every plugin set (with
    schemathesis's pytest plugin loaded its report shows the arguments empty): the note always
    shows what to replay.  Long values are cut at a few thousand characters.
    """
    try:
        yield
    except BaseException as exc:
        for name, value in inputs.items():
            text = repr(value)
            if len(text) > 3000:
                text = text[:3000] + f"... ({len(text)} characters)"
            exc.add_note(f"fuzz input {name} = {text}")
        raise


def label(text: str) -> None:
    """Count an outcome in hypothesis's statistics (``--hypothesis-show-statistics``); does
    nothing outside a property (the plain regression tests share the example code)."""
    if currently_in_test_context():
        event(text)
