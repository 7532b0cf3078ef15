"""benchmarks/plots.py: a PNG beside every report it knows; bad reports named, never a crash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def run(results: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plots.py"), "--results",
                           str(results)], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def test_every_known_report_gets_its_png(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    done = run(results)
    assert done.returncode == 0, done.stderr
    reports = (
        "gateway_overhead",
        "gateway_ab",
        "lora",
        "lora_loop",
        "metrics_scrape",
        "council",
        "engines_e2e",
        "lora_add",
    )
    for name in reports:
        picture = results / f"{name}.png"
        assert picture.read_bytes().startswith(PNG), name
        assert str(picture) in done.stdout
        assert picture.stat().st_size > 10_000


def test_a_bad_report_is_named_and_the_others_still_drawn(tmp_path: Path) -> None:
    (tmp_path / "lora.json").write_text('{"base_p50_ms": 3}')  # the other fields are missing
    (tmp_path / "gateway_ab.json").write_text("{not json")
    (tmp_path / "other.json").write_text("{}")
    shutil.copy(ROOT / "benchmarks" / "results" / "metrics_scrape.json", tmp_path)
    done = run(tmp_path)
    assert done.returncode == 1
    assert f"{tmp_path / 'lora.json'}: missing cold_to_first_answer_ms" in done.stderr
    assert f"{tmp_path / 'gateway_ab.json'}: unreadable" in done.stderr
    assert f"{tmp_path / 'other.json'}: no plot for this report" in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "metrics_scrape.png").read_bytes().startswith(PNG)
    assert not (tmp_path / "lora.png").exists()
    assert json.loads((tmp_path / "other.json").read_text()) == {}
