"""``import fetchml`` stays cheap, the client leaves the server side out, and ``ml --help`` loads
nothing it does not need: checked in a fresh interpreter each, from ``sys.modules`` afterwards.

On a failure the message names the import chain that pulled the module in, read from
``python -X importtime``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

SERVER_SIDE = (
    "fetchml.actors",
    "fetchml.gateway",
    "fetchml.server",
    "fetchml.store",
    "fetchml.auth",
    "fetchml.audit",
)
# What the embedding API and the ml command must not pay for on import.
HEAVY = ("trio", "hypercorn", "quart", "rich", "sqlite3", "bcrypt", "yaml", "cryptography", "ray")
# The server's own third-party stack, which the client and the ml command never need.
SERVER_STACK = ("hypercorn", "quart", "sqlite3", "bcrypt", "cryptography", "ray")

ML_HELP = """
from fetchml.cli import ml_main
try:
    ml_main(["--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
"""

CASES = {
    "fetchml": ("import fetchml\nimport fetchml.errors\n", (*HEAVY, "fetchml.actors")),
    "fetchml.client": ("import fetchml.client\n", (*SERVER_STACK, *SERVER_SIDE)),
    "ml --help": (ML_HELP, (*SERVER_STACK, *SERVER_SIDE)),
}


def _python(code: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", *options, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _loaded(name: str, modules: set[str]) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def import_chain(importtime: str, name: str) -> list[str]:
    """The chain of imports (outermost first) that first loaded ``name``, from the stderr of
    ``-X importtime``: each module is printed after the ones it imported, indented deeper."""
    rows = []
    for line in importtime.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+\d+ \| ( *)(\S+)", line)
        if match:
            rows.append((len(match.group(1)), match.group(2)))
    for index, (depth, module) in enumerate(rows):
        if module == name or module.startswith(name + "."):
            chain = [module]
            for outer_depth, outer in rows[index + 1 :]:
                if outer_depth < depth:
                    chain.append(outer)
                    depth = outer_depth
            return chain[::-1]
    return []


def test_import_chain_reads_importtime() -> None:
    stderr = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:        10 |         10 |       _sqlite3\n"
        "import time:        20 |         30 |     sqlite3.dbapi2\n"
        "import time:         5 |         35 |   sqlite3\n"
        "import time:         7 |         42 | fetchml.store\n"
        "import time:         1 |          1 | fetchml.errors\n"
    )
    assert import_chain(stderr, "sqlite3") == ["fetchml.store", "sqlite3", "sqlite3.dbapi2"]
    assert import_chain(stderr, "yaml") == []


@pytest.mark.parametrize("case", list(CASES))
def test_import_leaves_out(case: str) -> None:
    code, banned = CASES[case]
    done = _python(code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n")
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout.splitlines()[-1]))
    loaded = [name for name in banned if _loaded(name, modules)]
    if loaded:
        importtime = _python(code, "-X", "importtime").stderr
        chains = {name: " -> ".join(import_chain(importtime, name)) for name in loaded}
        pytest.fail(f"{case} imports {loaded}: {chains}")
