"""A real headless browser for tests and `make screenshots`: Debian's chromium driven by Playwright.

No browser build is downloaded: Playwright launches the system's chromium (`make browser`
installs it from Debian's packages). Where it is missing a test is skipped with that
reason, which the skip policy turns into a failure under CI=true (tests/skip_policy.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> Path | None:
    """The system's chromium, or None."""
    named = os.environ.get("LORAFLOW_CHROMIUM")
    for candidate in ([named] if named else []) + list(CHROMIUM_PATHS):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which("chromium")
    return Path(found) if found else None


def require_chromium() -> Path:
    """The chromium path, else a skip naming `make browser` (a failure under CI=true: the skip
    policy allows only GPU-only skips there)."""
    import pytest

    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (run `make browser`)")
    return path


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 900) -> Iterator:
    """A Playwright page in headless chromium (the sync API), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("Debian's chromium is not installed (run `make browser`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable),
            # root in a container: chromium's sandbox needs user namespaces it may not have
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


class PageFailures:
    """Everything that goes wrong in a page, one line each, in order, each once: `HTTP <status>
    <url>` for a response >= 400 (also the ones only chromium's console reports, e.g. the tab
    icon), `failed <url>: <reason>` for a request that got no answer (refused, blocked, offline),
    `console: <text>` for any other console error, `page error: <message>` for an uncaught
    exception. `take()` returns the lines since the last call. A line seen once is not added
    again: chromium's console repeats what the response already said, often after it."""

    _LOAD = re.compile(
        r"Failed to load resource: (?:the server responded with a status of (\d+)|(\S+))"
    )

    def __init__(self, page):
        self._lines: list[str] = []
        self._seen: set[str] = set()
        page.on("response", lambda r: r.status >= 400 and self._add(f"HTTP {r.status} {r.url}"))
        page.on("requestfailed", lambda r: self._add(f"failed {r.url}: {r.failure}"))
        page.on("console", self._console)
        page.on("pageerror", lambda error: self._add(f"page error: {error}"))

    def take(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines

    def _console(self, message) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        load = self._LOAD.match(message.text)
        if load and load[1]:
            self._add(f"HTTP {load[1]} {url}")
        elif load:
            self._add(f"failed {url}: {load[2]}")
        else:
            self._add(f"console: {message.text}" + (f" ({url})" if url else ""))

    def _add(self, line: str) -> None:
        if line not in self._seen:
            self._seen.add(line)
            self._lines.append(line)
