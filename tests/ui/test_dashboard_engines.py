"""The dashboard in a real browser in front of two real llama-server engines that conflict."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from dashboard_helpers import printed_url
from gateway_harness import RunningGateway, StartGateway
from helpers import free_port, write
from real_engines import llama_table
from ui.browser_pages import VIEWPORT, go, open_page, screenshots

pytestmark = pytest.mark.engine

# llama-server logs the timings of every request it answers ("... | total time = ...").
ANSWER_LINES = "() => [...document.querySelectorAll('#log-view .line')]" \
               ".filter(l => l.textContent.includes('total time')).length"  # fmt: skip


def chat(gateway: RunningGateway, model: str, request_id: str) -> float:
    """One chat request through the Unix socket; when it was answered (monotonic)."""
    with gateway.http() as http:
        answer = http.post("/v1/chat/completions", headers={"X-Request-ID": request_id},
                           json={"model": model, "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return time.monotonic()


def state_of(page: Page, soulstone: str) -> str:
    return str(page.locator(f'#engines-table tr[data-soulstone="{soulstone}"] '
                            ".engine-state [data-state]").get_attribute("data-state"))  # fmt: skip


def test_engines_timeline_swap_logs_and_down_in_a_browser(
    tmp_path: Path, start_gateway: StartGateway, browser: Browser
) -> None:
    codex = write(tmp_path / "codex", {"llama.toml": "\n".join([
        llama_table("north", "tiny-north", "n", f"port = {free_port()}"),
        llama_table("south", "tiny-south", "s", f'socket = "{tmp_path / "south.sock"}"'),
    ])})  # fmt: skip
    gateway = start_gateway(codex, clients=None, tcp=False)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = open_page(context, printed_url(gateway))
        rows = page.locator("#engines-table tbody tr")
        expect(rows).to_have_count(2)
        assert rows.evaluate_all("rows => rows.map(r => r.dataset.soulstone)") == ["north", "south"]
        expect(page.locator("#conflict-graph .edge-conflict")).to_have_count(1)

        # A request appears on the timeline within 2 s of its answer, with no reload.
        go(page, "timeline")
        answered = chat(gateway, "tiny-north", "dash-north-1")
        request = page.locator('#timeline li[data-kind=request][data-id="dash-north-1"]')
        expect(request).to_be_visible(timeout=2000)
        assert time.monotonic() - answered < 2
        expect(request).to_contain_text("tiny-north")

        # The swap it causes shows what stopped and what started.
        answered = chat(gateway, "tiny-south", "dash-south-1")
        expect(page.locator('#timeline li[data-id="dash-south-1"]')).to_be_visible(timeout=2000)
        swap = page.locator("#timeline li[data-kind=swap]").filter(
            has=page.locator("[data-role=stopped]"))  # fmt: skip
        expect(swap).to_have_count(1)
        expect(swap.locator("[data-role=stopped]")).to_have_text("north")
        expect(swap.locator("[data-role=started]")).to_have_text("south")

        # An engine's log line appears in the log view while following.
        go(page, "logs")
        page.select_option("#log-soulstone", "south")
        expect(page.locator("#log-status")).to_have_text("following")
        before = page.evaluate(ANSWER_LINES)
        chat(gateway, "tiny-south", "dash-south-2")
        page.wait_for_function(f"n => ({ANSWER_LINES})() > n", arg=before, timeout=10_000)

        shots = screenshots(page, tmp_path / "screenshots")
        assert len(shots) == 6

        # An admin clicks "Down": the page and `soulstone status` agree it stopped.
        go(page, "engines")
        assert state_of(page, "south") == "running"
        page.click('#engines-table tr[data-soulstone="south"] button[data-action=down]')
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm-text")).to_contain_text("Stop south?")
        page.click("#confirm-ok")
        stopped = page.locator('#engines-table tr[data-soulstone="south"] '
                               '.engine-state [data-state="stopped"]')  # fmt: skip
        expect(stopped).to_be_visible(timeout=30_000)
        status = gateway.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        states = {s["id"]: s["state"] for s in json.loads(status.stdout)["soulstones"]}
        assert states == {"north": "stopped", "south": "stopped"}
        expect(page.locator('#engines-table tr[data-soulstone="south"] '
                            "button[data-action=up]")).to_be_enabled()  # fmt: skip
    finally:
        context.close()
