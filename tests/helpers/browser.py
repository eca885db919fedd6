"""A headless Chromium driven by selenium, for the dashboard's tests and benchmarks.

Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when missing and it
can); :func:`browser_problem` says why none can be started here, for a skip that names it.  The
browser logs its console (``goog:loggingPrefs``), so a test can check that no CSP violation or
script error happened.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = [
    "Browser",
    "api_call",
    "browser_problem",
    "open_browser",
    "wait_for",
]

T = TypeVar("T")
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_problem() -> str | None:
    """Why no headless browser can run here (None: one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _which(CHROMIUM) is None or _which(DRIVER) is None:
        return (
            "chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver)"
        )
    return None


class Browser:
    """One Chromium for a test module: a page per test, its console read between tests."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def js_async(self, script: str, *args: Any) -> Any:
        """Run ``script``, whose last argument is the callback to call with the result."""
        return self.driver.execute_async_script(script, *args)

    def console(self) -> list[dict[str, Any]]:
        """The console entries since the last call (errors, warnings, CSP reports)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        return entries

    def text(self, css: str) -> str:
        """The text of the first element matching ``css`` ('' if none)."""
        found = self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css
        )
        return str(found)

    def sign_in(self, base: str, key: str) -> None:
        """Open the dashboard with an empty session and sign in with ``key`` (waits for it)."""
        self.get(base + "/#/queue")
        self.js("sessionStorage.clear()")
        self.driver.refresh()
        wait_for(lambda: self.js("return !document.getElementById('signin-view').hidden"))
        self.js(
            "document.getElementById('signin-key').value = arguments[0];"
            "document.getElementById('signin-form').requestSubmit();",
            key,
        )
        wait_for(lambda: self.js("return !document.getElementById('app').hidden"), what="sign-in")

    def screenshot(self, path: str) -> None:
        self.driver.save_screenshot(path)


def wait_for(
    check: Callable[[], T], *, within: float = 5.0, every: float = 0.02, what: str = "condition"
) -> T:
    """Call ``check`` until it returns something true; that.  AssertionError after ``within``."""
    deadline = time.monotonic() + within
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what} (last: {last!r})")
        time.sleep(every)


@contextlib.contextmanager
def open_browser(width: int = 1400, height: int = 900) -> Iterator[Browser]:
    """A headless Chromium (new headless mode, no sandbox: tests run as root in containers)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    binary = _which(CHROMIUM)
    assert binary is not None
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "OFF"})
    service = Service(executable_path=_which(DRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    try:
        yield Browser(driver)
    finally:
        driver.quit()


def api_call(base: str, method: str, path: str, key: str, body: Any = None) -> Any:
    """One HTTP API request with ``key`` (JSON in, JSON out); raises on an error status."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")
