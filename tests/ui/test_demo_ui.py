"""`soulstone demo --ui`: watch the demo's real engines start and swap live in a browser."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from conftest import kill_recorded
from gateway_harness import SCRIPT
from helpers import terminate
from real_engines import llama_server
from soulstone.runtimes.state import StateFolder
from ui.browser_pages import VIEWPORT, go, open_page

pytestmark = pytest.mark.engine


def test_demo_ui_shows_the_engines_start_and_swap(tmp_path: Path, browser: Browser) -> None:
    cache = str(llama_server().parents[2])  # built by scripts/build-llama-server
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOULSTONE_", "XDG_"))}
    env |= {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_STATE_HOME": str(tmp_path / "state"),
            "SOULSTONE_BUILD_CACHE": cache, "SOULSTONE_DEFAULT_RUNTIME": "process",
            "SOULSTONE_TEST_SESSION": os.environ.get("SOULSTONE_TEST_SESSION", "")}  # fmt: skip
    errors = (tmp_path / "demo.err").open("wb")
    pipe = subprocess.PIPE
    demo = subprocess.Popen([str(SCRIPT), "demo", "--ui", "--no-open"], env=env, stdin=pipe,
                            stdout=pipe, stderr=errors)  # fmt: skip
    assert demo.stdin is not None and demo.stdout is not None
    context = browser.new_context(viewport=VIEWPORT)
    try:
        url = demo.stdout.readline().decode().strip()  # the URL comes first on stdout
        assert url.startswith("http://127.0.0.1:"), (tmp_path / "demo.err").read_text()
        page = open_page(context, url)
        go(page, "timeline")
        demo.stdin.write(b"\n")  # Enter: the demo asks both engines
        demo.stdin.flush()
        swap = page.locator("#timeline li[data-kind=swap]").filter(
            has=page.locator("[data-role=stopped]"))  # fmt: skip
        expect(swap).to_have_count(1, timeout=120_000)
        expect(swap.locator("[data-role=stopped]")).to_have_text("north.tiny-north")
        expect(swap.locator("[data-role=started]")).to_have_text("south.tiny-south")
        expect(page.locator("#timeline li[data-kind=request]")).to_have_count(2)
        page.screenshot(path=str(tmp_path / "demo-timeline.png"), animations="disabled")
        demo.stdin.write(b"\n")  # Enter: the demo stops its gateway and engines
        demo.stdin.close()
        assert demo.wait(timeout=120) == 0, (tmp_path / "demo.err").read_text()
        rest = demo.stdout.read().decode()
        assert "tiny-south answered" in rest and "swapping the other out" in rest
    finally:
        context.close()
        terminate(demo, 30)
        errors.close()
        kill_recorded(StateFolder(tmp_path / "state" / "soulstone" / "demo"))
