"""The layering of the packages under ``fetchml/``, read from the import statements themselves.

Every ``import`` and ``from ... import`` of every module counts, wherever it stands (module level,
inside a function, under ``if TYPE_CHECKING:``), with relative imports resolved against the
importing module's package.  The checker is a function over (path, source) pairs, so it is tested
here on small fake trees built from strings as well as run on the real one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import fetchml

# The top-level packages of fetchml that a package must not import (its subpackages included).
FORBIDDEN: dict[str, frozenset[str]] = {
    # The scheduler's actors know nothing of the front ends that use them.
    "actors": frozenset({"gateway", "auth", "client", "server", "cli"}),
    # The gateway reaches the store only through the actors, and is composed by the server.
    "gateway": frozenset({"store", "server", "cli", "client"}),
    # The client is what users install and import: nothing of the server side.
    "client": frozenset({"actors", "gateway", "server", "store", "auth", "audit"}),
    # The wire protocol is shared by both ends and depends on neither.
    "protocol": frozenset({"actors", "gateway", "server", "client", "store", "auth", "cli"}),
}
# Private top-level modules that every package may import: the shared models, config, fault
# handling, file and logging helpers.
SHARED_PRIVATE = frozenset({"_models", "_config", "_faults", "_files", "_logging"})
ROOT = "fetchml"


@dataclass(frozen=True)
class Import:
    path: str  # the importing file, as given (``fetchml/actors/_queue.py``)
    module: str  # the importing module (``fetchml.actors._queue``)
    line: int
    target: str  # absolute: a module, or module.name for ``from module import name``


@dataclass(frozen=True)
class Violation:
    imp: Import
    rule: str

    def __str__(self) -> str:
        return f"{self.imp.path}:{self.imp.line}: {self.imp.target} ({self.rule})"


def module_name(path: str) -> tuple[str, bool]:
    """(dotted module name, is a package) of a ``.py`` path relative to the source root."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports_of(path: str, source: str) -> Iterator[Import]:
    """Every import statement of one module, its targets made absolute."""
    module, is_package = module_name(path)
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, module, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                if node.level - 1 >= len(package):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond {ROOT}")
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                target = base if alias.name == "*" else f"{base}.{alias.name}"
                yield Import(path, module, node.lineno, target)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(sources: Mapping[str, str]) -> list[Violation]:
    """The layering violations of the modules ``sources`` maps (path -> source)."""
    found = []
    for path, source in sorted(sources.items()):
        for imp in imports_of(path, source):
            importer = imp.module.split(".")
            target = imp.target.split(".")
            if target[0] != ROOT or len(target) == 1:
                continue  # not fetchml's, or the fetchml package itself
            own = importer[1] if len(importer) > 1 else ""
            top, rest = target[1], target[2:]
            if top in FORBIDDEN.get(own, ()):
                found.append(Violation(imp, f"{ROOT}.{own} must not import {ROOT}.{top}"))
            if top != own:
                if _private(top) and top not in SHARED_PRIVATE:
                    found.append(Violation(imp, f"private top-level module {ROOT}.{top}"))
                private = [part for part in rest if _private(part)]
                if private:
                    found.append(Violation(imp, f"private {private[0]} of {ROOT}.{top}"))
    return found


def real_sources() -> dict[str, str]:
    root = Path(fetchml.__file__).parent
    return {
        path.relative_to(root.parent).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(root.rglob("*.py"))
    }


def test_the_tree_keeps_its_layering() -> None:
    sources = real_sources()
    # The checker saw the tree: a known cross-package import of the composition root.
    assert any(
        imp.module == "fetchml.server._main" and imp.target.startswith("fetchml.gateway")
        for path, source in sources.items()
        for imp in imports_of(path, source)
    )
    found = violations(sources)
    assert not found, "layering violations:\n" + "\n".join(map(str, found))


def test_a_bad_import_added_to_the_real_tree_is_found() -> None:
    sources = real_sources()
    path = "fetchml/actors/_queue.py"
    sources[path] += "\n\ndef _late() -> None:\n    from ..gateway import Service\n"
    lines = sources[path].count("\n")
    assert [str(v) for v in violations(sources)] == [
        f"{path}:{lines}: fetchml.gateway.Service (fetchml.actors must not import fetchml.gateway)"
    ]


# A small fake tree that keeps the rules, in the real tree's shape.
CLEAN = {
    "fetchml/__init__.py": (
        "from typing import TYPE_CHECKING\n"
        "from . import errors\n"
        "from fetchml import __version__\n"
        "if TYPE_CHECKING:\n"
        "    from ._models import Job\n"
        "    from .actors import Scheduler\n"
    ),
    "fetchml/errors.py": "import os\n",
    "fetchml/_models.py": "from .errors import FetchMLError\n",
    "fetchml/_config.py": "from ._models import Job\nfrom . import _models\n",
    "fetchml/actors/__init__.py": "from ._scheduler import Scheduler\n",
    "fetchml/actors/_scheduler.py": (
        "import trio\nfrom .._models import Job\nfrom ..store import Store\n"
        "from ..protocol import Reply\nfrom . import _queue\nimport fetchml.actors._queue\n"
    ),
    "fetchml/actors/_queue.py": "from fetchml._faults import guard\n",
    "fetchml/actors/backends/__init__.py": "from ._local import Local\n",
    "fetchml/actors/backends/_local.py": (
        "from ..._models import Job\nfrom .._messages import Start\nfrom ...errors import Error\n"
    ),
    "fetchml/gateway/__init__.py": "from ._app import create_app\n",
    "fetchml/gateway/_app.py": (
        "from ..actors import Scheduler\nfrom ..auth import Principal\nfrom .. import protocol\n"
        "from .._config import Config\n"
    ),
    "fetchml/client/__init__.py": "from ._client import Client\n",
    "fetchml/client/_client.py": "from .. import protocol\nfrom ..protocol import Request\n",
    "fetchml/protocol/__init__.py": "from .._models import Job\nfrom ..errors import Error\n",
    "fetchml/server/_main.py": (
        "from ..gateway import create_app\nfrom ..store import Store\nfrom ..auth import load\n"
    ),
}


def test_a_clean_fake_tree_has_no_violation() -> None:
    assert violations(CLEAN) == []


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        pytest.param(
            "fetchml/actors/_queue.py",
            "import fetchml.gateway\n",
            ["1: fetchml.gateway (fetchml.actors must not import fetchml.gateway)"],
        ),
        pytest.param(
            "fetchml/actors/_queue.py",
            "x = 1\nfrom .. import client\n",
            ["2: fetchml.client (fetchml.actors must not import fetchml.client)"],
        ),
        pytest.param(
            "fetchml/actors/_queue.py",
            "def f():\n    from ..auth import Principal\n",
            ["2: fetchml.auth.Principal (fetchml.actors must not import fetchml.auth)"],
        ),
        pytest.param(
            "fetchml/actors/__init__.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..cli import main\n",
            ["3: fetchml.cli.main (fetchml.actors must not import fetchml.cli)"],
        ),
        pytest.param(
            "fetchml/actors/backends/_local.py",
            "from ...server import run_server\n",
            ["1: fetchml.server.run_server (fetchml.actors must not import fetchml.server)"],
        ),
        pytest.param(
            "fetchml/gateway/_ws.py",
            "from fetchml.store import Store\n",
            ["1: fetchml.store.Store (fetchml.gateway must not import fetchml.store)"],
        ),
        pytest.param(
            "fetchml/gateway/__init__.py",
            "from ..client import connect\n",
            ["1: fetchml.client.connect (fetchml.gateway must not import fetchml.client)"],
        ),
        pytest.param(
            "fetchml/client/_http.py",
            "import fetchml.audit as audit\n",
            ["1: fetchml.audit (fetchml.client must not import fetchml.audit)"],
        ),
        pytest.param(
            "fetchml/client/__init__.py",
            "from ..actors import Scheduler\n",
            ["1: fetchml.actors.Scheduler (fetchml.client must not import fetchml.actors)"],
        ),
        pytest.param(
            "fetchml/protocol/_peek.py",
            "from ..store import Store\n",
            ["1: fetchml.store.Store (fetchml.protocol must not import fetchml.store)"],
        ),
        pytest.param(
            "fetchml/gateway/_http.py",
            "from ..auth._config import AuthConfig\n",
            ["1: fetchml.auth._config.AuthConfig (private _config of fetchml.auth)"],
        ),
        pytest.param(
            "fetchml/gateway/_http.py",
            "from ..auth import _config\n",
            ["1: fetchml.auth._config (private _config of fetchml.auth)"],
        ),
        pytest.param(
            "fetchml/server/_main.py",
            "import fetchml.actors._runtime\n",
            ["1: fetchml.actors._runtime (private _runtime of fetchml.actors)"],
        ),
        pytest.param(
            "fetchml/cli/_ml.py",
            "from fetchml.client import _hidden\n",
            ["1: fetchml.client._hidden (private _hidden of fetchml.client)"],
        ),
        pytest.param(
            "fetchml/cli/_ml.py",
            "from .._secrets import token\n",
            ["1: fetchml._secrets.token (private top-level module fetchml._secrets)"],
        ),
        pytest.param(
            "fetchml/actors/backends/_ray.py",
            "from ...gateway._app import app\n",
            [
                "1: fetchml.gateway._app.app (fetchml.actors must not import fetchml.gateway)",
                "1: fetchml.gateway._app.app (private _app of fetchml.gateway)",
            ],
            id="forbidden-and-private",
        ),
    ],
)
def test_a_bad_import_in_a_fake_tree_is_found(path: str, source: str, expected: list[str]) -> None:
    tree = CLEAN | {path: CLEAN.get(path, "") + source}
    offset = CLEAN.get(path, "").count("\n")
    prefixed = []
    for want in expected:
        line, _, rest = want.partition(": ")
        prefixed.append(f"{path}:{int(line) + offset}: {rest}")
    assert [str(v) for v in violations(tree)] == prefixed


def test_a_relative_import_beyond_the_root_is_an_error() -> None:
    with pytest.raises(ValueError, match="beyond fetchml"):
        violations(CLEAN | {"fetchml/actors/_queue.py": "from ... import x\n"})
