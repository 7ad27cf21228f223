"""Headless Chromium for the real-browser tests: Debian's ``chromium``, driven by playwright.

playwright's own browser download is not used (``playwright install`` needs a CDN): the tests run
the system's Chromium, which ``make browser`` installs (``apt-get install chromium
chromium-driver`` when run as root). ``COURSE_CHROMIUM=/path/to/chrome`` picks another one.
Without playwright or a Chromium the browser tests skip, and :func:`skip_reason` says why.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "COURSE_CHROMIUM"
DEFAULT = "/usr/bin/chromium"  # Debian's package
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def chromium_path() -> str | None:
    """The Chromium executable to drive: ``$COURSE_CHROMIUM``, else ``chromium`` on the PATH."""
    explicit = os.environ.get(ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or (DEFAULT if os.access(DEFAULT, os.X_OK) else None)


def skip_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the dev extras: run `make setup`)"
    if chromium_path() is None:
        where = os.environ.get(ENV) or DEFAULT
        return (f"no Chromium at {where}: run `make browser` (as root it installs Debian's "
                f"chromium and chromium-driver) or set {ENV} to a Chromium executable")
    return None


@contextmanager
def launch() -> Iterator:
    """A headless playwright ``Browser`` running the system Chromium; closed on exit.

    In a test, the test is skipped with :func:`skip_reason` when there is no browser.
    """
    reason = skip_reason()
    if reason:
        import pytest

        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def watch(page, allow: tuple[str, ...] = ()) -> list[str]:
    """Record a page's JavaScript errors, failed loads and requests that leave the machine.

    Args:
        page: a playwright ``Page``, before it loads anything.
        allow: URL prefixes that count as local besides ``file:`` and ``data:`` (e.g. the
            ``http://127.0.0.1:<port>/`` of a test server).

    Returns:
        A list that fills up while the page lives: ``"page error: ..."``, ``"failed: <url>
        (<why>)"``, ``"remote request: <url>"``. Empty means the page loaded everything it
        asked for from local files and raised nothing.
    """
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("requestfailed",
            lambda req: problems.append(f"failed: {req.url[:200]} ({req.failure})"))
    local = LOCAL_SCHEMES + tuple(allow)
    page.on("request", lambda req: None if req.url.startswith(local)
            else problems.append(f"remote request: {req.url[:200]}"))
    return problems


def screenshot(page, path: Path, tolerance: float = 0.002) -> bool:
    """Save a PNG of what the page shows now, unless ``path`` already shows the same.

    Two renderings of a page differ by a few pixels (an animation caught in another frame), so
    a committed screenshot is rewritten only when it changed visibly: when the mean absolute
    difference of the pixels (0 to 1) exceeds ``tolerance`` or the size differs.

    Returns:
        Whether the file was (re)written.
    """
    import matplotlib.image
    import numpy as np

    png = page.screenshot()
    if path.is_file():
        old = matplotlib.image.imread(path)
        new = matplotlib.image.imread(io.BytesIO(png))
        if old.shape == new.shape and float(np.abs(old - new).mean()) <= tolerance:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return True
