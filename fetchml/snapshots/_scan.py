"""The client's side of a snapshot: which files of a project travel, and their hashes.

The project is the git work tree around the current directory, else the current directory (or
the root a caller names).  Files are chosen as git would: the ``.gitignore`` files of the tree
(each relative to its folder, deeper ones first, negations honoured, an ignored folder never
entered), then a ``.fetchmlignore`` at the root, then :data:`DEFAULT_IGNORES`; matching is
pathspec's gitignore implementation.  Symlinks are kept when relative and inside the tree, and
refused otherwise; other special files (sockets, pipes) are skipped.

Hashes are SHA-256, read in worker threads (hashlib lets go of the GIL), and remembered in a
per-project cache keyed by (size, mtime, inode), as git's index does, so queueing again after
editing one file re-reads only that file.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pathspec

from ..errors import FetchMLError, InvalidRequestError
from ._manifest import FileEntry, LinkEntry, Manifest, check_path, link_problem

__all__ = [
    "DEFAULT_IGNORES",
    "Scan",
    "SnapshotError",
    "find_root",
    "scan_tree",
]

# Never part of a snapshot: version control, virtualenvs, caches, build tool folders.
DEFAULT_IGNORES = (
    ".git/",
    ".hg/",
    ".svn/",
    ".venv/",
    "venv/",
    ".env/",
    "__pycache__/",
    "*.pyc",
    "node_modules/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    ".nox/",
    ".ipynb_checkpoints/",
    ".hypothesis/",
    ".DS_Store",
)
IGNORE_FILE = ".fetchmlignore"
_CHUNK = 1 << 20
_HASH_THREADS = 4
# Files modified this close to the hash cache's writing are hashed again (racily clean).
_RACY_NS = 100_000_000  # the kernel stamps mtimes with a coarse clock (a few ms)


class SnapshotError(FetchMLError):
    """Raised when a project cannot be snapshotted (a symlink that leaves the tree, an
    unreadable file); the message names the path."""

    code = "invalid_snapshot"
    status = 400


def find_root(start: Path) -> Path:
    """The git work tree that holds ``start`` (the nearest folder with a ``.git``), or
    ``start`` itself outside any repository."""
    start = start.absolute()
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


@dataclass
class Scan:
    """A scanned tree: its manifest, where each blob's content is, and what was skipped."""

    root: Path
    manifest: Manifest
    sources: dict[str, Path] = field(default_factory=dict)  # sha256 -> a file with that content
    skipped: list[str] = field(default_factory=list)  # special files, not regular ones

    def largest(self, count: int = 5) -> list[tuple[str, int]]:
        """The ``count`` largest files and top-level folders, (path, bytes), largest first."""
        sizes: dict[str, int] = {}
        for entry in self.manifest.files:
            top = entry.path.split("/", 1)[0]
            key = f"{top}/" if "/" in entry.path else entry.path
            sizes[key] = sizes.get(key, 0) + entry.size
        files = [(entry.path, entry.size) for entry in self.manifest.files]
        ranked = sorted(
            [*files, *((k, v) for k, v in sizes.items() if k.endswith("/"))],
            key=lambda item: -item[1],
        )
        return ranked[:count]


_Spec = tuple[str, pathspec.GitIgnoreSpec]  # (the folder it is relative to, its patterns)


class _Rules:
    """The ignore rules in force in one folder, by precedence: the defaults (nothing brings
    ``.git`` back), then ``.fetchmlignore``, then the ``.gitignore`` files from the deepest
    folder up (a deeper file's match wins, as in git).  The first that matches decides."""

    def __init__(self, fixed: list[_Spec], gitignores: list[_Spec]) -> None:
        self.fixed = fixed
        self.gitignores = gitignores  # root first

    def below(self, folder: Path, relative: str) -> _Rules:
        """The rules inside ``folder`` (``relative`` to the root): with its ``.gitignore``."""
        ignore = folder / ".gitignore"
        try:
            lines = ignore.read_text(errors="replace").splitlines()
        except OSError:
            return self
        spec = pathspec.GitIgnoreSpec.from_lines(lines)
        return _Rules(self.fixed, [*self.gitignores, (relative, spec)])

    def ignored(self, relative: str, is_dir: bool) -> bool:
        probe = relative + "/" if is_dir else relative
        for base, spec in (*self.fixed, *reversed(self.gitignores)):
            if base and not probe.startswith(base + "/"):
                continue
            result = spec.check_file(probe[len(base) + 1 :] if base else probe)
            if result.include is not None:
                return bool(result.include)
        return False


def _base_rules(root: Path) -> _Rules:
    fixed: list[_Spec] = [("", pathspec.GitIgnoreSpec.from_lines(DEFAULT_IGNORES))]
    try:
        lines = (root / IGNORE_FILE).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    if lines:
        fixed.append(("", pathspec.GitIgnoreSpec.from_lines(lines)))
    return _Rules(fixed, []).below(root, "")


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry that is not ignored, folders not entered when
    ignored.  Raises :class:`SnapshotError` for a folder that cannot be read."""
    stack: list[tuple[Path, str, _Rules]] = [(root, "", _base_rules(root))]
    while stack:
        folder, prefix, rules = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SnapshotError(f"cannot read {folder}: {exc.strerror}") from None
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            info = entry.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(info.st_mode)
            if rules.ignored(relative, is_dir):
                continue
            if is_dir and _is_environment(Path(entry.path)):
                continue  # a virtualenv or conda environment, whatever its name
            if is_dir:
                stack.append(
                    (Path(entry.path), relative + "/", rules.below(Path(entry.path), relative))
                )
            else:
                yield relative, info


def _is_environment(folder: Path) -> bool:
    """Whether ``folder`` is a Python environment: a virtualenv (``pyvenv.cfg``) or a conda
    environment (``conda-meta/``).  They never travel: the server has its own."""
    return (folder / "pyvenv.cfg").is_file() or (folder / "conda-meta").is_dir()


class _HashCache:
    """Hashes from the last scan of this project, by path: (size, mtime_ns, inode, sha256)."""

    def __init__(self, root: Path, folder: Path | None) -> None:
        self.path = None
        self.entries: dict[str, tuple[int, int, int, str]] = {}
        self.written_ns = 0  # when the cache was written: later mtimes are not trusted
        if folder is None:
            return
        name = hashlib.sha256(str(root).encode()).hexdigest()[:32]
        self.path = folder / f"{name}.msgpack"
        try:
            self.written_ns = self.path.stat().st_mtime_ns
            self.entries = msgspec.msgpack.decode(
                self.path.read_bytes(), type=dict[str, tuple[int, int, int, str]]
            )
        except (OSError, msgspec.DecodeError):
            self.entries = {}

    def get(self, relative: str, info: os.stat_result) -> str | None:
        """The remembered hash, if the file is unchanged since.  A file modified within
        :data:`_RACY_NS` of the cache's writing is read again (git's "racily clean": an edit in
        the same timestamp tick keeps size and mtime)."""
        hit = self.entries.get(relative)
        if hit is None or hit[:3] != (info.st_size, info.st_mtime_ns, info.st_ino):
            return None
        if info.st_mtime_ns >= self.written_ns - _RACY_NS:
            return None
        return hit[3]

    def save(self, fresh: dict[str, tuple[int, int, int, str]]) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_bytes(msgspec.msgpack.encode(fresh))
            temporary.replace(self.path)
        except OSError:
            pass  # a cache: the next scan reads the files again


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan_tree(root: Path, *, cache_dir: Path | None = None) -> Scan:
    """Scan the tree at ``root``: the manifest of what travels, and where each blob is.

    Blocks on the file system (run it in a thread from async code).  Raises
    :class:`SnapshotError` naming the path for a symlink that is absolute or leaves the tree,
    or a file that cannot be read.
    """
    root = root.absolute()
    cache = _HashCache(root, cache_dir)
    files: list[tuple[str, os.stat_result]] = []
    links: list[LinkEntry] = []
    skipped: list[str] = []
    for relative, info in _walk(root):
        try:
            check_path(relative, "path")
        except InvalidRequestError as exc:
            raise SnapshotError(f"{relative!r}: {exc.message}") from None
        if stat.S_ISLNK(info.st_mode):
            links.append(LinkEntry(relative, os.readlink(root / relative)))
        elif stat.S_ISREG(info.st_mode):
            files.append((relative, info))
        else:
            skipped.append(relative)
    _check_links(links)
    hashes = _hash_all(root, files, cache)
    entries = [
        FileEntry(
            relative, 0o755 if info.st_mode & 0o111 else 0o644, info.st_size, hashes[relative]
        )
        for relative, info in files
    ]
    sources = {hashes[relative]: root / relative for relative, _ in files}
    cache.save(
        {rel: (info.st_size, info.st_mtime_ns, info.st_ino, hashes[rel]) for rel, info in files}
    )
    manifest = Manifest(files=entries, links=links).canonical()
    return Scan(root, manifest, sources, skipped)


def _check_links(links: list[LinkEntry]) -> None:
    """Refuse a link that is absolute or leaves the tree (through other links too), by path."""
    targets = {link.path: link.target for link in links}
    for link in links:
        problem = link_problem(link.path, link.target, targets)
        if problem is not None:
            raise SnapshotError(
                f"the symlink {link.path} {problem}: only relative links inside the tree are kept"
            )


def _hash_all(
    root: Path, files: list[tuple[str, os.stat_result]], cache: _HashCache
) -> dict[str, str]:
    """The SHA-256 of every file, from the cache where it is current, else read (in threads)."""
    hashes: dict[str, str] = {}
    todo: list[str] = []
    for relative, info in files:
        known = cache.get(relative, info)
        if known is None:
            todo.append(relative)
        else:
            hashes[relative] = known
    if not todo:
        return hashes
    with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
        futures = {pool.submit(_sha256_of, root / relative): relative for relative in todo}
        for future in concurrent.futures.as_completed(futures):
            relative = futures[future]
            try:
                hashes[relative] = future.result()
            except OSError as exc:
                raise SnapshotError(f"cannot read {relative}: {exc.strerror}") from None
    return hashes
