"""The dashboard as the server ships it, without a browser: the page and its assets (CSP,
caching, compression), a log read by byte range, and the list filters the queue view uses."""

from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

import pytest
from helpers.gateway import HIGH_LIMITS, HttpSession, Users, make_server_config, serve, until_job

from fetchml.gateway._web import WEB_CSP
from fetchml.web import STATIC_DIR, load_assets

ENDED = ("succeeded", "failed", "cancelled", "timed_out")
# What the page may never contain: inline code, handlers, eval, string timers.
# What our scripts never use: HTML parsing of strings, eval, storage beyond the session's.
FORBIDDEN_JS = (
    "innerHTML",
    "outerHTML",
    "insertAdjacentHTML",
    "document.write",
    "eval(",
    "new Function",
    "localStorage.",
    "document.cookie",
)
INLINE = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>|<style|\son[a-z]+=|style=", re.IGNORECASE)


@pytest.fixture
def users() -> Users:
    return Users()


def test_assets_are_versioned_by_their_contents(tmp_path: Path) -> None:
    assets = load_assets()
    assert re.fullmatch(r"[0-9a-f]{16}", assets.version)
    assert f"static/{assets.version}/js/main.js".encode() in assets.index.body
    assert "vendor/uplot/uPlot.esm.js" in assets.files
    assert "vendor/uplot/LICENSE" in assets.files
    for name, asset in assets.files.items():
        if asset.gzipped is not None:
            assert gzip.decompress(asset.gzipped) == asset.body, name
    # Another file, another version.
    copy = tmp_path / "static"
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(STATIC_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (copy / "js" / "dom.js").write_text("// changed\n")
    assert load_assets(copy).version != assets.version


def test_no_inline_code_and_no_eval_in_our_files() -> None:
    for path in STATIC_DIR.rglob("*"):
        if not path.is_file() or "vendor" in path.parts:
            continue
        data = path.read_bytes()
        if path.suffix == ".html":
            assert not INLINE.search(data), path
        if path.suffix == ".js":
            text = data.decode()
            for banned in FORBIDDEN_JS:
                assert banned not in text, (path, banned)


async def test_page_and_assets_headers(tmp_path: Path, users: Users) -> None:
    assets = load_assets()
    async with serve(make_server_config(tmp_path, users)) as base, HttpSession(base) as s:
        page = await s.request("GET", "/", headers=[("Accept-Encoding", "gzip, br")])
        assert page.status == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == WEB_CSP
        assert "script-src 'self'" in WEB_CSP
        assert "unsafe" not in WEB_CSP
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["content-encoding"] == "gzip"
        assert assets.version.encode() in gzip.decompress(page.body)

        again = await s.request("GET", "/", headers=[("If-None-Match", page.headers["etag"])])
        assert again.status == 304

        path = f"/static/{assets.version}/js/main.js"
        script = await s.request("GET", path)
        assert script.status == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "content-encoding" not in script.headers  # not asked for
        assert script.body == assets.files["js/main.js"].body

        old = await s.request("GET", "/static/0000000000000000/js/main.js")
        assert old.status == 200
        assert old.headers["cache-control"] == "no-cache"
        missing = await s.request("GET", f"/static/{assets.version}/js/nope.js")
        assert missing.status == 404
        assert missing.error["code"] == "not_found"
        outside = await s.request("GET", f"/static/{assets.version}/../__init__.py")
        assert outside.status == 404
        # The API keeps its own, stricter policy.
        health = await s.request("GET", "/health")
        assert health.headers["content-security-policy"].startswith("default-src 'none'")


def test_first_load_is_small() -> None:
    """What the sign-in page needs (HTML, CSS, the modules main.js imports at once), gzipped."""
    assets = load_assets()
    first = ["css/app.css", "vendor/uplot/uPlot.min.css", "js/main.js", "js/api.js", "js/dom.js"]
    total = len(assets.index.gzipped or assets.index.body)
    total += sum(len(assets.files[n].gzipped or assets.files[n].body) for n in first)
    assert total < 150_000, total


async def test_log_byte_ranges(tmp_path: Path, users: Users) -> None:
    code = "import sys; sys.stdout.buffer.write(b''.join(b'line %05d\\n' % i for i in range(5000)))"
    config = make_server_config(tmp_path, users, limits=HIGH_LIMITS)
    async with serve(config) as base, HttpSession(base) as s:
        response = await s.request(
            "POST",
            "/api/v1/jobs",
            key=users.alice,
            json_body={"command": [sys.executable, "-c", code]},
        )
        job_id = response.json()["job"]["id"]
        await until_job(s, users.alice, job_id, ENDED, 20)
        logs = f"/api/v1/jobs/{job_id}/logs"
        tail = await s.request("GET", logs, key=users.alice, headers=[("Range", "bytes=-22")])
        assert tail.status == 206
        assert tail.body == b"line 04998\nline 04999\n"
        assert tail.headers["content-range"] == "bytes 54978-54999/55000"
        part = await s.request("GET", logs, key=users.alice, headers=[("Range", "bytes=0-10")])
        assert (part.status, part.body) == (206, b"line 00000\n")
        past = await s.request("GET", logs, key=users.alice, headers=[("Range", "bytes=90000-")])
        assert past.status == 416
        assert past.headers["content-range"] == "bytes */55000"
        # Bob may not see alice's job: the same 404 as without a range.
        hidden = await s.request("GET", logs, key=users.bob, headers=[("Range", "bytes=-10")])
        assert hidden.status == 404
        longer = await s.request(
            "GET", logs, key=users.alice, headers=[("Range", "bytes=-1000000")]
        )
        assert longer.status == 206
        assert longer.headers["content-range"] == "bytes 0-54999/55000"
        # Hostile ranges: not one byte range is the whole log; past any size is 416.
        for hostile, status in (
            ("bytes=abc", 206),
            ("items=0-10", 206),
            ("bytes=0-1,5-9", 206),
            (f"bytes={2**70}-", 416),
            (f"bytes=-{2**70}", 206),
            ("bytes=10-5", 206),
        ):
            answer = await s.request("GET", logs, key=users.alice, headers=[("Range", hostile)])
            assert answer.status == status, (hostile, answer.status)
        alive = await s.request("GET", "/api/v1/whoami", key=users.alice)
        assert alive.status == 200
        # A job that has not started has no log yet: no bytes, not an error.
        blocker = await s.request(
            "POST", "/api/v1/jobs", key=users.alice, json_body={"command": ["sleep", "30"]}
        )
        blocker_id = blocker.json()["job"]["id"]
        waiting = await s.request(
            "POST",
            "/api/v1/jobs",
            key=users.alice,
            json_body={"command": ["true"], "depends_on": [blocker_id]},
        )
        empty_logs = f"/api/v1/jobs/{waiting.json()['job']['id']}/logs"
        empty = await s.request(
            "GET", empty_logs, key=users.alice, headers=[("Range", "bytes=-10")]
        )
        assert (empty.status, empty.body) == (200, b"")
        await s.request("POST", f"/api/v1/jobs/{blocker_id}/cancel", key=users.alice)
        whole = await s.request("GET", logs, key=users.alice)
        assert whole.status == 200
        assert len(whole.body) == 55000


async def test_list_filters_experiment_tag_and_name(tmp_path: Path, users: Users) -> None:
    config = make_server_config(tmp_path, users, limits=HIGH_LIMITS)
    specs = [
        {"name": "Train ResNet", "experiment": "vision", "tags": ["gpu", "long"]},
        {"name": "train bert", "experiment": "nlp", "tags": ["gpu"]},
        {"name": "eval", "experiment": "vision", "tags": []},
    ]
    async with serve(config) as base, HttpSession(base) as s:
        for spec in specs:
            body = {"command": ["true"], **spec}
            response = await s.request("POST", "/api/v1/jobs", key=users.alice, json_body=body)
            assert response.status == 201

        async def names(query: str) -> list[str]:
            response = await s.request("GET", f"/api/v1/jobs?{query}", key=users.alice)
            assert response.status == 200, response.body
            return [job["spec"]["name"] for job in response.json()["jobs"]]

        assert await names("experiment=vision") == ["eval", "Train ResNet"]
        assert await names("tag=gpu") == ["train bert", "Train ResNet"]
        assert await names("name=TRAIN") == ["train bert", "Train ResNet"]
        assert await names("name=train&tag=long") == ["Train ResNet"]
        assert await names("experiment=vision&limit=1") == ["eval"]
        assert await names("tag=nope") == []
        too_long = await s.request("GET", "/api/v1/jobs?name=" + "x" * 251, key=users.alice)
        assert too_long.status == 400
        assert too_long.error["field"] == "name"
        # Bob sees none of alice's jobs, whatever he filters on.
        response = await s.request("GET", "/api/v1/jobs?tag=gpu", key=users.bob)
        assert response.json()["jobs"] == []
