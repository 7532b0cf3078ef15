"""A smoke run of benchmarks/engines_e2e.py on the real tiny engines: every cell answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from real_engines import llama_server, tiny_hf_model, vllm_python

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "benchmarks" / "engines_e2e.py"


def test_the_engines_e2e_benchmark_measures_every_cell(tmp_path: Path) -> None:
    for built in (llama_server, vllm_python, tiny_hf_model):
        built()  # a skip (a failure in CI) when scripts/build-* has not run
    done = subprocess.run([sys.executable, str(BENCHMARK), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "engines_e2e.json").read_text())
    runs = report["runs"]
    cells = {(r["engine"], r["stream"], r["concurrency"], r["path"]) for r in runs}
    assert len(cells) == len(runs) == 2 * 2 * 3 * 4  # engines, kinds, c = 1 4 16, four ways
    assert {r["path"] for r in runs} == {"direct", "direct again", "gateway UDS", "gateway TCP"}
    assert [r for r in runs if r["errors"] or r["ok"] != r["requests"] or not r["ok"]] == []
    assert all(r["ttft_ms"]["n"] == r["ok"] for r in runs if r["stream"])
    added = report["added"]
    assert len(added) == 2 * 2 * 3 * 3
    assert all(isinstance(row["added_p50"], float) for row in added)
    assert "| vllm | stream TTFT | 16 | gateway TCP |" in done.stdout
