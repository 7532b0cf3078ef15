"""A smoke run of benchmarks/gateway_overhead.py: every path answers, nothing errs (no figures)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "benchmarks" / "gateway_overhead.py"
BENCH = ROOT.parent / "shared" / "bench"


def test_the_gateway_overhead_benchmark_runs_every_path(tmp_path: Path) -> None:
    if not (BENCH / "loadgen.py").exists() or shutil.which("taskset") is None:
        pytest.skip("needs ../shared/bench and taskset")
    done = subprocess.run([sys.executable, str(BENCHMARK), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "gateway_overhead.json").read_text())["runs"]
    paths = {run["path"] for run in runs}
    assert {"direct TCP", "direct UDS", "minimal aiohttp proxy, TCP",
            "minimal aiohttp proxy, UDS->UDS", "soulstone gateway, TCP",
            "soulstone gateway, UDS->UDS"} == paths  # fmt: skip
    assert len(runs) == len(paths) * 2 * 3  # streamed and not, at c = 1, 16, 64
    failed = [r for r in runs if r["error_count"] or r["unfinished"] or r["ok"] != r["requests"]]
    assert failed == []
    assert all(run["requests"] == run["requests_asked"] > 0 for run in runs)
    assert (tmp_path / "gateway_overhead.md").read_text().count("| soulstone gateway") == 4
