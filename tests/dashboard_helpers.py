"""Opening a running gateway's dashboard in tests: the printed URL, a session, its live feed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2

from gateway_harness import RunningGateway

CSRF_HEADER = "X-Soulstone-CSRF"


def printed_url(gateway: RunningGateway, *args: str) -> str:
    """Run `soulstone ui --no-open`; the URL it prints first on stdout."""
    done = gateway.cli("ui", "--no-open", *args)
    assert done.returncode == 0, done.stderr
    url = done.stdout.splitlines()[0]
    assert url.startswith("http://127.0.0.1:") and "/?token=" in url, done.stdout
    return url


def minted_url(gateway: RunningGateway, key: str | None = None, **body: Any) -> str:
    """Ask the gateway's socket for a dashboard URL (with a client's API key when given)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with gateway.http() as http:
        answer = http.post("/ui/open", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["url"])


def base_of(url: str) -> str:
    """The dashboard's origin (scheme, host and port) of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class DashboardSession:
    """An HTTP client holding a dashboard session (its cookie) and the page's CSRF value."""

    http: httpx2.Client
    base: str
    me: dict[str, Any]

    def post(self, path: str, **headers: str) -> httpx2.Response:
        """A state-changing call as the page sends it (CSRF header, same Origin)."""
        sent = {CSRF_HEADER: self.me["csrf"], "Origin": self.base, **headers}
        return self.http.post(f"{self.base}{path}", headers=sent)

    def get(self, path: str) -> httpx2.Response:
        return self.http.get(f"{self.base}{path}")


@contextmanager
def dashboard_session(url: str) -> Iterator[DashboardSession]:
    """Redeem the URL's token (the redirect sets the cookie) and keep the session."""
    with httpx2.Client(timeout=60, follow_redirects=False) as http:
        redeemed = http.get(url)
        assert redeemed.status_code == 302, redeemed.text
        base = base_of(url)
        me = http.get(f"{base}/api/me")
        assert me.status_code == 200, me.text
        yield DashboardSession(http, base, me.json())


def read_events(response: httpx2.Response, until: Callable[[dict[str, Any]], bool],
                wait_s: float = 30) -> list[dict[str, Any]]:  # fmt: skip
    """The feed's events up to and including the first one `until` accepts (or fail)."""
    deadline = time.monotonic() + wait_s
    seen: list[dict[str, Any]] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            event = json.loads(line[len("data: ") :])
            seen.append(event)
            if until(event):
                return seen
        assert time.monotonic() < deadline, f"no matching event; saw {seen}"
    raise AssertionError(f"the feed ended; saw {seen}")


def listening_addresses(port: int, proc: Path = Path("/proc")) -> list[str]:
    """Local addresses listening on a TCP port (IPv4 as dotted quads, IPv6 as hex)."""
    found = []
    for table in ("tcp", "tcp6"):
        for line in (proc / "net" / table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:
                continue
            if table == "tcp":
                found.append(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                found.append(address)
    return found
