"""Snapshots without a server: manifests and their checks, ids, the project scan (ignore rules,
symlinks, special files, the hash cache), git provenance, and the blob store."""

from __future__ import annotations

import hashlib
import os
import posixpath
import random
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from helpers.snapshots import commit_all, git, init_repo, pack, sha, tiny_tmpfs, write_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetchml._models import MAX_INLINE_DIFF
from fetchml.errors import InvalidRequestError, StorageFullError, TooLargeError
from fetchml.snapshots import (
    Attachment,
    BlobStore,
    FileEntry,
    LinkEntry,
    Manifest,
    SnapshotError,
    check_manifest,
    check_path,
    find_root,
    git_state,
    parse_pack,
    scan_tree,
    snapshot_id,
)
from fetchml.snapshots._git import strip_credentials

H1 = "1" * 64
H2 = "2" * 64
BIG = 10**12


def check(manifest: Manifest) -> Manifest:
    return check_manifest(manifest, max_files=1000, max_bytes=BIG)


def refused(manifest: Manifest) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        check(manifest)
    assert not isinstance(info.value, TooLargeError)
    return info.value


# ---- paths and manifests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("..", "not normalised"),
        ("../x", "not normalised"),
        ("a/../../x", "not normalised"),
        ("a/..", "not normalised"),
        ("./a", "not normalised"),
        ("a/./b", "not normalised"),
        ("a//b", "not normalised"),
        ("a/", "not normalised"),
        ("a\\..\\b", "backslash"),
        ("a\0b", "NUL"),
        ("\ud800x", "lone surrogate"),
        ("x" * 4097, "longer than 4096 bytes"),
        ("é" * 2049, "longer than 4096 bytes"),  # 4,098 bytes in UTF-8
    ],
)
def test_check_path_refuses_every_bad_kind_naming_field_and_path(path: str, says: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_path(path, "files[3]")
    assert info.value.field == "files[3]"
    assert info.value.message.startswith("files[3]: path ")
    assert says in info.value.message
    if path and "\0" not in path and "\ud800" not in path:
        assert path[:200] in info.value.message


@pytest.mark.parametrize("path", ["a", "a/b/c.py", "x" * 4096, "é" * 2048, "a b/ü.txt", ".hidden"])
def test_check_path_accepts_normal_relative_paths(path: str) -> None:
    assert check_path(path, "files[0]") == path


def test_manifest_duplicates_are_named() -> None:
    twice = Manifest(files=[FileEntry("a.py", 0o644, 1, H1), FileEntry("a.py", 0o644, 2, H2)])
    error = refused(twice)
    assert error.field == "files[1]"
    assert "a.py is listed twice" in error.message
    file_and_link = Manifest(files=[FileEntry("a", 0o644, 1, H1)], links=[LinkEntry("a", "b")])
    error = refused(file_and_link)
    assert error.field == "links[0]"
    assert "a is listed twice" in error.message


@pytest.mark.parametrize(
    ("files", "links"),
    [
        (["a", "a/b"], []),
        (["a/b/c", "a/b"], []),
        (["x/y"], ["x"]),  # a file below a symlink would be written through it
        ([], ["x", "x/y"]),
    ],
)
def test_manifest_file_and_folder_conflict_is_refused(files: list[str], links: list[str]) -> None:
    manifest = Manifest(
        files=[FileEntry(path, 0o644, 1, H1) for path in files],
        links=[LinkEntry(path, "t") for path in links],
    )
    error = refused(manifest)
    assert error.field == "files"
    assert "is a file and also a folder" in error.message


@pytest.mark.parametrize(
    ("path", "target", "says"),
    [
        ("l", "/etc/passwd", "absolute"),
        ("l", "..", "outside the tree"),
        ("a/l", "../../x", "outside the tree"),
        ("a/b/l", "../c/../../../x", "outside the tree"),
        ("l", "", "not a valid path"),
        ("l", "a\0b", "not a valid path"),
    ],
)
def test_manifest_link_targets_must_stay_inside(path: str, target: str, says: str) -> None:
    error = refused(Manifest(links=[LinkEntry(path, target)]))
    assert error.field == "links[0]"
    assert path in error.message
    assert says in error.message


@pytest.mark.parametrize(
    ("path", "target"), [("l", "a.txt"), ("a/l", "../b"), ("a/b/l", "../../c/d"), ("l", ".")]
)
def test_manifest_links_inside_are_kept(path: str, target: str) -> None:
    assert check(Manifest(links=[LinkEntry(path, target)])).links == [LinkEntry(path, target)]


def test_manifest_link_chain_out_of_the_tree_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        check(Manifest(links=[LinkEntry("s", "."), LinkEntry("x", "s/..")]))


def test_manifest_other_checks_and_caps() -> None:
    error = refused(Manifest(version=2))
    assert error.field == "version"
    error = refused(Manifest(attachments={"not a name": Attachment(H1, 1)}))
    assert error.field == "attachments"
    files = [FileEntry(f"f{i}", 0o644, 10, H1) for i in range(5)]
    with pytest.raises(TooLargeError) as too_many:
        check_manifest(Manifest(files=files), max_files=4, max_bytes=BIG)
    assert "snapshots.max_files (4)" in too_many.value.message
    assert too_many.value.status == 413
    links = [LinkEntry(f"l{i}", "f0") for i in range(3)]
    with pytest.raises(TooLargeError):  # links count as files
        check_manifest(Manifest(files=files[:2], links=links), max_files=4, max_bytes=BIG)
    with pytest.raises(TooLargeError) as too_big:
        check_manifest(Manifest(files=files), max_files=10, max_bytes=49)
    assert "50 bytes" in too_big.value.message
    assert "snapshots.max_bytes (49)" in too_big.value.message
    assert check_manifest(Manifest(files=files), max_files=5, max_bytes=50).bytes == 50


def test_snapshot_ids_are_stable_under_reordering_and_mode_bits() -> None:
    entries = [FileEntry(f"d{i % 3}/f{i}", 0o644, i, f"{i:064x}") for i in range(20)]
    links = [LinkEntry("z", "d0/f0"), LinkEntry("d1/y", "../d2")]
    base = Manifest(files=entries, links=links)
    reference = snapshot_id(base)
    rng = random.Random(7)
    for _ in range(5):
        shuffled_files, shuffled_links = list(entries), list(links)
        rng.shuffle(shuffled_files)
        rng.shuffle(shuffled_links)
        again = Manifest(files=shuffled_files, links=shuffled_links)
        assert snapshot_id(again) == reference
        assert snapshot_id(check(again)) == reference
    # Only "executable or not" matters, as in git.
    modes = [
        FileEntry(e.path, 0o700 if i % 2 else 0o600, e.size, e.sha256)
        for i, e in enumerate(entries)
    ]
    normal = [
        FileEntry(e.path, 0o755 if i % 2 else 0o644, e.size, e.sha256)
        for i, e in enumerate(entries)
    ]
    assert snapshot_id(Manifest(files=modes, links=links)) == snapshot_id(
        Manifest(files=normal, links=links)
    )
    assert snapshot_id(Manifest(files=normal, links=links)) != reference
    moved = [*entries[1:], FileEntry("elsewhere", 0o644, 0, entries[0].sha256)]
    assert snapshot_id(Manifest(files=moved, links=links)) != reference
    attached = Manifest(files=entries, links=links, attachments={"git_diff": Attachment(H1, 1)})
    assert snapshot_id(attached) != reference
    assert len(reference) == 64
    assert int(reference, 16) >= 0


# ---- property: check_manifest on anything -------------------------------------------------------

_PART = st.one_of(
    st.sampled_from(["", ".", "..", "a", "b", "c.py", "é", "a\\b", "\0", "\ud800", " "]),
    st.text(alphabet="ab./\\\0é", max_size=6),
)
_PATH = st.one_of(
    st.lists(_PART, min_size=1, max_size=5).map("/".join),
    st.text(max_size=12),
    st.builds(lambda n: "x" * n, st.integers(4090, 4100)),
)
_HASH = st.sampled_from([H1, H2, "3" * 64])


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    files = draw(
        st.lists(
            st.builds(
                FileEntry,
                _PATH,
                st.integers(0, 0o7777),
                st.integers(0, 2**62),
                _HASH,
            ),
            max_size=8,
        )
    )
    links = draw(st.lists(st.builds(LinkEntry, _PATH, _PATH), max_size=4))
    attachments = draw(
        st.dictionaries(
            st.sampled_from(["git_diff", "x y", "", "ok_1", "\ud800"]),
            st.builds(Attachment, _HASH, st.integers(0, 10)),
            max_size=2,
        )
    )
    return Manifest(
        version=draw(st.sampled_from([1, 1, 1, 0, 2])),
        files=files,
        links=links,
        attachments=attachments,
    )


def _inside(path: str) -> bool:
    normal = posixpath.normpath(path)
    return (
        normal == path
        and not path.startswith("/")
        and normal != ".."
        and not normal.startswith("../")
        and "\0" not in path
        and len(path.encode()) <= 4096
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.integers(1, 12), st.integers(1, 2**63))
def test_check_manifest_property(manifest: Manifest, max_files: int, max_bytes: int) -> None:
    try:
        checked = check_manifest(manifest, max_files=max_files, max_bytes=max_bytes)
    except (InvalidRequestError, TooLargeError):
        return  # refused, as it may be: nothing else may escape
    paths = [f.path for f in checked.files] + [link.path for link in checked.links]
    assert all(_inside(path) for path in paths)
    assert len(set(paths)) == len(paths)
    for path in paths:
        parent = posixpath.dirname(path)
        while parent:
            assert parent not in paths
            parent = posixpath.dirname(parent)
    for link in checked.links:
        assert not link.target.startswith("/")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
        assert resolved != ".."
        assert not resolved.startswith("../")
    assert len(paths) <= max_files
    assert checked.bytes <= max_bytes
    assert all(f.mode in (0o644, 0o755) for f in checked.files)
    assert [f.path for f in checked.files] == sorted(f.path for f in checked.files)
    # The check is idempotent and the id does not depend on the order given.
    assert check_manifest(checked, max_files=max_files, max_bytes=max_bytes) == checked
    reversed_manifest = Manifest(
        version=manifest.version,
        files=manifest.files[::-1],
        links=manifest.links[::-1],
        attachments=manifest.attachments,
    )
    assert snapshot_id(reversed_manifest) == snapshot_id(checked)


# ---- the scan -------------------------------------------------------------------------------


def scanned_paths(root: Path, cache: Path | None = None) -> set[str]:
    return {f.path for f in scan_tree(root, cache_dir=cache).manifest.files}


def git_view(root: Path) -> set[str]:
    """The files git would consider: tracked or untracked but not ignored."""
    listing = git(root, "ls-files", "-co", "--exclude-standard", "-z")
    return {path for path in listing.split("\0") if path}


def test_scan_follows_nested_gitignores_like_git(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    init_repo(root)
    write_tree(
        root,
        {
            ".gitignore": "*.log\ndata/\n!data/keep.txt\n/build\nsecret*\n!secret.example\n",
            "main.py": "print(1)\n",
            "run.log": "x",
            "secret.key": "k",
            "secret.example": "e",
            "build/out.o": "o",
            "src/build/kept.txt": "anchored /build only at the root",
            "data/big.bin": b"\0" * 1000,
            "data/keep.txt": "a negation cannot bring back a file of an ignored folder",
            "sub/.gitignore": "!important.log\n*.tmp\n/only_here.txt\n",
            "sub/important.log": "negated below",
            "sub/other.log": "still ignored",
            "sub/x.tmp": "t",
            "sub/only_here.txt": "anchored to sub",
            "sub/deeper/only_here.txt": "not anchored here",
            "sub/deeper/y.tmp": "t",
            "sub/deeper/.gitignore": "!y.tmp\n",
            "other/x.tmp": "*.tmp is sub's rule only",
        },
    )
    found = scanned_paths(root)
    assert found == git_view(root)
    assert "sub/important.log" in found
    assert "sub/deeper/y.tmp" in found
    assert "other/x.tmp" in found
    assert "src/build/kept.txt" in found
    assert not any(path.startswith(("data/", "build/")) for path in found)


def test_scan_never_enters_an_ignored_folder(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write_tree(root, {".gitignore": "ignored/\n", "ok.txt": "ok", "ignored/a.txt": "a"})
    # Either of these would fail the scan if it were looked at.
    os.symlink("/etc/passwd", root / "ignored" / "abs-link")
    os.symlink("../../..", root / "ignored" / "out-link")
    (root / "ignored" / "bad\\name").write_text("a backslash in a name")
    assert scanned_paths(root) == {".gitignore", "ok.txt"}
    assert scan_tree(root).manifest.links == []


def test_scan_honours_fetchmlignore_over_gitignore(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write_tree(
        root,
        {
            ".gitignore": "*.ckpt\n",
            ".fetchmlignore": "datasets/\n*.parquet\n!model.ckpt\n",
            "model.ckpt": "needed by the job although git ignores it",
            "other.ckpt": "c",
            "datasets/train.csv": "tracked in git, but too big to travel",
            "a.parquet": "p",
            "sub/b.parquet": "p",
            "train.py": "t",
        },
    )
    assert scanned_paths(root) == {".gitignore", ".fetchmlignore", "model.ckpt", "train.py"}


def test_scan_default_ignores(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    ignored = [
        ".git/config",
        ".hg/x",
        ".svn/x",
        ".venv/bin/activate",
        "venv/lib/x.py",
        ".env/bin/x",
        "__pycache__/m.cpython-311.pyc",
        "pkg/__pycache__/m.pyc",
        "pkg/stale.pyc",
        "node_modules/left-pad/index.js",
        "web/node_modules/x.js",
        ".mypy_cache/x",
        ".pytest_cache/x",
        ".ruff_cache/x",
        ".tox/x",
        ".nox/x",
        ".ipynb_checkpoints/x",
        ".hypothesis/x",
        ".DS_Store",
        "pkg/.DS_Store",
    ]
    kept = ["pkg/__init__.py", "pkg/m.py", "venv.txt", "notebooks/a.ipynb", ".gitignore"]
    write_tree(root, dict.fromkeys([*ignored, *kept], "x"))
    # A .gitignore negation cannot bring back what the defaults leave out.
    (root / ".gitignore").write_text("!__pycache__/\n!*.pyc\n")
    assert scanned_paths(root) == set(kept)


def test_scan_leaves_out_a_virtualenv_whatever_its_name(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write_tree(root, {"train.py": "t"})
    env = root / "env"
    write_tree(env, {"pyvenv.cfg": "home = /usr/bin\n", "lib/python3.11/site-packages/x.py": "x"})
    (env / "bin").mkdir()
    os.symlink("/usr/bin/python3", env / "bin" / "python")
    assert scanned_paths(root) == {"train.py"}


def test_scan_symlinks_inside_are_kept_others_refused_by_name(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write_tree(root, {"data/v1.txt": "v1", "src/lib/m.py": "m"})
    os.symlink("data/v1.txt", root / "latest")
    os.symlink("../src/lib", root / "data" / "lib")  # a folder: kept as a link, not entered
    os.symlink("missing.txt", root / "dangling")  # inside, even if nothing is there
    scan = scan_tree(root)
    assert {(link.path, link.target) for link in scan.manifest.links} == {
        ("latest", "data/v1.txt"),
        ("data/lib", "../src/lib"),
        ("dangling", "missing.txt"),
    }
    assert {f.path for f in scan.manifest.files} == {"data/v1.txt", "src/lib/m.py"}

    os.symlink("/etc/hostname", root / "src" / "abs")
    with pytest.raises(SnapshotError) as absolute:
        scan_tree(root)
    assert "src/abs" in absolute.value.message
    assert "absolute" in absolute.value.message
    (root / "src" / "abs").unlink()

    os.symlink("../../outside", root / "src" / "up")
    with pytest.raises(SnapshotError) as escaping:
        scan_tree(root)
    assert "src/up" in escaping.value.message
    assert "outside the tree" in escaping.value.message


def test_scan_skips_special_files(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write_tree(root, {"a.txt": "a"})
    os.mkfifo(root / "pipe")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(root / "sock"))
        scan = scan_tree(root)
    finally:
        listener.close()
    assert [f.path for f in scan.manifest.files] == ["a.txt"]
    assert sorted(scan.skipped) == ["pipe", "sock"]


def test_scan_entries_hashes_modes_and_largest(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write_tree(
        root,
        {"run.sh": "#!/bin/sh\n", "data/a.bin": b"a" * 3000, "data/b.bin": b"b" * 2000, "x": "x"},
    )
    (root / "run.sh").chmod(0o700)
    (root / "x").chmod(0o600)
    scan = scan_tree(root)
    by_path = {f.path: f for f in scan.manifest.files}
    assert by_path["run.sh"].mode == 0o755
    assert by_path["x"].mode == 0o644
    assert by_path["data/a.bin"] == FileEntry("data/a.bin", 0o644, 3000, sha(b"a" * 3000))
    assert scan.sources[sha(b"b" * 2000)] == root / "data" / "b.bin"
    assert scan.largest(3) == [("data/", 5000), ("data/a.bin", 3000), ("data/b.bin", 2000)]
    assert snapshot_id(scan.manifest) == snapshot_id(scan_tree(root).manifest)


def _same_stat_new_content(path: Path, content: bytes) -> None:
    """Rewrite ``path`` in place with ``content`` (same size), keeping its mtime and inode."""
    info = path.stat()
    assert len(content) == info.st_size
    with path.open("r+b") as handle:
        handle.write(content)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_ino == info.st_ino


def test_scan_hash_cache_rereads_only_changed_files(tmp_path: Path) -> None:
    root, cache = tmp_path / "proj", tmp_path / "cache"
    files = {f"f{i}.txt": f"content {i}\n".encode() for i in range(6)}
    write_tree(root, dict(files))
    # Files changed within the last moment are never cached (their mtime may not show the
    # next change): these were written a while ago.
    for path in root.iterdir():
        os.utime(path, (time.time() - 10, time.time() - 10))
    first = {f.path: f.sha256 for f in scan_tree(root, cache_dir=cache).manifest.files}
    assert first == {path: sha(data) for path, data in files.items()}
    assert list(cache.iterdir())  # the cache was written
    # Every unchanged file gets other content behind the cache's back (same size, mtime,
    # inode): a scan that read it would see the new hash.  f0 is really edited.
    for index in range(1, 6):
        _same_stat_new_content(root / f"f{index}.txt", f"CONTENT {index}\n".encode())
    (root / "f0.txt").write_bytes(b"edited, and longer\n")
    second = {f.path: f.sha256 for f in scan_tree(root, cache_dir=cache).manifest.files}
    assert second["f0.txt"] == sha(b"edited, and longer\n")
    assert {p: h for p, h in second.items() if p != "f0.txt"} == {
        p: h for p, h in first.items() if p != "f0.txt"
    }
    # A file replaced by another (a new inode: what editors that save by rename do) is read
    # again even with the same size and mtime.
    target = root / "f1.txt"
    info = target.stat()
    replacement = root / "f1.new"
    replacement.write_bytes(b"REPLACED 1\n")
    os.utime(replacement, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace(replacement, target)
    third = {f.path: f.sha256 for f in scan_tree(root, cache_dir=cache).manifest.files}
    assert third["f1.txt"] == sha(b"REPLACED 1\n")
    # Without a cache everything is read.
    fresh = {f.path: f.sha256 for f in scan_tree(root).manifest.files}
    assert fresh == {p: sha((root / p).read_bytes()) for p in fresh}


def test_scan_hash_cache_is_per_project_and_survives_a_corrupt_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    one, two = tmp_path / "one", tmp_path / "two"
    write_tree(one, {"a": "1"})
    write_tree(two, {"a": "2"})
    assert scan_tree(one, cache_dir=cache).manifest.files[0].sha256 == sha(b"1")
    assert scan_tree(two, cache_dir=cache).manifest.files[0].sha256 == sha(b"2")
    assert len(list(cache.glob("*.msgpack"))) == 2
    for path in cache.glob("*.msgpack"):
        path.write_bytes(b"\xff not msgpack")
    assert scan_tree(one, cache_dir=cache).manifest.files[0].sha256 == sha(b"1")


def test_find_root_is_the_git_work_tree_else_the_folder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    (repo / "a" / "b").mkdir(parents=True)
    assert find_root(repo / "a" / "b") == repo
    plain = tmp_path / "plain" / "x"
    plain.mkdir(parents=True)
    assert find_root(plain) == plain


# ---- git provenance -------------------------------------------------------------------------


def test_git_state_commit_branch_dirty_diff_remote(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    init_repo(root, branch="exp-42")
    assert git_state(tmp_path / "nowhere") is None
    empty = git_state(root)
    assert empty is not None
    assert (empty.info.commit, empty.info.branch, empty.info.dirty) == (None, "exp-42", False)
    write_tree(root, {"train.py": "lr = 0.1\n", "README": "r\n"})
    head = commit_all(root)
    git(root, "remote", "add", "origin", "https://alice:ghp_s3cr3t@github.example.com/lab/proj.git")
    clean = git_state(root)
    assert clean is not None
    info = clean.info
    assert (info.commit, info.branch, info.dirty, info.diff) == (head, "exp-42", False, None)
    assert info.remote == "https://github.example.com/lab/proj.git"
    assert "s3cr3t" not in repr(info)
    assert clean.large_diff is None

    (root / "train.py").write_text("lr = 0.01\n")
    dirty = git_state(root)
    assert dirty is not None
    assert dirty.info.dirty is True
    assert dirty.info.diff is not None
    assert "-lr = 0.1" in dirty.info.diff
    assert "+lr = 0.01" in dirty.info.diff
    assert dirty.info.diff_sha256 is None
    assert dirty.large_diff is None

    git(root, "checkout", "-q", "--detach")
    detached = git_state(root)
    assert detached is not None
    assert (detached.info.branch, detached.info.commit) == (None, head)


def test_git_state_untracked_only_is_dirty_without_a_diff(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    init_repo(root)
    write_tree(root, {"a.py": "a\n"})
    commit_all(root)
    (root / "new.py").write_text("untracked\n")
    state = git_state(root)
    assert state is not None
    assert state.info.dirty is True
    assert state.info.diff is None


def test_git_state_large_diff_travels_as_an_attachment(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    init_repo(root)
    lines = "".join(f"line {i}\n" for i in range(12_000))
    write_tree(root, {"big.txt": lines})
    commit_all(root)
    (root / "big.txt").write_text(lines.replace("line", "LINE"))
    state = git_state(root)
    assert state is not None
    assert state.info.dirty is True
    assert state.info.diff is None
    assert state.large_diff is not None
    assert len(state.large_diff) > MAX_INLINE_DIFF
    assert state.large_diff.startswith(b"diff --git")
    assert state.info.diff_sha256 == hashlib.sha256(state.large_diff).hexdigest()


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        ("https://user:token@host.example/a/b.git", "https://host.example/a/b.git"),
        ("https://token@host.example/a.git", "https://host.example/a.git"),
        ("https://u:p@host.example:8443/a.git", "https://host.example:8443/a.git"),
        ("ssh://git:pw@host.example/a.git", "ssh://host.example/a.git"),
        ("git@github.com:lab/proj.git", "git@github.com:lab/proj.git"),
        ("https://host.example/a.git", "https://host.example/a.git"),
    ],
)
def test_strip_credentials(url: str, clean: str) -> None:
    assert strip_credentials(url) == clean


# ---- the blob store -------------------------------------------------------------------------


def test_parse_pack_errors_say_where() -> None:
    blob = b"hello"
    assert [(h, bytes(v)) for h, v in parse_pack(pack(blob, b""))] == [
        (sha(blob), blob),
        (sha(b""), b""),
    ]
    with pytest.raises(InvalidRequestError) as bad:
        parse_pack(pack(blob) + b"garbage\n")
    assert f"at byte {len(pack(blob))}" in bad.value.message
    assert bad.value.field == "body"
    with pytest.raises(InvalidRequestError) as short:
        parse_pack(pack(blob)[:-2])
    assert sha(blob) in short.value.message
    assert "cut short (5 bytes announced, 3 sent)" in short.value.message
    with pytest.raises(InvalidRequestError):
        parse_pack(f"{sha(blob).upper()} 5\n".encode() + blob)
    with pytest.raises(InvalidRequestError):
        parse_pack(f"{sha(blob)} -5\n".encode() + blob)
    assert parse_pack(b"") == []


def test_store_pack_verifies_every_blob_before_storing_any(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    good, bad = b"good", b"bad"
    forged = pack(good) + f"{sha(b'other')} {len(bad)}\n".encode() + bad
    with pytest.raises(InvalidRequestError) as mismatch:
        store.store_pack(forged)
    assert sha(b"other") in mismatch.value.message
    assert "does not match its hash" in mismatch.value.message
    assert not store.has(sha(good))
    with pytest.raises(InvalidRequestError) as truncated:
        store.store_pack(pack(good, bad)[:-1])
    assert "cut short" in truncated.value.message
    assert not store.has(sha(good))
    with pytest.raises(InvalidRequestError) as unannounced:
        store.store_pack(pack(good, bad), wanted={sha(good)})
    assert sha(bad) in unannounced.value.message
    assert "announced" in unannounced.value.message
    assert not store.has(sha(good))
    assert store.store_pack(pack(good, bad), wanted={sha(good), sha(bad)}) == (2, 7)
    assert store.store_pack(pack(good, bad)) == (0, 0)  # stored once
    assert store.path(sha(good)).read_bytes() == good
    assert stat.S_IMODE(store.path(sha(good)).stat().st_mode) == 0o444
    assert {h for h, _, _ in store.inventory()} == {sha(good), sha(bad)}


def test_store_part_resumes_and_checks(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    blob = random.Random(1).randbytes(250_000)
    digest = sha(blob)
    assert store.missing([digest]) == {digest: 0}
    assert store.store_part(digest, 0, len(blob), blob[:100_000]) == 100_000
    # An interrupted upload: the plan says where it stopped.
    assert store.missing([digest, digest]) == {digest: 100_000}
    # A part the server already holds (a retry, another client sending it too) is skipped.
    assert store.store_part(digest, 0, len(blob), blob[:100_000]) == 100_000
    assert store.store_part(digest, 50_000, len(blob), blob[50_000:120_000]) == 120_000
    with pytest.raises(InvalidRequestError) as gap:
        store.store_part(digest, 150_000, len(blob), blob[150_000:160_000])
    assert gap.value.field == "offset"
    assert "has 120000 bytes" in gap.value.message
    assert "resume from there" in gap.value.message
    with pytest.raises(InvalidRequestError) as past:
        store.store_part(digest, 120_000, len(blob), blob[120_000:] + b"extra")
    assert past.value.field == "offset"
    assert store.missing([digest]) == {digest: 120_000}
    assert store.store_part(digest, 120_000, len(blob), blob[120_000:200_000]) == 200_000
    assert store.store_part(digest, 200_000, len(blob), blob[200_000:]) == len(blob)
    assert store.has(digest)
    assert store.missing([digest]) == {}
    assert store.path(digest).read_bytes() == blob
    # Once stored, any further part is answered "all there".
    assert store.store_part(digest, 0, len(blob), b"whatever") == len(blob)


def test_store_part_mismatch_removes_the_partial(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    blob = b"x" * 1000
    digest = sha(blob)
    store.store_part(digest, 0, 1000, blob[:600])
    with pytest.raises(InvalidRequestError) as mismatch:
        store.store_part(digest, 600, 1000, b"y" * 400)
    assert "does not match its hash" in mismatch.value.message
    assert not store.has(digest)
    assert store.missing([digest]) == {digest: 0}
    assert list((tmp_path / "blobs" / "partial").iterdir()) == []


def test_concurrent_writes_of_one_blob_store_it_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    blob = random.Random(2).randbytes(3_000_000)
    body = pack(blob)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            barrier.wait(10)
            store.store_pack(body)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    folder = store.path(sha(blob)).parent
    assert [p.name for p in folder.iterdir()] == [sha(blob)[2:]]  # no temporary file left
    assert store.path(sha(blob)).read_bytes() == blob


def send_in_parts(store: BlobStore, blob: bytes, part: int) -> None:
    for offset in range(0, len(blob), part):
        store.store_part(sha(blob), offset, len(blob), blob[offset : offset + part])


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    """ENOSPC (a real 256 KiB tmpfs) while storing: StorageFullError, what the pack or the
    part wrote is removed, and the store goes on."""
    with tiny_tmpfs(tmp_path / "blobs", "256k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (not root, or no mount(8))")
        store = BlobStore(tmp_path / "blobs")
        rng = random.Random(3)
        first, second = rng.randbytes(150_000), rng.randbytes(150_000)
        with pytest.raises(StorageFullError) as packed:
            store.store_pack(pack(first, second))
        assert "disk is full" in packed.value.message
        assert packed.value.status == 507
        assert not store.has(sha(first))
        assert not store.has(sha(second))
        large = rng.randbytes(400_000)
        with pytest.raises(StorageFullError):
            send_in_parts(store, large, 100_000)
        assert store.missing([sha(large)]) == {sha(large): 0}
        leftovers = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
        assert leftovers == []
        assert store.store_pack(pack(b"small")) == (1, 5)
