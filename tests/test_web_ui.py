"""The dashboard in a real browser (headless Chromium through selenium) against a real server on
127.0.0.1 with the four users of the role matrix.  One server and one browser for the module;
every wait is bounded.  Skipped, saying why, only where no browser can be installed."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.browser import Browser, api_call, browser_problem, open_browser, wait_for
from helpers.gateway import HIGH_LIMITS, ServerThread, Users, make_server_config

from fetchml.gateway._web import WEB_CSP

problem = browser_problem()
pytestmark = pytest.mark.skipif(problem is not None, reason=f"no headless browser: {problem}")

HOSTILE = "<img src=x onerror=alert(1)>"


class Site:
    def __init__(self, base: str, users: Users, tmp: Path) -> None:
        self.base = base
        self.users = users
        self.tmp = tmp

    def submit(self, key: str, **spec: Any) -> int:
        spec.setdefault("command", ["true"])
        job_id: int = api_call(self.base, "POST", "/api/v1/jobs", key, spec)["job"]["id"]
        return job_id

    def job(self, key: str, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = api_call(self.base, "GET", f"/api/v1/jobs/{job_id}", key)["job"]
        return job


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web")
    users = Users()
    config = make_server_config(tmp, users, limits=HIGH_LIMITS)
    with ServerThread(config) as server:
        yield Site(server.base, users, tmp)


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Browser]:
    with open_browser() as b:
        yield b


@pytest.fixture(autouse=True)
def clean_console(browser: Browser) -> Iterator[None]:
    """No test leaves a CSP violation or a script error in the console."""
    browser.console()
    yield
    bad = [
        e
        for e in browser.console()
        if "Content Security Policy" in e["message"]
        or (e["level"] == "SEVERE" and e.get("source") != "network")
    ]
    assert not bad, bad


def row_text(browser: Browser, job_id: int) -> str:
    return str(
        browser.js(
            "const r = document.querySelector(`#queue-table tr[data-job='${arguments[0]}']`);"
            "return r ? r.textContent : '';",
            job_id,
        )
    )


def wait_marker(path: Path) -> str:
    """Python for a job that waits (at most 20 s) until the test creates ``path``."""
    return (
        "import os, time\n"
        "t = time.time()\n"
        f"while not os.path.exists({str(path)!r}) and time.time() - t < 20: time.sleep(0.02)\n"
    )


def test_bad_key_gets_its_message_then_sign_in_and_out(site: Site, browser: Browser) -> None:
    browser.get(site.base + "/")
    browser.js("sessionStorage.clear()")
    browser.driver.refresh()
    wait_for(lambda: browser.js("return !document.getElementById('signin-view').hidden"))
    browser.js(
        "document.getElementById('signin-key').value = 'not-a-key';"
        "document.getElementById('signin-form').requestSubmit();"
    )
    message = wait_for(lambda: browser.text("#signin-error"), what="the sign-in error")
    assert "invalid API key" in message
    assert browser.js("return sessionStorage.length") == 0
    browser.sign_in(site.base, site.users.alice)
    assert browser.text("#whoami") == "alice (researcher)"
    # The key is in this tab's session storage only: no cookie, nothing in the URL.
    assert browser.js("return sessionStorage.getItem('fetchml.key')") == site.users.alice
    assert browser.js("return document.cookie") == ""
    assert browser.js("return localStorage.length") == 0
    assert site.users.alice not in browser.driver.current_url
    browser.js("document.getElementById('signout').click()")
    wait_for(lambda: browser.js("return !document.getElementById('signin-view').hidden"))
    assert browser.js("return sessionStorage.length") == 0


def test_a_job_submitted_over_the_api_appears_within_a_second(site: Site, browser: Browser) -> None:
    browser.sign_in(site.base, site.users.admin)
    wait_for(lambda: browser.js("return document.querySelector('#queue-table tbody tr') !== null"))
    time.sleep(0.3)  # the subscription is open once the first page is drawn
    started = time.monotonic()
    job_id = site.submit(site.users.bob, name="fresh one", command=["sleep", "0.2"])
    wait_for(lambda: "fresh one" in row_text(browser, job_id), within=1.0, what="the new row")
    assert time.monotonic() - started < 1.0
    assert "bob" in row_text(browser, job_id)
    wait_for(lambda: "succeeded" in row_text(browser, job_id), within=10, what="its end")


def test_the_hostile_job_name_renders_as_text(site: Site, browser: Browser) -> None:
    job_id = site.submit(site.users.admin, name=HOSTILE, tags=[HOSTILE], experiment=HOSTILE)
    browser.sign_in(site.base, site.users.admin)
    browser.js("window.alerted = false; window.alert = () => { window.alerted = true; };")
    wait_for(lambda: HOSTILE in row_text(browser, job_id), what="the hostile row")
    assert browser.js("return document.querySelectorAll('#app img').length") == 0
    browser.get(f"{site.base}/#/job/{job_id}")
    browser.js("window.alerted = false; window.alert = () => { window.alerted = true; };")
    wait_for(lambda: HOSTILE in browser.text(".job-name"), what="the job page")
    assert browser.js("return document.querySelectorAll('#app img').length") == 0
    time.sleep(0.2)
    assert browser.js("return window.alerted") is False


def test_log_lines_stream(site: Site, browser: Browser) -> None:
    marker = site.tmp / "log-go"
    code = (
        "print('first line \\x1b[31mred\\x1b[0m', flush=True)\n"
        + wait_marker(marker)
        + "import sys; sys.stdout.buffer.write(b'bad \\xff utf8\\n')\n"
        + "print('second line', flush=True)\n"
    )
    job_id = site.submit(site.users.alice, name="logger", command=[sys.executable, "-c", code])
    browser.sign_in(site.base, site.users.alice)
    browser.get(f"{site.base}/#/job/{job_id}")
    wait_for(lambda: "first line red" in browser.text("#log"), within=10, what="the first line")
    marker.touch()
    wait_for(lambda: "second line" in browser.text("#log"), within=10, what="the streamed line")
    text = browser.text("#log")
    assert "\x1b" not in text
    assert "bad \ufffd utf8" in text


def test_a_metric_chart_shows_the_logged_points(site: Site, browser: Browser) -> None:
    marker = site.tmp / "metrics-go"
    code = (
        "import json, os\n"
        "f = open(os.environ['FETCHML_TRACK_FILE'], 'a')\n"
        "def log(i):\n"
        "    f.write(json.dumps({'step': i, 'metrics': {'loss': 1 / (i + 1)}}) + '\\n')\n"
        "    f.flush()\n"
        "for i in range(20): log(i)\n" + wait_marker(marker) + "for i in range(20, 30): log(i)\n"
    )
    job_id = site.submit(site.users.alice, name="trainer", command=[sys.executable, "-c", code])
    browser.sign_in(site.base, site.users.alice)
    browser.get(f"{site.base}/#/job/{job_id}")
    wait_for(lambda: browser.js("return !!document.getElementById('tab-metrics')"))
    browser.js("document.getElementById('tab-metrics').click()")
    points = (
        "const c = document.querySelector(\".chart[data-metric='loss']\");"
        "return c ? c.dataset.points : null;"
    )
    wait_for(lambda: browser.js(points) == "20", within=10, what="20 points")
    assert browser.js("return document.querySelectorAll('.chart canvas').length") >= 1
    marker.touch()  # the next 10 arrive live, over the subscription
    wait_for(lambda: browser.js(points) == "30", within=10, what="30 points")


def test_a_researcher_sees_only_their_jobs(site: Site, browser: Browser) -> None:
    bobs = site.submit(site.users.bob, name="bob's secret")
    alices = site.submit(site.users.alice, name="alice's own")
    browser.sign_in(site.base, site.users.alice)
    wait_for(lambda: "alice's own" in row_text(browser, alices), what="alice's job")
    assert row_text(browser, bobs) == ""
    users = browser.js(
        "return [...document.querySelectorAll('#queue-table tbody tr td:nth-child(3)')]"
        ".map(td => td.textContent)"
    )
    assert set(users) == {"alice"}
    assert browser.js("return document.getElementById('filter-user')") is None
    later = site.submit(site.users.bob, name="bob later")
    time.sleep(0.5)  # pushed to bob's subscribers, never to alice's page
    assert row_text(browser, later) == ""


def test_an_analyst_has_no_queue_or_cancel_controls(site: Site, browser: Browser) -> None:
    running = site.submit(site.users.bob, name="long", command=["sleep", "30"])
    wait_for(lambda: site.job(site.users.bob, running)["state"] == "running", within=10)
    browser.sign_in(site.base, site.users.carol)
    wait_for(lambda: "long" in row_text(browser, running), what="bob's job, for carol")
    assert browser.js("return document.getElementById('nav-submit').hidden") is True
    assert browser.js("return document.querySelectorAll('button.cancel').length") == 0
    browser.get(f"{site.base}/#/job/{running}")
    wait_for(lambda: "long" in browser.text(".job-name"))
    assert (
        browser.js("return document.querySelectorAll('button.cancel, button.requeue').length") == 0
    )
    # The admin has them, and cancelling works from the page.
    browser.sign_in(site.base, site.users.admin)
    browser.get(f"{site.base}/#/job/{running}")
    button = "return document.querySelector('.job-head button.cancel')"
    wait_for(lambda: browser.js(button), what="the cancel button")
    browser.js(
        "window.confirm = () => true; document.querySelector('.job-head button.cancel').click()"
    )
    wait_for(lambda: "cancelled" in browser.text(".job-head"), within=10, what="cancelled")


def test_queue_a_job_from_the_form(site: Site, browser: Browser) -> None:
    browser.sign_in(site.base, site.users.alice)
    browser.get(f"{site.base}/#/submit")
    wait_for(lambda: browser.js("return !!document.getElementById('submit-form')"))
    browser.js(
        "document.getElementById('submit-command').value = arguments[0];"
        "document.getElementById('submit-name').value = 'from the form';"
        "document.getElementById('submit-priority').value = '7';"
        "document.getElementById('submit-form').requestSubmit();",
        "echo 'hello there'",
    )
    wait_for(lambda: "#/job/" in browser.driver.current_url, what="the new job's page")
    job_id = int(browser.driver.current_url.rsplit("/", 1)[1])
    job = site.job(site.users.alice, job_id)
    assert job["spec"]["command"] == ["echo", "hello there"]
    assert job["spec"]["priority"] == 7
    wait_for(lambda: "hello there" in browser.text("#log"), within=10, what="its log")


def test_experiment_runs_and_compare(site: Site, browser: Browser) -> None:
    code = (
        "import json, os, sys\n"
        "lr = float(sys.argv[1])\n"
        "with open(os.environ['FETCHML_TRACK_FILE'], 'a') as f:\n"
        "    f.write(json.dumps({'params': {'lr': lr}}) + '\\n')\n"
        "    for i in range(10):\n"
        "        f.write(json.dumps({'step': i, 'metrics': {'acc': lr * i}}) + '\\n')\n"
    )
    ids = [
        site.submit(
            site.users.alice,
            name=f"lr {lr}",
            experiment="sweep-ui",
            command=[sys.executable, "-c", code, str(lr)],
        )
        for lr in (0.1, 0.2)
    ]
    for job_id in ids:

        def ended(j: int = job_id) -> bool:
            return bool(site.job(site.users.alice, j)["state"] == "succeeded")

        wait_for(ended, within=15, what=f"job {job_id} to succeed")
    browser.sign_in(site.base, site.users.alice)
    browser.get(f"{site.base}/#/experiments")
    wait_for(lambda: "sweep-ui" in browser.text(".experiments"), what="the experiment")
    browser.get(f"{site.base}/#/experiments/sweep-ui")
    wait_for(lambda: browser.js("return document.querySelectorAll('input.pick').length") == 2)
    assert "0.2" in browser.text(".runs-table")
    browser.js("document.querySelectorAll('input.pick').forEach(c => c.click())")
    browser.js("document.getElementById('compare-button').click()")
    points = (
        "const c = document.querySelector(\"#compare-charts .chart[data-metric='acc']\");"
        "return c ? c.dataset.points : null;"
    )
    wait_for(lambda: browser.js(points) == "20", within=10, what="both runs' curves")
    assert "lr" in browser.text("table.compare")


def test_the_page_has_its_csp(site: Site, browser: Browser) -> None:
    browser.sign_in(site.base, site.users.admin)
    for view in ("cluster", "experiments", "queue"):
        browser.get(f"{site.base}/#/{view}")
        wait_for(lambda: browser.js("return document.querySelector('#app section') !== null"))
    # The header a browser got (the policy under which everything above ran).
    policy = browser.js_async(
        "const done = arguments[arguments.length - 1];"
        "fetch('/').then(r => done(r.headers.get('content-security-policy')));"
    )
    assert policy == WEB_CSP
