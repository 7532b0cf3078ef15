"""A smoke run of benchmarks/council.py: one round of a 3-persona council on fake engines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "council.py"


def test_the_council_benchmark_runs_and_its_council_beats_asking_in_turn(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARK), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "council.json").read_text())
    three = results["fake"]["3"]
    # A run waits for its slowest persona, then its aggregator: never under the floor...
    assert three["council_ms"]["p50"] >= results["fake"]["floor_ms"]
    # ... and asks its personas at once: 940 ms of delays in turn, 400 ms as a council.
    assert three["speed_up"] > 1.5, three
    assert set(three["overhead_parts_ms"]) == {"to_persona", "persona", "to_aggregator",
                                               "aggregator", "to_caller"}  # fmt: skip
    assert "vllm" not in results  # the smoke never starts an engine
