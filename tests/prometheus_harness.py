"""Start a real Prometheus server (Debian's `prometheus`) for a test, query it, stop it after.

The server listens on a free loopback port, keeps its data in a temporary
folder, and scrapes the targets the test names every second. `query(expr)`
asks its HTTP API and waits (polling, with a deadline) until the answer is
what the test expects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from helpers import free_port, terminate

HOW = "scripts/get-prometheus (Debian's prometheus package)"
READY_S = 60.0
QUERY_S = 30.0

Sample = dict[str, Any]  # one element of a query's result: {"metric": {...}, "value": [t, "v"]}


def require_tool(name: str) -> Path:
    """The path of `prometheus` or `promtool`, or a skip (a failure in CI) saying how to get it."""
    found = shutil.which(name)
    if found:
        return Path(found)
    message = f"{name} is missing: run {HOW}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Target:
    """One scrape target: a loopback address and the path of its metrics."""

    address: str  # host:port
    job: str = "soulstone"
    path: str = "/metrics"
    bearer: str | None = None  # an API key, for /metrics on the gateway's API listener


@dataclass
class RunningPrometheus:
    """A Prometheus process and how to ask it."""

    process: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    _http: httpx2.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx2.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; the decoded answer, whatever its status."""
        answer = self._http.get(f"/api/v1/{path}", params=params)
        body: dict[str, Any] = answer.json()
        return body

    def instant(self, expr: str) -> list[Sample]:
        """The result of one instant query now (fails on an error, such as a syntax error)."""
        body = self.api("query", query=expr)
        assert body.get("status") == "success", f"{expr!r}: {body}"
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[Sample] = data["result"]
        return result

    def query(self, expr: str, until: Callable[[list[Sample]], bool] = bool,
              timeout: float = QUERY_S) -> list[Sample]:  # fmt: skip
        """Ask until the result satisfies `until` (default: not empty); fail at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.instant(expr)
            if until(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} gave {result} for {timeout:g} s\n{self.status()}")
            time.sleep(0.1)

    def value(self, expr: str, until: Callable[[float], bool] = lambda _v: True,
              timeout: float = QUERY_S) -> float:  # fmt: skip
        """The single value of `expr`, once there is one and it satisfies `until`."""

        def one(result: list[Sample]) -> bool:
            return len(result) == 1 and until(float(result[0]["value"][1]))

        return float(self.query(expr, one, timeout)[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, with their health and last error."""
        active: list[dict[str, Any]] = self.api("targets")["data"]["activeTargets"]
        return active

    def status(self) -> str:
        """What to print when a query never came right: targets and the server's log."""
        lines = [f"target {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}"
                 for t in self.targets()]  # fmt: skip
        return "\n".join([*lines, self.log.read_text(errors="replace")[-4000:]])

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL when it has not exited within `timeout`."""
        self._http.close()
        terminate(self.process, timeout)


def prometheus_config(targets: Sequence[Target], rule_files: Sequence[Path] = ()) -> str:
    """A prometheus.yml scraping and evaluating every second."""
    jobs: dict[str, list[Target]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target)
    scrape_configs = []
    for job, members in jobs.items():
        shared = {(member.path, member.bearer) for member in members}
        assert len(shared) == 1, f"job {job!r}: one metrics path and key per job"
        path, bearer = shared.pop()
        scrape: dict[str, Any] = {
            "job_name": job,
            "metrics_path": path,
            "static_configs": [{"targets": [m.address for m in members]}],
        }
        if bearer is not None:
            scrape["authorization"] = {"credentials": bearer}
        scrape_configs.append(scrape)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": scrape_configs,
    }
    return yaml.safe_dump(config, sort_keys=False)


def _wait_ready(prometheus: RunningPrometheus) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if prometheus.process.poll() is not None:
            raise AssertionError(f"prometheus exited {prometheus.process.returncode}:\n"
                                 f"{prometheus.log.read_text(errors='replace')}")  # fmt: skip
        try:
            if prometheus._http.get("/-/ready").status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"prometheus was not ready in {READY_S:g} s:\n"
                         f"{prometheus.log.read_text(errors='replace')}")  # fmt: skip


StartPrometheus = Callable[..., RunningPrometheus]


@contextmanager
def prometheus_starter(folder: Path) -> Iterator[StartPrometheus]:
    """Start Prometheus servers with their data under `folder`; stop them all afterwards.

    The fixture `start_prometheus` is this on the test's tmp_path; a
    module-scoped fixture can use it on a folder of its own.
    """
    binary = require_tool("prometheus")
    started: list[RunningPrometheus] = []

    def start(targets: Sequence[Target], rule_files: Sequence[Path] = ()) -> RunningPrometheus:
        """Start one Prometheus scraping `targets` (evaluating `rule_files`); wait till ready."""
        home = folder / f"prometheus{len(started)}"
        home.mkdir(parents=True)
        config = home / "prometheus.yml"
        config.write_text(prometheus_config(targets, rule_files))
        port = free_port()
        log = home / "prometheus.log"
        process = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        prometheus = RunningPrometheus(process, port, config, log)
        started.append(prometheus)
        _wait_ready(prometheus)
        return prometheus

    try:
        yield start
    finally:
        for prometheus in started:
            prometheus.stop()


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[StartPrometheus]:
    """Start real Prometheus servers for a test; stop them afterwards."""
    with prometheus_starter(tmp_path) as start:
        yield start
