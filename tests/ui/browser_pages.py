"""Driving the dashboard's pages in a browser: open, go to a page, screenshot them all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, ViewportSize

PAGES = {  # page -> what shows it has rendered
    "engines": "#engines-table",
    "timeline": "#timeline",
    "queue": "#queue-table",
    "adapters": "#page-adapters .card",
    "councils": "#page-councils .card",
    "logs": "#page-logs .card",
}
VIEWPORT: ViewportSize = {"width": 1360, "height": 860}
SCREENSHOTS_ENV = "SOULSTONE_SCREENSHOTS"  # a folder: the screenshots are copied there too


def open_page(context: BrowserContext, url: str) -> Page:
    """Open the printed URL and wait until the dashboard has loaded who we are."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("body[data-ready=yes]")
    assert not errors, errors
    return page


def go(page: Page, name: str) -> None:
    """Click a page's link in the navigation and wait for it to render."""
    page.click(f"nav a[data-page={name}]")
    page.wait_for_selector(f"#page-{name}:not([hidden])")
    page.wait_for_selector(PAGES[name], state="attached")


def screenshots(page: Page, folder: Path, prefix: str = "dashboard") -> list[Path]:
    """A screenshot of every page into `folder` (and into $SOULSTONE_SCREENSHOTS when set)."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = []
    for name in PAGES:
        go(page, name)
        path = folder / f"{prefix}-{name}.png"
        page.screenshot(path=str(path), animations="disabled")
        taken.append(path)
    keep = os.environ.get(SCREENSHOTS_ENV)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for path in taken:
            shutil.copy(path, Path(keep) / path.name)
    return taken
