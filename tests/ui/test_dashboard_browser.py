"""The dashboard in a real browser (headless chromium) in front of fake engines."""

from __future__ import annotations

import json
import time
from pathlib import Path

from playwright.sync_api import Browser, expect

from dashboard_helpers import CSRF_HEADER, base_of, minted_url, printed_url
from gateway_harness import StartGateway, fake_codex, fake_table, keyed, write_councils
from lora_helpers import write_adapter
from ui.browser_pages import PAGES, VIEWPORT, go, open_page, screenshots

COUNCIL = """
[persona.maat]
model = "m-a"
system = "[[delay=200]] [[say=balance]]"
[persona.lilith]
model = "m-a"
system = "[[say=shadow]]"
[persona.broken]
model = "m-a"
system = "[[fail=500]]"
[persona.thoth]
model = "m-a"
system = "[[echo]]"

[council.pantheon]
personas = ["maat", "lilith", "broken"]
aggregator = "thoth"
quorum = 2
"""


def test_the_token_opens_a_session_and_every_page_renders(
    tmp_path: Path, start_gateway: StartGateway, browser: Browser
) -> None:
    codex = fake_codex(tmp_path / "codex", fake_table("alpha", model="m-a", group="left"),
                       fake_table("beta", model="m-b", group="right"))  # fmt: skip
    councils = write_councils(tmp_path / "councils", COUNCIL)
    gateway = start_gateway(codex, "--councils", str(councils), clients=None, tcp=False)
    url = printed_url(gateway)
    base = base_of(url)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = open_page(context, url)
        assert page.url == f"{base}/"  # the token is gone from the address bar
        [cookie] = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["domain"] == "127.0.0.1"
        expect(page.locator("#role")).to_have_text("admin")
        rows = page.locator("#engines-table tbody tr")
        expect(rows).to_have_count(2)
        assert rows.evaluate_all("rows => rows.map(r => r.dataset.soulstone)") == ["alpha", "beta"]
        expect(page.locator("#conflict-graph .edge-conflict")).to_have_count(1)
        go(page, "timeline")
        expect(page.locator("#live")).to_have_attribute("data-live", "on")
        with gateway.http() as http:
            answer = http.post("/v1/chat/completions", headers={"X-Request-ID": "in-browser-1"},
                               json={"model": "m-b", "messages": []})  # fmt: skip
        answered = time.monotonic()
        assert answer.status_code == 200
        arrived = page.locator('#timeline li[data-kind=request][data-id="in-browser-1"]')
        expect(arrived).to_be_visible(timeout=2000)  # live, without a reload
        assert time.monotonic() - answered < 2
        expect(arrived).to_contain_text("m-b")
        go(page, "councils")
        with gateway.http() as http:
            run = http.post("/v1/council/pantheon", headers={"X-Request-ID": "run-1"},
                            json={"messages": [{"role": "user", "content": "why?"}]})  # fmt: skip
        assert run.status_code == 200, run.text
        card = page.locator('[data-council-run="run-1"]')
        expect(card).to_be_visible(timeout=2000)
        expect(card.locator(".persona-row")).to_have_count(4)  # three members, the aggregator
        expect(card.locator('[data-persona="broken"]')).to_contain_text("500")
        expect(card.locator('[data-persona="maat"]')).to_contain_text("answered")
        taken = screenshots(page, tmp_path / "screenshots")
        assert [p.name for p in taken] == [f"dashboard-{name}.png" for name in PAGES]
        assert all(p.stat().st_size > 10_000 for p in taken)
    finally:
        context.close()
    stranger = browser.new_context()
    try:
        page = stranger.new_page()
        response = page.goto(f"{base}/")
        assert response is not None and response.status == 401
        response = page.goto(url)  # the token was used: void
        assert response is not None and response.status == 401
        assert stranger.request.get(f"{base}/api/engines").status == 401
    finally:
        stranger.close()


def test_a_view_only_client_gets_no_buttons_and_403_from_the_actions(
    tmp_path: Path, start_gateway: StartGateway, browser: Browser
) -> None:
    codex = fake_codex(tmp_path / "codex", fake_table("alpha", model="m-a", group="left"),
                       fake_table("beta", model="m-b", group="right"))  # fmt: skip
    key, viewer = keyed("viewer")
    gateway = start_gateway(codex, clients={"clients": viewer}, tcp=False)
    url = minted_url(gateway, key)
    base = base_of(url)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = open_page(context, url)
        expect(page.locator("#role")).to_have_text("view only")
        expect(page.locator("#engines-table tbody tr")).to_have_count(2)
        for name in PAGES:
            go(page, name)
            expect(page.locator("button[data-action]")).to_have_count(0)
        expect(page.locator("#page-logs")).to_contain_text("only admin clients")
        csrf = context.request.get(f"{base}/api/me").json()["csrf"]
        headers = {CSRF_HEADER: csrf, "Origin": base}
        for action in ("/api/engines/alpha/up", "/api/engines/beta/down",
                       "/api/adapters/x/load", "/api/adapters/x/unload"):  # fmt: skip
            refused = context.request.post(f"{base}{action}", headers=headers)
            assert refused.status == 403, action
            assert refused.json()["error"]["code"] == "ADMIN_ONLY"
        screenshots(page, tmp_path / "screenshots", prefix="view-only")
    finally:
        context.close()


def test_an_admin_loads_and_unloads_adapters_with_a_confirmation(
    tmp_path: Path, start_gateway: StartGateway, browser: Browser
) -> None:
    table = fake_table("base", model="base", extra=(
        'engine = "vllm"\nmodel_path = "/models/tiny-llama"\n'
        "lora = { max_loras = 1, max_lora_rank = 8 }"
    ))  # fmt: skip
    gateway = start_gateway(fake_codex(tmp_path / "codex", table), clients=None, tcp=False)
    for name in ("lilith", "maat"):
        added = gateway.cli("lora", "add", name, str(write_adapter(tmp_path / name)),
                            "--base", "base")  # fmt: skip
        assert added.returncode == 0, added.stderr
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = open_page(context, printed_url(gateway))
        go(page, "adapters")
        row = page.locator('#page-adapters tr[data-adapter="lilith"]')
        expect(row.locator("[data-state]")).to_have_attribute("data-state", "cold")
        row.locator("button[data-action=load]").click()
        expect(page.locator("#confirm-text")).to_contain_text("Load lilith")
        page.click("#confirm-cancel")  # cancelled: nothing happens
        expect(page.locator("#confirm")).to_be_hidden()
        expect(row.locator("[data-state]")).to_have_attribute("data-state", "cold")
        row.locator("button[data-action=load]").click()
        page.click("#confirm-ok")
        expect(row.locator("[data-state]")).to_have_attribute("data-state", "hot", timeout=30_000)
        other = page.locator('#page-adapters tr[data-adapter="maat"]')
        other.locator("button[data-action=load]").click()
        page.click("#confirm-ok")  # one slot: lilith is evicted for maat
        expect(other.locator("[data-state]")).to_have_attribute("data-state", "hot")
        expect(row.locator("[data-state]")).not_to_have_attribute("data-state", "hot")
        recent = page.locator("#page-adapters .timeline li")
        expect(recent.filter(has_text="evict")).to_have_count(1)
        other.locator("button[data-action=unload]").click()
        page.click("#confirm-ok")
        expect(other.locator("[data-state]")).not_to_have_attribute("data-state", "hot")
        listed = gateway.cli("lora", "list", "--json")
        assert {a["name"]: a["state"] for a in json.loads(listed.stdout)["adapters"]} == {
            "lilith": "warm", "maat": "warm"}  # fmt: skip
        screenshots(page, tmp_path / "screenshots", prefix="adapters")
    finally:
        context.close()
