"""Headless Chromium for the app's browser tests (playwright driving the system's /usr/bin/chromium)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required")  # fmt: skip


@contextlib.contextmanager
def chromium():
    """(playwright's sync_api, a launched browser); skips the test without playwright or chromium."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("headless chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=list(ARGS))
        try:
            yield sync_api, browser
        finally:
            browser.close()
