"""The ``ml`` command line: the argparse parser and the value types of its options.

Only the standard library is imported here, so ``ml --help`` and argument errors stay fast.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from typing import Final

__all__ = ["build_parser", "duration_s", "env_pair", "job_id", "memory_mb"]

STATES: Final = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out", "lost")

DESCRIPTION: Final = "Queue ML jobs on a Fetch ML server and watch them: state, logs, live updates."

EPILOG: Final = """\
settings (first found wins):
  server URL   --url, then FETCHML_URL, then the config file, then http://127.0.0.1:9103
  API key      --key-file, then FETCHML_API_KEY, then the config file
  CA file      --ca-file, then FETCHML_CA_FILE, then the config file (ca_file), else the
               system's CAs; https servers' certificates are always verified
  config file  --config, else $XDG_CONFIG_HOME/fetchml/config.yaml
               (~/.config/fetchml/config.yaml); `ml config init` writes it (mode 0600)

output:
  --json prints only JSON on stdout: one document, or for streaming commands (queue --wait,
  logs -f, watch, status --watch) one object per line. Tables use colour only on a terminal.

exit status:
  0  success
  1  other error
  2  bad argument or invalid job spec (including a job that could never fit the server)
  3  server unreachable, or the connection was lost
  4  invalid or missing API key
  5  missing permission (the message names it)
  6  unknown job
  7  conflict (e.g. cancelling a job that has already ended)
  130 interrupted (Ctrl-C)
  queue --wait exits with the job's own exit code once the job has ended: 0 succeeded,
  the exit code of a failed job (128+N if it was killed by signal N, 1 if it has none),
  124 timed out, 143 cancelled, 125 lost.

examples:
  ml queue --gpu 1 --memory 16G --timeout 2h -- python train.py --lr 3e-4
  ml queue --wait -- pytest -x
  ml status --state running
  ml logs -f 42
"""


def job_id(text: str) -> int:
    """A job id: a positive integer (``#42`` works too)."""
    try:
        value = int(text.removeprefix("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}")
    return value


_MEMORY = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?)(?:i?b)?", re.IGNORECASE)
_MEMORY_MB: Final = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def memory_mb(text: str) -> int:
    """``8G``, ``512M``, ``1.5GiB``, ``4096`` (MiB) → MiB, rounded up."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (use e.g. 8G or 512M)")
    return math.ceil(float(match["n"]) * _MEMORY_MB[match["unit"].lower()])


_DURATION_PART = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhd]?)")
_DURATION_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str) -> float:
    """``90m``, ``2h``, ``30s``, ``1h30m``, ``45`` (seconds) → seconds (> 0)."""
    raw = text.strip().lower()
    total, position = 0.0, 0
    while position < len(raw):
        match = _DURATION_PART.match(raw, position)
        if match is None or match.end() == position:
            break
        total += float(match["n"]) * _DURATION_S[match["unit"]]
        position = match.end()
    if not raw or position != len(raw) or total <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90m, 2h or 30s)")
    return total


def env_pair(text: str) -> tuple[str, str]:
    """``K=V``, or ``K`` alone to pass this shell's value of ``K``."""
    name, sep, value = text.partition("=")
    if not name or "\0" in text:
        raise argparse.ArgumentTypeError(f"not K=V: {text!r}")
    if not sep:
        if name not in os.environ:
            raise argparse.ArgumentTypeError(f"{name} is not set here (use {name}=VALUE)")
        value = os.environ[name]
    return name, value


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, not {value}")
        return value

    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def _states(text: str) -> list[str]:
    states = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in states if s not in STATES]
    if unknown or not states:
        raise argparse.ArgumentTypeError(f"unknown state {text!r}; one of {', '.join(STATES)}")
    return states


# The options before a command that take a value (a word of their own unless given with =).
VALUE_OPTIONS = frozenset({"--url", "--key-file", "--ca-file", "--config"})


def command_word(words: list[str]) -> int | None:
    """The index of the command's name in ``ml``'s arguments: the first word that is neither
    an option nor an option's value (None: there is none)."""
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            return None
        if not word.startswith("-"):
            return index
        index += 2 if word in VALUE_OPTIONS else 1
    return None


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options every command takes, before or after the command name."""
    default = None if top else argparse.SUPPRESS
    flag_default = False if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--url",
        default=default,
        help="server URL (else $FETCHML_URL, the config file, http://127.0.0.1:9103)",
    )
    group.add_argument(
        "--key-file",
        default=default,
        metavar="FILE",
        help="read the API key from FILE ('-' for stdin); keys never go on the command line",
    )
    group.add_argument(
        "--ca-file",
        default=default,
        metavar="FILE",
        help="trust the CA certificates in this PEM file for an https server, e.g. the "
        "cert.pem of `fetchml certs new` (else $FETCHML_CA_FILE, the config file, the system's)",
    )
    group.add_argument(
        "--config", default=default, metavar="FILE", help="client config file to read"
    )
    group.add_argument("--json", action="store_true", default=flag_default, help="print JSON only")
    group.add_argument(
        "--debug", action="store_true", default=flag_default, help="show tracebacks on errors"
    )


def build_parser(version: str, command: str | None = None) -> argparse.ArgumentParser:
    """The ``ml`` parser; each command sets ``handler`` (a name resolved by ``_ml.py``).

    With ``command`` (the command word of the arguments) only that command's parser is added:
    parsing its arguments needs no other, and building all of them costs about 10 ms.  None,
    or a name that is not a command, adds them all (for ``ml --help`` and its errors).
    """
    parser = argparse.ArgumentParser(
        prog="ml",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ml (fetchml) {version}")
    _common(parser, top=True)
    commands = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    chosen = [build for names, build in _BUILDERS if command in names]
    for build in chosen or [build for _, build in _BUILDERS]:
        build(commands)
    return parser


def _cancel_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = _command(commands, "cancel", "cancel jobs (queued or running)")
    cancel.add_argument("jobs", nargs="+", type=job_id, metavar="JOB")


def _logs_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = _command(commands, "logs", "print a job's output (stdout and stderr)")
    logs.add_argument("job", type=job_id, metavar="JOB")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the job ends"
    )


def _watch_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = _command(commands, "watch", "print a line per job state change, live")
    watch.add_argument("job", nargs="?", type=job_id, metavar="JOB", help="only this job")
    watch.add_argument(
        "--since", type=_int_range(0, 2**53), metavar="SEQ", help="replay events after SEQ"
    )


def _whoami_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _command(commands, "whoami", "show your user, roles, permissions and the server")


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    _common(sub, top=False)
    sub.set_defaults(handler=name)
    return sub


def _queue_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = _command(commands, "queue", "queue a job: ml queue [OPTIONS] -- COMMAND [ARGS...]")
    queue.usage = "ml queue [OPTIONS] -- COMMAND [ARGS...]"
    queue.description = (
        "Queue a job.  The project (the git work tree around this folder, else this folder)\n"
        "is snapshotted and sent first (only what the server lacks), so what runs is what is\n"
        "here now; the job starts in this folder of its own copy.  .gitignore, .fetchmlignore\n"
        "and the defaults (.git, virtualenvs, caches) choose what travels."
    )
    queue.formatter_class = argparse.RawDescriptionHelpFormatter
    _job_options(queue)
    add = queue.add_argument
    add("--root", metavar="DIR", help="snapshot DIR (default: the git work tree, else .)")
    add("--no-snapshot", action="store_true", help="send no code: it is on the server already")
    add("--cwd", metavar="DIR", help="working directory on the server (implies --no-snapshot)")
    add("--wait", action="store_true", help="stream state and output; exit with the job's code")
    add("--dry-run", action="store_true", help="check the job against the server, queue nothing")
    add("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _requeue_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    requeue = _command(
        commands,
        "requeue",
        "queue a job again: its snapshot and spec, with the options given changed",
    )
    requeue.usage = "ml requeue JOB [OPTIONS] [-- NEW COMMAND [ARGS...]]"
    requeue.add_argument("job", type=job_id, metavar="JOB")
    _job_options(requeue)
    add = requeue.add_argument
    add("--wait", action="store_true", help="stream state and output; exit with the job's code")


def _job_options(queue: argparse.ArgumentParser) -> None:
    """The options that describe a job (``queue`` and ``requeue``); unset ones stay None."""
    add = queue.add_argument
    add("--name", help="a name for the job")
    add("--priority", type=_int_range(1, 10), metavar="N", help="1 to 10, higher first (default 5)")
    add("--cpu", type=_non_negative, metavar="N", help="CPUs to reserve (default 1)")
    add("--memory", type=memory_mb, metavar="SIZE", help="memory to reserve: 8G, 512M")
    add("--gpu", type=_int_range(0, 1024), metavar="N", help="GPUs to reserve (default 0)")
    add("--timeout", type=duration_s, metavar="TIME", help="stop the job after 90m, 2h, 30s …")
    add("--retries", type=_int_range(0, 100), metavar="N", help="retries after a failure")
    add("--after", type=job_id, action="append", metavar="JOB", help="run after JOB succeeded")
    add("--tag", action="append", metavar="TAG", help="a tag (repeatable)")
    add(
        "--env",
        type=env_pair,
        action="append",
        metavar="K=V",
        help="set K (repeatable; K alone passes your value)",
    )
    add("--experiment", metavar="NAME", help="experiment the job belongs to")
    add(
        "--dataset",
        action="append",
        metavar="NAME[@VERSION]",
        help="a registered dataset the job uses (repeatable; FETCHML_DATASET_<NAME>)",
    )
    add("--hypothesis", metavar="TEXT", help="what the run is to show (kept with its metrics)")
    add("--intent", metavar="TEXT", help="why the run is made")
    add("--expected-outcome", metavar="TEXT", help="what you expect it to show")
    add("--shell", action="store_true", help="run the command with /bin/sh -c")


def _files_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pull = _command(commands, "pull", "download a job's output files (checked against its hashes)")
    pull.add_argument("job", type=job_id, metavar="JOB")
    pull.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: all)")
    pull.add_argument("-o", "--output", default=".", metavar="DIR", help="where to (default .)")
    validate = _command(
        commands, "validate", "re-hash a job's snapshot and outputs against its run manifest"
    )
    validate.add_argument("job", type=job_id, metavar="JOB")
    prune = _command(
        commands, "prune", "remove old jobs' working copies and outputs, unneeded snapshots"
    )
    prune.add_argument(
        "--older-than", type=duration_s, required=True, metavar="TIME", help="e.g. 30d"
    )
    prune.add_argument(
        "--keep-last",
        type=_int_range(0, 2**31),
        default=0,
        metavar="N",
        help="keep the N most recently ended jobs whatever their age",
    )
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")


def _tracking_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``metrics``, ``experiments``, ``runs``, ``compare``, ``export`` and ``outcome``."""
    metrics = _command(
        commands, "metrics", "a run's metrics and params; with NAMEs, a chart of each series"
    )
    metrics.add_argument("job", type=job_id, metavar="JOB")
    metrics.add_argument("names", nargs="*", metavar="NAME", help="metrics to chart")
    metrics.add_argument("--start", type=_int_range(0, 2**62), metavar="STEP", help="first step")
    metrics.add_argument("--end", type=_int_range(0, 2**62), metavar="STEP", help="last step")
    _command(commands, "experiments", "list the experiments with runs you may see")
    runs = _command(commands, "runs", "list an experiment's runs: params that vary, a metric")
    runs.add_argument("experiment", metavar="EXPERIMENT")
    runs.add_argument("--sort", metavar="METRIC", help="sort by the last value of METRIC")
    runs.add_argument("--order", choices=("asc", "desc"), default="desc", help="default desc")
    runs.add_argument(
        "--limit", type=_int_range(1, 100_000), default=20, metavar="N", help="default 20"
    )
    compare = _command(commands, "compare", "compare runs: params, metrics and narrative")
    compare.add_argument("jobs", nargs="+", type=job_id, metavar="JOB")
    export = _command(commands, "export", "write every run of an experiment as CSV or JSON")
    export.add_argument("experiment", metavar="EXPERIMENT")
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="default csv")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default stdout)")
    outcome = _command(commands, "outcome", "record what a run showed")
    outcome.add_argument("job", type=job_id, metavar="JOB")
    outcome.add_argument("text", metavar="TEXT")


def _dataset_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dataset register``, ``dataset list`` and ``dataset info``."""
    dataset = commands.add_parser(
        "dataset",
        help="register datasets and list them (records only: the data stays where it is)",
        description="Register datasets (where each lives, its hash) and list them; a job\n"
        "names them with ml queue --dataset NAME[@VERSION] and gets FETCHML_DATASET_<NAME>.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dataset.add_subparsers(dest="action", metavar="ACTION", required=True)
    register = actions.add_parser(
        "register", help="register NAME at URI (again: a new version)", description=None
    )
    _common(register, top=False)
    register.set_defaults(handler="dataset_register")
    register.add_argument("name", metavar="NAME")
    register.add_argument("uri", metavar="URI", help="scheme://... or an absolute path")
    register.add_argument("--sha256", metavar="HEX", help="the data's SHA-256 (64 hex digits)")
    register.add_argument("--description", metavar="TEXT", help="what the data is")
    listing = actions.add_parser("list", help="every dataset with its latest version")
    _common(listing, top=False)
    listing.set_defaults(handler="dataset_list")
    info = actions.add_parser("info", help="every version of one dataset")
    _common(info, top=False)
    info.set_defaults(handler="dataset_info")
    info.add_argument("name", metavar="NAME")


def _status_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = _command(commands, "status", "list jobs, newest first, or show one job in full")
    status.add_argument("jobs", nargs="*", type=job_id, metavar="JOB")
    status.add_argument(
        "--state",
        type=_states,
        action="append",
        metavar="STATE",
        help=f"only jobs in STATE (repeatable, or comma-separated): {', '.join(STATES)}",
    )
    status.add_argument("--user", help="only USER's jobs")
    status.add_argument(
        "--limit",
        type=_int_range(1, 10_000),
        default=20,
        metavar="N",
        help="at most N jobs (default 20)",
    )
    status.add_argument("--watch", action="store_true", help="keep the table live (pushed)")


def _config_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config", help="write or show the client config file", description="client settings"
    )
    actions = config.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="ask for the server URL and API key and save them (mode 0600)"
    )
    _common(init, top=False)
    init.add_argument("--key-stdin", action="store_true", help="read the key from stdin")
    init.add_argument("--force", action="store_true", help="replace an existing config file")
    init.add_argument("--no-check", action="store_true", help="save without trying the key")
    init.set_defaults(handler="config_init")
    show = actions.add_parser("show", help="show the settings in effect (the key masked)")
    _common(show, top=False)
    show.set_defaults(handler="config_show")


# Each builder of command parsers with the commands it adds, in the order ``ml --help`` lists them.
_BUILDERS: tuple[
    tuple[tuple[str, ...], Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]],
    ...,
] = (
    (("queue",), _queue_parser),
    (("requeue",), _requeue_parser),
    (("status",), _status_parser),
    (("pull", "validate", "prune"), _files_parsers),
    (("metrics", "experiments", "runs", "compare", "export", "outcome"), _tracking_parsers),
    (("dataset",), _dataset_parser),
    (("cancel",), _cancel_parser),
    (("logs",), _logs_parser),
    (("watch",), _watch_parser),
    (("whoami",), _whoami_parser),
    (("config",), _config_parser),
)
