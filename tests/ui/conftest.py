"""A real browser for the dashboard's tests: Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright


def chromium_path() -> Path:
    """The system chromium (scripts/get-chromium); a skip without it (a failure in CI)."""
    found = shutil.which("chromium")
    if found is not None:
        return Path(found)
    message = "chromium is missing: run scripts/get-chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium, launched once per test module and closed after it."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), headless=True)
        try:
            yield launched
        finally:
            launched.close()
