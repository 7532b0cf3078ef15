"""The dashboard's listener over HTTP: the token, the cookie, who may act, the live feed (C11)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx2

from dashboard_helpers import (
    CSRF_HEADER,
    base_of,
    dashboard_session,
    listening_addresses,
    minted_url,
    printed_url,
    read_events,
)
from gateway_harness import SCRIPT, StartGateway, fake_codex, fake_table, keyed
from soulstone.guard.audit import socket_inodes, tcp_listeners

PAGES_AND_API = ("/", "/assets/app.js", "/api/me", "/api/engines", "/api/timeline",
                 "/api/events", "/api/logs/alpha", "/nowhere")  # fmt: skip


def two_engines(folder: Path) -> Path:
    """Two fake engines in groups that may not run together."""
    return fake_codex(folder, fake_table("alpha", model="m-a", group="left"),
                      fake_table("beta", model="m-b", group="right"))  # fmt: skip


def test_the_printed_url_trades_its_token_once_for_a_cookie_on_a_clean_url(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(two_engines(tmp_path / "codex"), clients=None, tcp=False)
    ours = set(tcp_listeners())
    assert not socket_inodes(gateway.process.pid) & ours  # never on by default: no TCP at all
    url = printed_url(gateway)
    base = base_of(url)
    for path in PAGES_AND_API:  # without the token or a session, every path is 401
        assert httpx2.get(f"{base}{path}").status_code == 401, path
    assert httpx2.post(f"{base}/api/engines/alpha/up").status_code == 401
    with httpx2.Client(follow_redirects=False) as browser:
        redeemed = browser.get(url)
        assert redeemed.status_code == 302 and redeemed.headers["location"] == "/"
        cookie = redeemed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        me = browser.get(f"{base}/api/me").json()
        assert me["client"] == "owner" and me["admin"] is True and me["csrf"]
        page = browser.get(f"{base}/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        script = browser.get(f"{base}/assets/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert browser.get(f"{base}/assets/../serve.py").status_code == 404
    assert httpx2.get(url, follow_redirects=False).status_code == 401  # used: void
    again = printed_url(gateway)  # one listener; a new token each time
    assert base_of(again) == base and again != url


def test_the_listener_binds_loopback_only(tmp_path: Path, start_gateway: StartGateway) -> None:
    gateway = start_gateway(two_engines(tmp_path / "codex"), clients=None, tcp=False)
    url = printed_url(gateway)
    port = int(base_of(url).rsplit(":", 1)[1])
    assert listening_addresses(port) == ["127.0.0.1"]
    inodes = socket_inodes(gateway.process.pid) & set(tcp_listeners())
    assert [tcp_listeners()[i] for i in inodes] == [f"tcp port {port}"]  # nothing else on TCP
    taken = gateway.cli("ui", "--no-open", "--port", str(port + 1 if port < 65535 else 1024))
    assert taken.returncode != 0 and f"already listens on port {port}" in taken.stderr


def test_another_host_and_another_origin_are_refused(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(two_engines(tmp_path / "codex"), clients=None, tcp=False)
    with dashboard_session(printed_url(gateway)) as ui:
        rebound = ui.http.get(f"{ui.base}/api/me", headers={"Host": "evil.example"})
        assert rebound.status_code == 403 and "WRONG_HOST" in rebound.text
        no_csrf = ui.http.post(f"{ui.base}/api/engines/alpha/up", headers={"Origin": ui.base})
        assert no_csrf.status_code == 403 and "CROSS_ORIGIN" in no_csrf.text
        other_site = ui.post("/api/engines/alpha/up", Origin="http://evil.example")
        assert other_site.status_code == 403
        referer_only = ui.http.post(f"{ui.base}/api/engines/alpha/up",
                                    headers={CSRF_HEADER: ui.me["csrf"],
                                             "Referer": "http://evil.example/x"})  # fmt: skip
        assert referer_only.status_code == 403
        assert gateway.cli("status", "--json").stdout.count('"stopped"') == 2  # nothing moved
        started = ui.post("/api/engines/alpha/up")
        assert started.status_code == 200, started.text
        assert started.json() == {"up": ["alpha"]}
        assert ui.get("/api/engines").json()["soulstones"][0]["state"] == "running"
        assert ui.post("/api/engines/nobody/down").status_code == 404


def test_a_view_only_client_sees_but_may_not_act(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    key, viewer = keyed("viewer")
    gateway = start_gateway(two_engines(tmp_path / "codex"), clients={"clients": viewer},
                            with_harness=True, tcp=False)  # fmt: skip
    with gateway.http() as http:
        mine = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}",
                                                          "X-Request-ID": "viewer-1"},
                         json={"model": "m-a", "messages": []})  # fmt: skip
        theirs = http.post("/v1/chat/completions", headers={
            "Authorization": f"Bearer {gateway.key}", "X-Request-ID": "harness-1"},
            json={"model": "m-a", "messages": []})  # fmt: skip
        assert mine.status_code == theirs.status_code == 200
    with dashboard_session(minted_url(gateway, key)) as ui:
        assert ui.me["client"] == "viewer" and ui.me["admin"] is False
        assert ui.get("/api/engines").status_code == 200
        for action in ("/api/engines/alpha/down", "/api/engines/beta/up",
                       "/api/adapters/x/load", "/api/adapters/x/unload"):  # fmt: skip
            refused = ui.post(action)
            assert refused.status_code == 403 and "ADMIN_ONLY" in refused.text, action
        assert ui.get("/api/logs/alpha").status_code == 403  # engine logs: admins only
        ids = [e.get("id") for e in ui.get("/api/timeline").json()["events"]
               if e["kind"] == "request"]  # fmt: skip
        assert ids == ["viewer-1"]  # only its own requests
    with dashboard_session(minted_url(gateway, gateway.key)) as admin:
        ids = [e.get("id") for e in admin.get("/api/timeline").json()["events"]
               if e["kind"] == "request"]  # fmt: skip
        assert ids == ["viewer-1", "harness-1"]
    assert gateway.cli("status", "--json").stdout.count('"running"') == 1  # nothing moved


def test_the_dashboard_is_opened_through_the_socket_only(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(two_engines(tmp_path / "codex"))
    with gateway.tcp() as tcp:
        refused = tcp.post("/ui/open", json={})
    assert refused.status_code == 403 and "UNIX_SOCKET_ONLY" in refused.text
    with gateway.http() as http:
        bad_port = http.post("/ui/open", json={"port": "80"},
                             headers={"Authorization": f"Bearer {gateway.key}"})  # fmt: skip
        assert bad_port.status_code == 400 and "port" in bad_port.text
        assert http.get("/ui/open").status_code == 405


def test_a_strict_gateway_refuses_unless_allowed_and_audit_flags_it(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(two_engines(tmp_path / "codex"), "--strict", clients=None, tcp=False)
    refused = gateway.cli("ui", "--no-open")
    assert refused.returncode == 1 and "strict mode" in refused.stderr
    assert "allow-strict" in refused.stderr
    assert gateway.cli("audit").returncode == 0, gateway.cli("audit").stderr
    url = printed_url(gateway, "--allow-strict")
    audit = gateway.cli("audit")
    assert audit.returncode == 1
    assert "dashboard" in audit.stderr and "--allow-strict" in audit.stderr
    assert f"pid {gateway.process.pid}" in audit.stderr
    with dashboard_session(url) as ui:
        assert ui.me["admin"] is True


def test_the_live_feed_carries_requests_and_swaps_without_text(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(two_engines(tmp_path / "codex"), clients=None, tcp=False)
    with dashboard_session(printed_url(gateway)) as ui:
        since = ui.me["seq"]
        with ui.http.stream("GET", f"{ui.base}/api/events?since={since}") as feed:
            assert feed.headers["content-type"] == "text/event-stream"
            words = [{"role": "user", "content": "secret words"}]
            with gateway.http() as http:
                for model, rid in (("m-a", "feed-1"), ("m-b", "feed-2")):
                    answer = http.post("/v1/chat/completions", headers={"X-Request-ID": rid},
                                       json={"model": model, "messages": words})  # fmt: skip
                    assert answer.status_code == 200
            seen = read_events(feed, lambda e: e.get("id") == "feed-2")
        requests = [e for e in seen if e["kind"] == "request"]
        assert [(e["id"], e["model"], e["status"]) for e in requests] == [
            ("feed-1", "m-a", 200), ("feed-2", "m-b", 200)]  # fmt: skip
        assert set(requests[0]) == {"seq", "at", "kind", "id", "model", "client", "status",
                                    "code", "ms", "way", "council", "persona"}  # fmt: skip
        assert "secret" not in str(seen)
        swaps = [(e["stopped"], e["started"]) for e in seen if e["kind"] == "swap"]
        assert swaps == [([], ["alpha"]), (["alpha"], ["beta"])]
        states = [(e["soulstone"], e["state"]) for e in seen if e["kind"] == "engine"]
        assert ("alpha", "stopped") in states and ("beta", "running") in states
        # A reconnect resumes after the last id it saw (EventSource sends Last-Event-ID).
        last = requests[0]["seq"]
        with ui.http.stream("GET", f"{ui.base}/api/events",
                            headers={"Last-Event-ID": str(last)}) as resumed:  # fmt: skip
            again = read_events(resumed, lambda e: e.get("id") == "feed-2")
        assert again[0]["seq"] == last + 1
        queue = ui.get("/api/queue").json()
        assert queue["slots"]["limit"] == 16 and queue["swaps"] == 1
        assert sum(m["requests"] for m in queue["minutes"]) == 2


def test_ui_without_a_gateway_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "SOULSTONE_SOCKET": str(tmp_path / "nobody.sock"),
           "XDG_CONFIG_HOME": str(tmp_path)}  # fmt: skip
    done = subprocess.run([str(SCRIPT), "ui", "--no-open"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert "no gateway answers on" in done.stderr and "soulstone serve" in done.stderr
