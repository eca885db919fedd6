"""Snapshots over HTTP (raw requests, h11) and through ``fetchml.client``, against real servers
on 127.0.0.1: the upload (plan, packs, parts, commit), every bad input the issue names, the
caps and quotas, a full disk, concurrent and interrupted uploads, who may read or run a
snapshot, and jobs that run in private working copies of one."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from helpers.gateway import HIGH_LIMITS, HttpSession, Users, http, make_server_config, serve
from helpers.gateway import until_job as poll_job
from helpers.snapshots import (
    CAPS,
    PART_BYTES,
    blob_files,
    commit,
    commit_all,
    entry,
    init_repo,
    manifest,
    pack,
    plan,
    same_place,
    send_pack,
    send_part,
    sha,
    stray_files,
    tiny_tmpfs,
    upload,
    write_tree,
)

import fetchml
from fetchml.client import connect
from fetchml.errors import InvalidSpecError, QuotaExceededError, TooLargeError
from fetchml.snapshots import FileEntry, Manifest, SnapshotError, scan_tree, snapshot_id

RNG = random.Random(20240601)
LARGE = RNG.randbytes(200_000)  # more than a quarter of a part: sent in parts
SMALL = {"train.py": b"print('hi')\n", "pkg/__init__.py": b"", "pkg/util.py": b"X = 1\n"}


@pytest.fixture
def users() -> Users:
    return Users()


def server_config(data_dir: Path, users: Users, **caps: int) -> fetchml.Config:
    return make_server_config(
        data_dir.parent, users, snapshots={**CAPS, **caps}, limits=HIGH_LIMITS
    )


def local_id(files: dict[str, bytes]) -> str:
    entries = [FileEntry(path, 0o644, len(data), sha(data)) for path, data in files.items()]
    return snapshot_id(Manifest(files=entries))


async def until_job(
    session: HttpSession, key: str, job_id: int, within: float = 15.0
) -> dict[str, Any]:
    return await poll_job(
        session, key, job_id, ("succeeded", "failed", "cancelled", "timed_out"), within
    )


# ---- the upload ---------------------------------------------------------------------------------


async def test_plan_pack_parts_commit_happy_path(data_dir: Path, users: Users) -> None:
    files = {**SMALL, "data/big.bin": LARGE}
    body = manifest(files)
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            planned = await plan(s, users.alice, body)
            assert planned.status == 200, planned.body
            answer = planned.json()
            assert answer == {
                "id": local_id(files),
                "files": 4,
                "bytes": sum(len(d) for d in files.values()),
                "missing": dict.fromkeys(sorted({sha(d) for d in files.values()}), 0),
                "part_bytes": PART_BYTES,
            }
            sent = await send_pack(s, users.alice, pack(*SMALL.values()))
            assert sent.status == 200, sent.body
            assert sent.json() == {"stored": 3, "bytes": sum(len(d) for d in SMALL.values())}
            haves = []
            for offset in range(0, len(LARGE), PART_BYTES):
                part = await send_part(s, users.alice, LARGE, offset)
                assert part.status == 200, part.body
                haves.append(part.json()["have"])
            assert haves == [65536, 131072, 196608, 200_000]
            again = await plan(s, users.alice, body)
            assert again.json()["missing"] == {}
            done = await commit(s, users.alice, body)
            assert done.status == 201, done.body
            info = done.json()["snapshot"]
            assert (info["id"], info["files"], info["bytes"]) == (
                local_id(files),
                4,
                answer["bytes"],
            )
            twice = await commit(s, users.alice, body)
            assert (twice.status, twice.json()["snapshot"]["id"]) == (201, info["id"])
            shown = await s.request("GET", f"/api/v1/snapshots/{info['id']}", key=users.alice)
            assert shown.status == 200, shown.body
            stored = shown.json()
            assert [f["path"] for f in stored["files"]] == sorted(files)
            assert stored["links"] == []
            assert stored["attachments"] == {}
    blobs = blob_files(data_dir)
    assert set(blobs) == {sha(d) for d in files.values()}
    for data in files.values():
        assert blobs[sha(data)].read_bytes() == data
    assert stray_files(data_dir) == []


BAD_PATHS = [
    ("../escape.py", "../escape.py"),
    ("pkg/../../escape.py", "pkg/../../escape.py"),
    ("/etc/passwd", "/etc/passwd"),
    ("a\u0000b", "'a\\x00b'"),
    ("x" * 4097, "x" * 200),
    ("pkg//util.py", "pkg//util.py"),
    ("a\\b", "a\\b"),
]


@pytest.mark.parametrize(("path", "named"), BAD_PATHS)
async def test_bad_paths_are_refused_naming_entry_and_path(
    data_dir: Path, users: Users, path: str, named: str
) -> None:
    body = {"files": [entry("ok.py", b"ok"), entry(path, b"bad")]}
    with trio.fail_after(20):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            for step in (plan, commit):
                response = await step(s, users.alice, body)
                assert response.status == 400, response.body
                error = response.error
                assert error["code"] == "invalid_request"
                assert error["field"] == "files[1]"
                assert named in error["message"]
    assert blob_files(data_dir) == {}


async def test_duplicates_conflicts_and_links_are_refused(data_dir: Path, users: Users) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"files": [entry("a.py", b"1"), entry("a.py", b"2")]}, "files[1]", "a.py is listed twice"),
        (
            {"files": [entry("a", b"1")], "links": [{"path": "a", "target": "b"}]},
            "links[0]",
            "a is listed twice",
        ),
        ({"files": [entry("a", b"1"), entry("a/b", b"2")]}, "files", "a is a file and also"),
        (
            {"files": [], "links": [{"path": "l", "target": "../../etc"}]},
            "links[0]",
            "the link l points outside the tree",
        ),
        (
            {"files": [], "links": [{"path": "l", "target": "/etc/passwd"}]},
            "links[0]",
            "absolute",
        ),
        ({"files": [{**entry("a", b"1"), "sha256": "XYZ"}]}, "files[0].sha256", ""),
        ({"files": [{**entry("a", b"1"), "size": -1}]}, "files[0].size", ""),
        ({"files": [], "surprise": 1}, "surprise", ""),
        ({"version": 9, "files": []}, "version", "unknown manifest version 9"),
    ]
    with trio.fail_after(20):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            for body, field, says in cases:
                response = await plan(s, users.alice, body)
                assert response.status == 400, (body, response.body)
                assert response.error["field"] == field, (body, response.error)
                assert says in response.error["message"]
            not_json = await s.request(
                "POST", "/api/v1/snapshots/plan", key=users.alice, body=b"{nope"
            )
            assert not_json.status == 400
            assert not_json.error["code"] == "invalid_request"


async def test_bad_blobs_are_refused_and_nothing_is_left(data_dir: Path, users: Users) -> None:
    good, other = b"good content\n", b"other content\n"
    body = manifest({"a.txt": good, "b.txt": other})
    with trio.fail_after(20):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            assert (await plan(s, users.alice, body)).status == 200
            # Content that does not match its hash (in a pack with a good blob): neither stays.
            forged = pack(good) + f"{sha(other)} {len(good)}\n".encode() + good
            mismatch = await send_pack(s, users.alice, forged)
            assert mismatch.status == 400, mismatch.body
            assert mismatch.error["field"] == "body"
            assert sha(other) in mismatch.error["message"]
            assert "does not match its hash" in mismatch.error["message"]
            cut = await send_pack(s, users.alice, pack(good)[:-3])
            assert cut.status == 400
            assert "cut short" in cut.error["message"]
            garbage = await send_pack(s, users.alice, b"hello world")
            assert garbage.status == 400
            assert "not a blob pack at byte 0" in garbage.error["message"]
            # A blob no plan of this user named.
            stranger = b"never announced"
            unasked = await send_pack(s, users.alice, pack(stranger))
            assert unasked.status == 400
            assert sha(stranger) in unasked.error["message"]
            by_bob = await send_pack(s, users.bob, pack(good))
            assert by_bob.status == 400
            assert "announced" in by_bob.error["message"]
            # A commit of blobs the server lacks names them.
            lacking = await commit(s, users.alice, body)
            assert lacking.status == 400
            assert lacking.error["field"] == "blobs"
            for blob in (good, other):
                assert sha(blob) in lacking.error["message"]
            # The routes' own arguments.
            path = f"/api/v1/blobs/{sha(good)}"
            no_total = await s.request("PUT", path, key=users.alice, body=good)
            assert (no_total.status, no_total.error["field"]) == (400, "total")
            bad_hash = await s.request(
                "PUT", "/api/v1/blobs/xyz?total=3", key=users.alice, body=b"abc"
            )
            assert (bad_hash.status, bad_hash.error["code"]) == (404, "not_found")
            past = await s.request("PUT", f"{path}?offset=0&total=3", key=users.alice, body=good)
            # A total other than the size its plan announced.
            assert (past.status, past.error["field"]) == (400, "total")
            mismatch_part = await s.request(
                "PUT",
                f"{path}?offset=0&total={len(good)}",
                key=users.alice,
                body=other[: len(good)],
            )
            assert mismatch_part.status == 400
            assert "does not match its hash" in mismatch_part.error["message"]
            carol = await plan(s, users.carol, body)
            assert (carol.status, carol.error.get("permission")) == (403, "jobs:create")
            nobody = await plan(s, None, body)
            assert nobody.status == 401
    assert blob_files(data_dir) == {}
    assert stray_files(data_dir) == []


# ---- caps and quotas ----------------------------------------------------------------------------


async def test_caps_are_413_naming_the_cap(data_dir: Path, users: Users) -> None:
    config = server_config(data_dir, users, max_files=5, max_bytes=10_000, max_user_bytes=12_000)
    with trio.fail_after(20):
        async with serve(config) as base, HttpSession(base) as s:
            many = manifest({f"f{i}": str(i).encode() for i in range(6)})
            too_many = await plan(s, users.alice, many)
            assert too_many.status == 413, too_many.body
            assert too_many.error["code"] == "too_large"
            assert "6 files" in too_many.error["message"]
            assert "snapshots.max_files (5)" in too_many.error["message"]
            links = {
                "files": many["files"][:3],
                "links": [{"path": f"l{i}", "target": "f0"} for i in range(3)],
            }
            assert (await plan(s, users.alice, links)).status == 413
            big = {"files": [{**entry("big", b""), "size": 10_001}]}
            too_big = await plan(s, users.alice, big)
            assert too_big.status == 413
            assert "10001 bytes" in too_big.error["message"]
            assert "snapshots.max_bytes (10000)" in too_big.error["message"]
            assert (await commit(s, users.alice, big)).status == 413
            await upload(s, users.alice, {"a": RNG.randbytes(8000)})
            over = await plan(s, users.alice, manifest({"b": RNG.randbytes(5000)}))
            assert over.status == 413
            assert over.error["code"] == "quota_exceeded"
            assert "13000 bytes" in over.error["message"]
            assert "snapshots.max_user_bytes (12000)" in over.error["message"]
            body = b"x" * (PART_BYTES + (1 << 20) + 1)
            huge = await s.request("POST", "/api/v1/blobs", key=users.alice, body=body, close=True)
            assert huge.status == 413
            assert "request body larger than" in huge.error["message"]
    assert len(blob_files(data_dir)) == 1


async def test_quota_counts_each_users_blobs_once_even_when_shared(
    data_dir: Path, users: Users
) -> None:
    a, b, c = RNG.randbytes(600), RNG.randbytes(300), RNG.randbytes(500)
    with trio.fail_after(20):
        async with (
            serve(server_config(data_dir, users, max_user_bytes=1000)) as base,
            HttpSession(base) as s,
        ):
            await upload(s, users.alice, {"a": a})
            await upload(s, users.alice, {"a": a, "b": b})  # a counted once: 900
            await upload(s, users.alice, {"copy_of_a": a, "b": b})
            over = await plan(s, users.alice, manifest({"c": c}))
            assert over.status == 413
            assert over.error["code"] == "quota_exceeded"
            assert "1400 bytes" in over.error["message"]
            # Bob's snapshot of a blob alice sent: nothing to send, and it counts for bob.
            shared = await plan(s, users.bob, manifest({"a": a}))
            assert shared.json()["missing"] == {}
            await upload(s, users.bob, {"a": a})
            bob_over = await plan(s, users.bob, manifest({"c": c}))
            assert bob_over.status == 413
            assert "1100 bytes" in bob_over.error["message"]
            await upload(s, users.bob, {"b": b})  # 900: fits
    assert set(blob_files(data_dir)) == {sha(a), sha(b)}


async def test_client_over_a_cap_names_the_largest_and_sends_nothing(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    write_tree(
        project,
        {
            "train.py": "x",
            "data/a.bin": b"a" * 30_000,
            "data/b.bin": b"b" * 25_000,
            "weights.pt": b"w" * 40_000,
        },
    )
    with trio.fail_after(30):
        async with (
            serve(server_config(data_dir, users, max_bytes=50_000)) as base,
            connect(base, users.alice) as client,
        ):
            with pytest.raises(TooLargeError) as info:
                await client.snapshot(project)
            message = info.value.message
            assert "snapshots.max_bytes (50000)" in message
            assert "the largest:" in message
            assert "data/ (53.7 KiB)" in message
            assert "weights.pt (39.1 KiB)" in message
            assert "data/a.bin" in message
    assert blob_files(data_dir) == {}
    assert stray_files(data_dir) == []
    # Under max_bytes now, but over the user's quota: refused before anything is sent too.
    (project / "weights.pt").unlink()
    (project / "data" / "b.bin").unlink()
    with trio.fail_after(30):
        quota = server_config(data_dir, users, max_bytes=50_000, max_user_bytes=20_000)
        async with serve(quota) as base, connect(base, users.alice) as client:
            with pytest.raises(QuotaExceededError) as over:
                await client.snapshot(project)
            assert "snapshots.max_user_bytes (20000)" in over.value.message
            assert "data/a.bin" in over.value.message
    assert blob_files(data_dir) == {}


async def test_a_manifest_that_lies_about_sizes_does_not_pass_the_caps(
    data_dir: Path, users: Users
) -> None:
    content = RNG.randbytes(150_000)
    body = {"files": [{**entry("model.bin", content), "size": 1}]}
    with trio.fail_after(20):
        async with (
            serve(server_config(data_dir, users, max_bytes=100_000)) as base,
            HttpSession(base) as s,
        ):
            assert (await plan(s, users.alice, body)).status == 200
            sent = await send_pack(s, users.alice, pack(content))
            done = await commit(s, users.alice, body)
    assert sent.status == 400 or done.status in (400, 413), (sent.body, done.body)


async def test_parts_past_the_announced_size_are_refused(data_dir: Path, users: Users) -> None:
    blob = b"ten bytes!"
    with trio.fail_after(20):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            assert (await plan(s, users.alice, manifest({"a": blob}))).status == 200
            path = f"/api/v1/blobs/{sha(blob)}?offset=0&total={10**9}"
            response = await s.request("PUT", path, key=users.alice, body=b"z" * PART_BYTES)
    assert response.status in (400, 413), response.body


async def test_attachments_count_against_the_caps(data_dir: Path, users: Users) -> None:
    content = RNG.randbytes(300_000)

    def body(size: int) -> dict[str, Any]:
        return {"files": [], "attachments": {"git_diff": {"sha256": sha(content), "size": size}}}

    with trio.fail_after(20):
        async with (
            serve(server_config(data_dir, users, max_bytes=100_000)) as base,
            HttpSession(base) as s,
        ):
            honest = await plan(s, users.alice, body(len(content)))
            assert honest.status == 413, honest.body
            assert "snapshots.max_bytes" in honest.json()["error"]["message"]
            # An attachment that claims to be small is caught when its blob arrives, or at
            # the latest when the snapshot is registered.
            assert (await plan(s, users.alice, body(1))).status == 200
            for offset in range(0, len(content), PART_BYTES):
                await send_part(s, users.alice, content, offset)
            done = await commit(s, users.alice, body(1))
    assert done.status == 400, done.body


# ---- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def full_disk(data_dir: Path) -> Iterator[None]:
    """The blob store on a 256 KiB tmpfs."""
    with tiny_tmpfs(data_dir / "blobs", "256k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (not root, or no mount(8))")
        yield


async def test_a_full_disk_is_a_clear_error_and_the_server_lives_on(
    data_dir: Path, users: Users, full_disk: None
) -> None:
    first, second = RNG.randbytes(150_000), RNG.randbytes(150_000)
    large = RNG.randbytes(600_000)
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            body = manifest({"a": first, "b": second, "c": large})
            assert (await plan(s, users.alice, body)).status == 200
            packed = await send_pack(s, users.alice, pack(first, second))
            assert packed.status == 507, packed.body
            assert packed.error["code"] == "storage_full"
            assert "disk is full" in packed.error["message"]
            assert blob_files(data_dir) == {}
            statuses = []
            for offset in range(0, len(large), PART_BYTES):
                part = await send_part(s, users.alice, large, offset)
                statuses.append(part.status)
                if part.status != 200:
                    assert part.status == 507, part.body
                    assert "disk is full" in part.error["message"]
                    break
            assert statuses[-1] == 507
            replanned = await plan(s, users.alice, body)
            assert replanned.json()["missing"] == {sha(first): 0, sha(second): 0, sha(large): 0}
            assert stray_files(data_dir) == []
            assert (await http(base, "GET", "/health")).status == 200
            await upload(s, users.alice, {"small.txt": b"still works\n"})
    assert list(blob_files(data_dir)) == [sha(b"still works\n")]


# ---- concurrent and interrupted uploads -----------------------------------------------------


async def test_two_clients_sending_the_same_blob_at_once_store_it_once(
    data_dir: Path, users: Users
) -> None:
    blob = RNG.randbytes(12_000)
    body = manifest({"shared.bin": blob})
    statuses: list[int] = []
    with trio.fail_after(20):
        async with (
            serve(server_config(data_dir, users)) as base,
            HttpSession(base) as alice,
            HttpSession(base) as bob,
        ):
            assert (await plan(alice, users.alice, body)).json()["missing"] == {sha(blob): 0}
            assert (await plan(bob, users.bob, body)).json()["missing"] == {sha(blob): 0}

            async def send(session: HttpSession, key: str) -> None:
                for _ in range(5):
                    statuses.append((await send_pack(session, key, pack(blob))).status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, alice, users.alice)
                nursery.start_soon(send, bob, users.bob)
            assert (await commit(alice, users.alice, body)).status == 201
            assert (await commit(bob, users.bob, body)).status == 201
    assert statuses == [200] * 10
    assert list(blob_files(data_dir)) == [sha(blob)]
    assert stray_files(data_dir) == []


async def test_one_client_sends_a_file_of_many_parts(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    large = RNG.randbytes(64 * PART_BYTES + 123)
    write_tree(tmp_path / "proj", {"weights.bin": large, "train.py": "t"})
    with trio.fail_after(60):
        async with (
            serve(server_config(data_dir, users, max_bytes=10_000_000)) as base,
            connect(base, users.alice) as client,
        ):
            snap = await client.snapshot(tmp_path / "proj")
    assert snap.info.uploaded_bytes is not None
    assert snap.info.uploaded_bytes >= len(large)
    assert blob_files(data_dir)[sha(large)].read_bytes() == large


async def test_two_clients_snapshotting_the_same_large_file_at_once_both_succeed(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    large = RNG.randbytes(20 * PART_BYTES)
    for name in ("one", "two"):
        write_tree(tmp_path / name, {"weights.bin": large, f"{name}.py": name})
    results: dict[str, str] = {}
    with trio.fail_after(30):
        async with (
            serve(server_config(data_dir, users)) as base,
            connect(base, users.alice) as alice,
            connect(base, users.bob) as bob,
        ):

            async def snap(client: fetchml.client.Client, name: str) -> None:
                results[name] = (await client.snapshot(tmp_path / name)).id

            async with trio.open_nursery() as nursery:
                nursery.start_soon(snap, alice, "one")
                nursery.start_soon(snap, bob, "two")
    assert set(results) == {"one", "two"}
    assert sha(large) in blob_files(data_dir)


async def test_an_interrupted_upload_resumes_sending_only_what_is_missing(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    # Two parts are sent before the "interruption"; what is left is one part (a client that
    # sends several parts of one blob fails for a bug of its own: see the test below).
    large = RNG.randbytes(2 * PART_BYTES + 30_000)
    write_tree(project, {"big.bin": large, "a.py": "a = 1\n", "b.py": "b = 2\n"})
    scanned = scan_tree(project).manifest
    body = msgspec.to_builtins(scanned)
    with trio.fail_after(30):
        async with serve(server_config(data_dir, users)) as base:
            async with HttpSession(base) as s:
                assert (await plan(s, users.alice, body)).status == 200
                for offset in (0, PART_BYTES):  # then the connection "drops"
                    assert (await send_part(s, users.alice, large, offset)).status == 200
            async with HttpSession(base) as s:
                resumed = await plan(s, users.alice, body)
                missing = resumed.json()["missing"]
                assert missing[sha(large)] == 2 * PART_BYTES
                # A part already held is skipped; one past what is held leaves a gap.
                again = await send_part(s, users.alice, large, 0)
                assert (again.status, again.json()["have"]) == (200, 2 * PART_BYTES)
                gap = await send_part(s, users.alice, large, 2 * PART_BYTES + 1, 10)
                assert (gap.status, gap.error["field"]) == (400, "offset")
                assert f"has {2 * PART_BYTES} bytes" in gap.error["message"]
                assert "resume from there" in gap.error["message"]
            async with connect(base, users.alice) as client:
                snap = await client.snapshot(project)
    small_pack = pack(b"a = 1\n", b"b = 2\n")
    assert snap.info.uploaded_bytes == len(large) - 2 * PART_BYTES + len(small_pack)
    assert snap.id == snapshot_id(scanned)
    assert blob_files(data_dir)[sha(large)].read_bytes() == large
    assert stray_files(data_dir) == []


# ---- who may read and run a snapshot ----------------------------------------------------------


async def test_snapshot_manifest_visibility(data_dir: Path, users: Users) -> None:
    with trio.fail_after(20):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            sid = await upload(s, users.alice, SMALL)
            path = f"/api/v1/snapshots/{sid}"
            for key in (users.alice, users.admin, users.carol):
                shown = await s.request("GET", path, key=key)
                assert shown.status == 200, shown.body
                assert sorted(f["path"] for f in shown.json()["files"]) == sorted(SMALL)
            hidden = await s.request("GET", path, key=users.bob)
            unknown = await s.request("GET", f"/api/v1/snapshots/{'0' * 64}", key=users.bob)
            assert hidden.status == unknown.status == 404
            assert hidden.error == {"code": "not_found", "message": f"no snapshot {sid}"}
            assert unknown.error == {"code": "not_found", "message": f"no snapshot {'0' * 64}"}
            bad = await s.request("GET", "/api/v1/snapshots/nope", key=users.alice)
            assert bad.status == 404
            # Bob makes the same snapshot: now he is one of its owners.
            assert await upload(s, users.bob, SMALL) == sid
            assert (await s.request("GET", path, key=users.bob)).status == 200


async def test_unknown_or_foreign_snapshot_in_a_spec_is_refused(
    data_dir: Path, users: Users
) -> None:
    with trio.fail_after(20):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            sid = await upload(s, users.alice, SMALL)

            async def submit(key: str, spec: dict[str, Any]) -> Any:
                return await s.request("POST", "/api/v1/jobs", key=key, json_body=spec)

            unknown = await submit(users.alice, {"command": ["true"], "snapshot": "0" * 64})
            assert unknown.status == 400
            assert unknown.error == {
                "code": "invalid_spec",
                "message": f"snapshot: unknown snapshot {'0' * 64}",
                "field": "snapshot",
            }
            foreign = await submit(users.bob, {"command": ["true"], "snapshot": sid})
            assert foreign.status == 400
            assert foreign.error == {
                "code": "invalid_spec",
                "message": f"snapshot: unknown snapshot {sid}",
                "field": "snapshot",
            }
            malformed = await submit(users.alice, {"command": ["true"], "snapshot": "abc"})
            assert (malformed.status, malformed.error["field"]) == (400, "snapshot")
            outside = await submit(
                users.alice, {"command": ["true"], "snapshot": sid, "cwd": "../elsewhere"}
            )
            assert (outside.status, outside.error["field"]) == (400, "cwd")
            absolute = await submit(
                users.alice, {"command": ["true"], "snapshot": sid, "cwd": "/tmp"}
            )
            assert (absolute.status, absolute.error["field"]) == (400, "cwd")
            by_admin = await submit(users.admin, {"command": ["true"], "snapshot": sid})
            assert by_admin.status == 201, by_admin.body
            async with connect(base, users.bob) as bob:
                with pytest.raises(InvalidSpecError) as refused:
                    await bob.submit({"command": ["true"], "snapshot": sid})
                assert refused.value.field == "snapshot"
                listed = await bob.list()
                assert listed == []  # nothing was queued for bob


# ---- jobs in working copies -----------------------------------------------------------------

JOB_ONE = r"""
out=$FETCHML_OUTPUT_DIR
echo "$FETCHML_SNAPSHOT_ID" > $out/sid
pwd > $out/pwd
./run.sh > $out/ran
readlink ../latest > $out/link
python3 -c 'import sys; sys.path.insert(0, ".."); import pkg.util; print(pkg.util.X)' > $out/import
echo "changed by job one" >> ../data.txt
rm ../pkg/util.py
sha256sum ../data.txt | cut -d' ' -f1 > $out/sum
"""
JOB_TWO = r"""
sha256sum ../data.txt | cut -d' ' -f1 > $FETCHML_OUTPUT_DIR/sum
test -f ../pkg/util.py && echo present > $FETCHML_OUTPUT_DIR/util
"""


async def test_jobs_run_in_private_working_copies(data_dir: Path, users: Users) -> None:
    original = b"the data\n"
    files = {
        "data.txt": original,
        "exp/run.sh": b"#!/bin/sh\necho ran from $(basename $(pwd))\n",
        "pkg/__init__.py": b"",
        "pkg/util.py": b"X = 41 + 1\n",
    }
    with trio.fail_after(40):
        async with serve(server_config(data_dir, users)) as base, HttpSession(base) as s:
            sid = await upload(
                s, users.alice, files, links={"latest": "data.txt"}, modes={"exp/run.sh": 0o755}
            )
            spec = {"command": JOB_ONE, "shell": True, "snapshot": sid, "cwd": "exp"}
            one = await s.request("POST", "/api/v1/jobs", key=users.alice, json_body=spec)
            assert one.status == 201, one.body
            one_id = one.json()["job"]["id"]
            spec = {"command": JOB_TWO, "shell": True, "snapshot": sid, "cwd": "exp"}
            two = await s.request(
                "POST", "/api/v1/jobs", key=users.alice, json_body={**spec, "depends_on": [one_id]}
            )
            two_id = two.json()["job"]["id"]
            finished = await until_job(s, users.alice, two_id)
            assert finished["state"] == "succeeded", finished
            first = await until_job(s, users.alice, one_id)
            assert first["state"] == "succeeded", first
            assert first["spec"]["snapshot"] == sid
            assert first["spec"]["cwd"] == "exp"
    out_one = data_dir / "jobs" / str(one_id) / "output"
    out_two = data_dir / "jobs" / str(two_id) / "output"
    work_one = data_dir / "jobs" / str(one_id) / "work"
    work_two = data_dir / "jobs" / str(two_id) / "work"
    assert (out_one / "sid").read_text().strip() == sid
    assert same_place((out_one / "pwd").read_text().strip(), work_one / "exp")
    assert (out_one / "ran").read_text() == "ran from exp\n"
    assert (out_one / "link").read_text().strip() == "data.txt"
    assert (out_one / "import").read_text().strip() == "42"
    assert (out_one / "sum").read_text().strip() == sha(original + b"changed by job one\n")
    # The second job's copy, the blobs and the registry are as they were.
    assert (out_two / "sum").read_text().strip() == sha(original)
    assert (out_two / "util").read_text() == "present\n"
    assert (work_two / "data.txt").read_bytes() == original
    blobs = blob_files(data_dir)
    for data in files.values():
        assert blobs[sha(data)].read_bytes() == data
    assert os.stat(work_two / "data.txt").st_ino != os.stat(blobs[sha(original)]).st_ino
    assert os.access(work_two / "exp" / "run.sh", os.X_OK)
    assert not os.access(work_two / "data.txt", os.X_OK)


async def test_client_snapshot_submit_and_run_from_a_subfolder(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    init_repo(project)
    write_tree(
        project,
        {
            ".gitignore": "*.ckpt\n",
            "lib/__init__.py": "NAME = 'lib'\n",
            "exp/train.py": "import os\nprint(os.getcwd())\n",
            "model.ckpt": b"c" * 10_000,
        },
    )
    head = commit_all(project)
    with trio.fail_after(40):
        async with (
            serve(server_config(data_dir, users)) as base,
            connect(base, users.alice) as client,
        ):
            snap = await client.snapshot(project / "exp")
            assert snap.root == project
            assert snap.cwd == "exp"
            assert snap.info.files == 3  # .gitignore, lib/__init__.py, exp/train.py
            assert snap.info.uploaded_bytes is not None
            assert 0 < snap.info.uploaded_bytes < 10_000
            assert snap.provenance.git is not None
            assert (snap.provenance.git.commit, snap.provenance.git.dirty) == (head, False)
            again = await client.snapshot(project / "exp")
            assert (again.id, again.info.uploaded_bytes) == (snap.id, 0)
            job = await client.submit({"command": ["python3", "train.py"], **snap.spec_fields()})
            done = await client.wait(job.id)
            assert done.state == "succeeded", await client.logs(job.id)
            printed = (await client.logs(job.id)).decode().strip()
            work = data_dir / "jobs" / str(job.id) / "work"
            assert same_place(printed, work / "exp")
            run = await client.manifest(job.id)
            assert run.snapshot is not None
            assert (run.snapshot.id, run.snapshot.files) == (snap.id, 3)
            assert run.spec.provenance is not None
            assert run.spec.provenance.git is not None
            assert run.spec.provenance.git.commit == head


async def test_a_large_git_diff_travels_as_an_attachment(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    init_repo(project)
    lines = "".join(f"row {i}\n" for i in range(12_000))
    write_tree(project, {"table.txt": lines})
    commit_all(project)
    (project / "table.txt").write_text(lines.replace("row", "ROW"))
    with trio.fail_after(40):
        # Parts of 1 MiB: the diff (about 200 kB) goes in one request.
        async with serve(server_config(data_dir, users, part_bytes=1 << 20)) as base:
            async with connect(base, users.alice) as client:
                snap = await client.snapshot(project)
            git_info = snap.provenance.git
            assert git_info is not None
            assert git_info.dirty is True
            assert git_info.diff is None
            assert git_info.diff_sha256 is not None
            shown = await http(base, "GET", f"/api/v1/snapshots/{snap.id}", key=users.alice)
            attached = shown.json()["attachments"]["git_diff"]
            assert attached["sha256"] == git_info.diff_sha256
    diff = blob_files(data_dir)[git_info.diff_sha256].read_bytes()
    assert diff.startswith(b"diff --git a/table.txt b/table.txt")
    assert b"+ROW 11999" in diff


async def test_queueing_from_a_folder_of_ignored_files_still_runs_there(
    data_dir: Path, users: Users, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    write_tree(project, {".gitignore": "*.log\n", "train.py": "t", "runs/old.log": "l"})
    with trio.fail_after(30):
        async with (
            serve(server_config(data_dir, users)) as base,
            connect(base, users.alice) as client,
        ):
            snap = await client.snapshot(project / "runs", root=project)
            assert snap.cwd == "runs"
            job = await client.submit({"command": ["pwd"], **snap.spec_fields()})
            done = await client.wait(job.id)
    assert done.state == "succeeded"


@pytest.mark.parametrize("size", [5_000, 3 * PART_BYTES + 7], ids=["packed", "in parts"])
async def test_a_file_that_changes_while_being_sent_is_named(
    data_dir: Path, users: Users, tmp_path: Path, size: int
) -> None:
    """The scan trusted its hash cache (same size, mtime, inode) but the file's bytes changed
    since: the client names the file instead of the server refusing an anonymous blob."""
    project = tmp_path / "proj"
    write_tree(project, {"run.log": RNG.randbytes(size), "train.py": "t"})
    log = project / "run.log"
    old = log.stat().st_mtime_ns - 3600 * 10**9
    os.utime(log, ns=(old, old))
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "fetchml" / "hashes"
    scan_tree(project, cache_dir=cache)  # what the last queue of this project left
    with log.open("r+b") as handle:  # same size, same inode: the cache still matches
        handle.write(RNG.randbytes(64))
    os.utime(log, ns=(old, old))
    with trio.fail_after(60):
        async with (
            serve(server_config(data_dir, users, max_bytes=10_000_000)) as base,
            connect(base, users.alice) as client,
        ):
            with pytest.raises(SnapshotError, match=r"run\.log changed while the project was"):
                await client.snapshot(project)
            alive = await client.whoami()
    assert alive.user == "alice"
