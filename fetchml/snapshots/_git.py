"""What git says about a project, for a job's provenance: commit, branch, remote, dirty, diff.

Three ``git`` commands (status, remote, diff), each bounded in time; outside a repository, or
without git installed, there is no git information (not an error).  The remote URL loses any
credentials (``https://user:token@host/...`` becomes ``https://host/...``).  A diff larger than
:data:`~fetchml._models.MAX_INLINE_DIFF` travels as an attachment of the snapshot instead.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .._models import MAX_INLINE_DIFF, GitInfo

__all__ = ["GitState", "git_state", "strip_credentials"]

_GIT_S = 10.0


class GitState:
    """The git information of a tree, and the diff that is too large to keep inline."""

    def __init__(self, info: GitInfo, large_diff: bytes | None = None) -> None:
        self.info = info
        self.large_diff = large_diff


def _git(root: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            timeout=_GIT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def strip_credentials(url: str) -> str:
    """``url`` without a user name or password (an scp-like ``git@host:path`` is kept)."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=host))
    return url


def git_state(root: Path) -> GitState | None:
    """The git state of the work tree at ``root``, or None if it is not one.  Blocks on git."""
    status = _git(root, "status", "--porcelain=v2", "--branch")
    if status is None:
        return None
    commit = branch = None
    dirty = False
    for line in status.decode(errors="replace").splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split(" ", 2)[2]
            commit = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            head = line.split(" ", 2)[2]
            branch = None if head == "(detached)" else head
        elif line and not line.startswith("#"):
            dirty = True
    remote = _git(root, "remote", "get-url", "origin")
    diff = _git(root, "diff", "--binary", "HEAD") if dirty and commit else b""  # tracked files
    text = (diff or b"").decode(errors="replace")
    large = None
    if len(text.encode()) > MAX_INLINE_DIFF:
        large, text = (diff or b""), ""
    info = GitInfo(
        commit=commit,
        branch=branch,
        remote=strip_credentials(remote.decode().strip()) if remote else None,
        dirty=dirty,
        diff=text or None,
        diff_sha256=hashlib.sha256(large).hexdigest() if large is not None else None,
    )
    return GitState(info, large)
