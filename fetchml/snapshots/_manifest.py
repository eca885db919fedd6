"""What a snapshot is: a manifest of (path, mode, size, SHA-256) whose own hash is its id.

The same structs serve the client (which builds the manifest from a project tree) and the server
(which checks it, stores it and makes working copies from it).  Paths are relative, ``/``
separated, normalised (no ``.``, ``..`` or empty part), valid text without NUL, and unique;
symlinks are kept as links whose target stays inside the tree.  The id is the SHA-256 of the
manifest's canonical encoding (entries sorted by path), so one tree has one id wherever it is
snapshotted, and a blob is stored once however many snapshots share it.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable
from typing import Annotated

import msgspec

from .._models import text_problem
from ..errors import InvalidRequestError, TooLargeError

__all__ = [
    "MAX_PATH_BYTES",
    "Attachment",
    "FileEntry",
    "LinkEntry",
    "Manifest",
    "Plan",
    "SnapshotInfo",
    "check_manifest",
    "check_path",
    "link_problem",
    "manifest_bytes",
    "snapshot_id",
]

MAX_PATH_BYTES = 4096
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
_SHA256 = re.compile("^[0-9a-f]{64}$")


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file: where it goes, whether it is executable (mode 0o755, else 0o644), its size in
    bytes and the SHA-256 of its content (the blob that holds it)."""

    path: str
    mode: int
    size: Annotated[int, msgspec.Meta(ge=0, le=2**62)]
    sha256: Sha256


class LinkEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A symbolic link, relative and pointing inside the tree."""

    path: str
    target: str


class Attachment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A blob that travels with a snapshot without being a file of its tree."""

    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A snapshot's content.  ``attachments`` are blobs that travel with it without being files
    of the tree (``git_diff``: a diff too large to keep in the job's provenance)."""

    version: int = 1
    files: list[FileEntry] = msgspec.field(default_factory=list)
    links: list[LinkEntry] = msgspec.field(default_factory=list)
    attachments: dict[str, Attachment] = msgspec.field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """Bytes of the files and attachments (what the caps count)."""
        return sum(entry.size for entry in self.files) + sum(
            attachment.size for attachment in self.attachments.values()
        )

    def sizes(self) -> dict[str, int]:
        """Every blob the snapshot needs (files and attachments), with its size."""
        found = {entry.sha256: entry.size for entry in self.files}
        found.update((a.sha256, a.size) for a in self.attachments.values())
        return found

    def blobs(self) -> set[str]:
        """Every blob the snapshot needs (files and attachments)."""
        return set(self.sizes())

    def canonical(self) -> Manifest:
        """The same manifest, entries sorted by path and modes normalised."""
        return Manifest(
            version=self.version,
            files=sorted(
                (
                    FileEntry(f.path, 0o755 if f.mode & 0o111 else 0o644, f.size, f.sha256)
                    for f in self.files
                ),
                key=lambda f: f.path,
            ),
            links=sorted(self.links, key=lambda link: link.path),
            attachments=dict(sorted(self.attachments.items())),
        )


class SnapshotInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a stored snapshot is, in short: its id, how many files and bytes it holds, and (when
    just made by a client) how many bytes were sent to make it."""

    id: str
    files: int
    bytes: int
    uploaded_bytes: int | None = None


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What the server lacks of a snapshot: each missing blob with the bytes of it it already
    has (0, or where an interrupted upload of it stopped); and the snapshot's id and size."""

    id: str
    files: int
    bytes: int
    missing: dict[str, int]
    part_bytes: int


_encoder = msgspec.json.Encoder()


def manifest_bytes(manifest: Manifest) -> bytes:
    """The canonical encoding of ``manifest`` (what its id is the hash of)."""
    return _encoder.encode(manifest.canonical())


def snapshot_id(manifest: Manifest) -> str:
    """The snapshot's id: the SHA-256 of its canonical encoding, in hex."""
    return hashlib.sha256(manifest_bytes(manifest)).hexdigest()


def check_path(path: str, field: str) -> str:
    """``path`` if it is a relative, normalised path inside a tree.  Raises
    :class:`InvalidRequestError` naming ``field`` and the path."""
    problem = text_problem(path)
    if problem is None:
        if not path:
            problem = "is empty"
        elif len(path.encode()) > MAX_PATH_BYTES:
            problem = f"is longer than {MAX_PATH_BYTES} bytes"
        elif path.startswith("/"):
            problem = "is absolute"
        elif "\\" in path:
            problem = "has a backslash (paths use /)"
        elif any(part in ("", ".", "..") for part in path.split("/")):
            problem = "is not normalised (an empty, . or .. part)"
    if problem is not None:
        shown = path if text_problem(path) is None else repr(path)
        raise InvalidRequestError(f"{field}: path {shown[:200]} {problem}", field=field)
    return path


def link_problem(path: str, target: str, links: dict[str, str] | None = None) -> str | None:
    """Why the link at ``path`` to ``target`` cannot be kept, or None: it must be relative and
    resolve to a place inside the tree, through the tree's other links (``links``: path ->
    target) as the kernel would follow them."""
    if text_problem(target) is not None or not target:
        return "its target is not a valid path"
    if target.startswith("/"):
        return f"points to an absolute path ({target})"
    if _escapes(posixpath.dirname(path), target, links or {}):
        return f"points outside the tree ({target})"
    return None


def _escapes(base: str, target: str, links: dict[str, str]) -> bool:
    """Whether ``target``, followed from the folder ``base`` (relative to the root), leaves the
    tree: each part resolved in turn, links within the tree followed (at most 40, as Linux)."""
    parts = [part for part in base.split("/") if part]
    pending = [part for part in target.split("/") if part and part != "."]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not parts:
                return True
            parts.pop()
            continue
        here = "/".join([*parts, part])
        followed = links.get(here)
        if followed is None:
            parts.append(part)
            continue
        hops += 1
        if hops > 40 or followed.startswith("/"):
            return True
        pending = [p for p in followed.split("/") if p and p != "."] + pending
    return False


def check_manifest(manifest: Manifest, *, max_files: int, max_bytes: int) -> Manifest:
    """Check a manifest a client sent: paths, links, hashes, uniqueness and the caps.  Returns
    its canonical form.  Raises :class:`InvalidRequestError` naming the entry (``files[3]``) and
    its path, or :class:`TooLargeError` naming the cap."""
    if manifest.version != 1:
        raise InvalidRequestError(
            f"version: unknown manifest version {manifest.version}", field="version"
        )
    count = len(manifest.files) + len(manifest.links)
    if count > max_files:
        raise TooLargeError(
            f"the snapshot has {count} files, more than snapshots.max_files ({max_files})"
        )
    total = manifest.bytes
    if total > max_bytes:
        raise TooLargeError(
            f"the snapshot has {total} bytes, more than snapshots.max_bytes ({max_bytes})"
        )
    sizes: dict[str, int] = {}
    for index, entry in enumerate(manifest.files):
        if sizes.setdefault(entry.sha256, entry.size) != entry.size:
            field = f"files[{index}]"
            raise InvalidRequestError(
                f"{field}: {entry.path} has the hash of another file but not its size",
                field=field,
            )
    seen: set[str] = set()
    _check_entries(((f"files[{i}]", f.path) for i, f in enumerate(manifest.files)), seen)
    _check_entries(((f"links[{i}]", link.path) for i, link in enumerate(manifest.links)), seen)
    targets = {link.path: link.target for link in manifest.links}
    for index, link in enumerate(manifest.links):
        problem = link_problem(link.path, link.target, targets)
        if problem is not None:
            field = f"links[{index}]"
            raise InvalidRequestError(f"{field}: the link {link.path} {problem}", field=field)
    for path in seen:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in seen:
                raise InvalidRequestError(
                    f"files: {parent} is a file and also a folder (of {path})", field="files"
                )
            parent = parent.rpartition("/")[0]
    for name in manifest.attachments:
        if not name.isidentifier():
            raise InvalidRequestError(
                f"attachments: not a valid name {name[:50]!r}", field="attachments"
            )
    return manifest.canonical()


def _check_entries(entries: Iterable[tuple[str, str]], seen: set[str]) -> None:
    for field, path in entries:
        check_path(path, field)
        if path in seen:
            raise InvalidRequestError(f"{field}: path {path} is listed twice", field=field)
        seen.add(path)
