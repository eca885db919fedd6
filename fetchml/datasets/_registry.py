"""The dataset registry: named datasets, each a list of versions (where the data lives, its
hash, who registered it and when).  Fetch ML records datasets; it never copies them.

One SQLite file, ``<data_dir>/datasets.db``.  Registering a name that exists adds a version
(as MLflow's model registry and ClearML's datasets do): a job that asked for ``NAME`` keeps the
version it resolved to at submit, so re-registering never changes what a past run used, and
``NAME@VERSION`` pins one.  :class:`DatasetRegistry` blocks on SQLite (call it from a worker
thread); :class:`Datasets` is its async face.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import trio

from .._models import DATASET_NAME, DatasetRef, JobSpec, dataset_env_name, text_problem
from ..errors import ConflictError, InvalidRequestError, InvalidSpecError, NotFoundError
from ..protocol import DatasetBody, DatasetInfo, DatasetVersion, RegisterDataset
from ..store import connect, migrate, transaction

__all__ = ["DB_NAME", "DatasetRegistry", "Datasets", "check_registration", "uri_problem"]

DB_NAME = "datasets.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: datasets and their versions; env_key keeps two names from sharing a variable.
    """
    CREATE TABLE datasets (
        name     TEXT PRIMARY KEY,
        env_key  TEXT NOT NULL UNIQUE
    );
    CREATE TABLE versions (
        name         TEXT    NOT NULL,
        version      INTEGER NOT NULL,
        uri          TEXT    NOT NULL,
        sha256       TEXT,
        description  TEXT,
        user         TEXT    NOT NULL,
        created      REAL    NOT NULL,
        PRIMARY KEY (name, version)
    );
    """,
)

# ``\ufeff`` too: JSON Schema's ``\s`` (the API's pattern) counts it as a space, Python's not.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\ufeff]+")
# Checked with fullmatch: a schema pattern's ``$`` (what msgspec checks) also matches before a
# final newline.
_NAME = re.compile(DATASET_NAME)
_USE = re.compile(f"(?P<name>{DATASET_NAME})(?:@(?P<version>[1-9][0-9]{{0,8}}))?")
_SHA256 = re.compile("[0-9a-fA-F]{64}")
MAX_URI = 4096
MAX_DESCRIPTION = 1000
_COLUMNS = "version, uri, sha256, description, user, created"


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot say where a dataset lives, or None: it is ``scheme://...`` (s3, gs,
    https, file, ...) or an absolute path, with no control characters."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in uri):
        return "has a control character"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in uri):
        return "is not valid Unicode (a lone surrogate)"
    if "://" in uri and not uri.startswith("/") and any(c.isspace() or c == "\ufeff" for c in uri):
        return "has a space (percent-encode it: %20)"
    if not (_SCHEME.fullmatch(uri) or (uri.startswith("/") and len(uri) > 1)):
        return "is neither scheme://... (s3://, gs://, https://, file://) nor an absolute path"
    return None


def check_registration(asked: RegisterDataset) -> RegisterDataset:
    """``asked`` checked field by field (a struct built in Python has had no schema check, and
    the schema's patterns let a final newline through), its SHA-256 in lower case.  Raises
    InvalidRequestError naming the field."""
    name, uri, sha256, description = asked.name, asked.uri, asked.sha256, asked.description
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            "name: 1 to 100 of A-Z a-z 0-9 . _ -, starting with a letter or digit", field="name"
        )
    problem = "must be a string" if not isinstance(uri, str) else uri_problem(uri)
    if problem is None and len(uri) > MAX_URI:
        problem = f"longer than {MAX_URI} characters"
    if problem is not None:
        raise InvalidRequestError(f"uri: {problem}", field="uri")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise InvalidRequestError("sha256: must be 64 hex digits", field="sha256")
    if description is not None:
        problem = "must be a string" if not isinstance(description, str) else None
        problem = problem or text_problem(description)
        if problem is None and len(description) > MAX_DESCRIPTION:
            problem = f"longer than {MAX_DESCRIPTION} characters"
        if problem is not None:
            raise InvalidRequestError(f"description: {problem}", field="description")
    return msgspec.structs.replace(asked, sha256=None if sha256 is None else sha256.lower())


def _version(row: tuple[Any, ...]) -> DatasetVersion:
    version, uri, sha256, description, user, created = row
    return DatasetVersion(
        version=version, uri=uri, sha256=sha256, description=description, user=user, created=created
    )


class DatasetRegistry:
    """The registry in ``data_dir``.  One connection, used by one thread at a time."""

    def __init__(self, data_dir: Path, *, synchronous: str = "full") -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._conn = connect(data_dir / DB_NAME, synchronous)
        self._lock = threading.Lock()
        migrate(self._conn, MIGRATIONS, what="dataset registry")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def register(self, asked: RegisterDataset, user: str) -> tuple[DatasetBody, bool]:
        """Add ``asked`` as the next version of its dataset (the first creates it); returns
        every version, and whether one was added: asking again for what the latest version
        already says (the same URI, hash and description) adds none.  Raises
        InvalidRequestError naming the field (:func:`check_registration`), ConflictError for a
        name whose variable another dataset's name already gives (``a.b`` and ``a_b``)."""
        asked = check_registration(asked)
        key = dataset_env_name(asked.name)
        with self._lock, transaction(self._conn) as conn:
            row = conn.execute("SELECT name FROM datasets WHERE env_key = ?", (key,)).fetchone()
            if row is not None and row[0] != asked.name:
                raise ConflictError(
                    f"name: dataset {row[0]!r} already gives the job {key}; pick another name"
                )
            conn.execute(
                "INSERT OR IGNORE INTO datasets(name, env_key) VALUES (?, ?)", (asked.name, key)
            )
            latest = conn.execute(
                "SELECT version, uri, sha256, description FROM versions WHERE name = ? "
                "ORDER BY version DESC LIMIT 1",
                (asked.name,),
            ).fetchone()
            same = (asked.uri, asked.sha256, asked.description)
            new = latest is None or tuple(latest[1:]) != same
            if new:
                conn.execute(
                    f"INSERT INTO versions(name, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        asked.name,
                        1 if latest is None else latest[0] + 1,
                        asked.uri,
                        asked.sha256,
                        asked.description,
                        user,
                        time.time(),
                    ),
                )
        return self.info(asked.name), new

    def info(self, name: str) -> DatasetBody:
        """Every version of dataset ``name``, newest first.  Raises NotFoundError."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM versions WHERE name = ? ORDER BY version DESC", (name,)
            ).fetchall()
        if not rows:
            raise NotFoundError(f"no dataset named {name[:100]!r}")
        return DatasetBody(name=name, versions=[_version(row) for row in rows])

    def datasets(self) -> list[DatasetInfo]:
        """Every dataset with its latest version, by name."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT v.name, n, {', '.join('v.' + c for c in _COLUMNS.split(', '))} "
                "FROM versions v JOIN (SELECT name, max(version) AS top, count(*) AS n "
                "FROM versions GROUP BY name) m ON v.name = m.name AND v.version = m.top "
                "ORDER BY v.name"
            ).fetchall()
        return [DatasetInfo(name=r[0], versions=r[1], latest=_version(r[2:])) for r in rows]

    def resolve(self, uses: list[str]) -> list[DatasetRef]:
        """The versions a spec's ``datasets`` name (``NAME``: the latest now).  Raises
        InvalidSpecError naming ``datasets[i]`` for a dataset or version not registered."""
        refs: list[DatasetRef] = []
        with self._lock:
            for index, use in enumerate(uses):
                match = _USE.fullmatch(use)
                if match is None:
                    raise InvalidSpecError(
                        f"datasets[{index}]: not NAME or NAME@VERSION", field=f"datasets[{index}]"
                    )
                name, pinned = match["name"], match["version"]
                sql = f"SELECT {_COLUMNS} FROM versions WHERE name = ? "
                sql += "AND version = ?" if pinned else "ORDER BY version DESC LIMIT 1"
                row = self._conn.execute(sql, (name, int(pinned)) if pinned else (name,)).fetchone()
                if row is None:
                    what = (
                        f"version {pinned} of dataset {name!r}" if pinned else f"dataset {name!r}"
                    )
                    raise InvalidSpecError(
                        f"datasets[{index}]: no {what} is registered (ml dataset list)",
                        field=f"datasets[{index}]",
                    )
                version = _version(row)
                refs.append(
                    DatasetRef(
                        name=name, version=version.version, uri=version.uri, sha256=version.sha256
                    )
                )
        return refs


class Datasets:
    """The registry for trio code: each call runs in a worker thread."""

    def __init__(self, registry: DatasetRegistry) -> None:
        self.registry = registry

    def close(self) -> None:
        self.registry.close()

    async def register(self, asked: RegisterDataset, user: str) -> tuple[DatasetBody, bool]:
        """Register ``asked`` for ``user`` (:meth:`DatasetRegistry.register`, which says what
        it returns and raises).  Waits on a worker thread."""
        return await trio.to_thread.run_sync(self.registry.register, asked, user)

    async def info(self, name: str) -> DatasetBody:
        return await trio.to_thread.run_sync(self.registry.info, name)

    async def datasets(self) -> list[DatasetInfo]:
        return await trio.to_thread.run_sync(self.registry.datasets)

    async def resolve(self, spec: JobSpec) -> JobSpec:
        """``spec`` with ``dataset_refs`` resolved from its ``datasets`` (whatever it held is
        replaced).  Raises InvalidSpecError naming the dataset not registered."""
        if not spec.datasets and not spec.dataset_refs:
            return spec
        refs = await trio.to_thread.run_sync(self.registry.resolve, list(spec.datasets))
        return msgspec.structs.replace(spec, dataset_refs=refs)
