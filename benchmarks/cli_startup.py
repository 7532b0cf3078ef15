"""How long the CLI takes to answer (issue 19, target 3): `--help`, `--version`, `check`.

    .venv/bin/python benchmarks/cli_startup.py [--runs 20] [--before REF]

Runs each command `--runs` times, one after another, and reports the wall
time (median and fastest) of the console script as a user starts it. With
`--before REF`, the same commands from a checkout of REF (a git worktree in
a scratch folder, run with the same interpreter) interleaved run by run, so
both see the same machine. Results go to benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT.parent / "shared" / "examples"
COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "check (reference examples)": ["--codex", str(EXAMPLES), "check"],
}


def timed(source: Path, args: list[str]) -> float:
    """Wall seconds of `python -m soulstone ARGS` with `source` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(source), "COLUMNS": "100"}
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "soulstone", *args], env=env, capture_output=True,
                   check=False, timeout=120)  # fmt: skip
    return time.perf_counter() - began


def summary(samples: list[float]) -> dict[str, float]:
    """Median and fastest, in milliseconds."""
    return {"median_ms": round(statistics.median(samples) * 1000, 1),
            "fastest_ms": round(min(samples) * 1000, 1)}  # fmt: skip


def main() -> None:
    """Measure and save."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--before")
    args = parser.parse_args()
    sources = {"now": ROOT / "src"}
    scratch = Path(tempfile.mkdtemp(prefix="cli-bench-"))
    if args.before:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach",
                        str(scratch / "before"), args.before], check=True)  # fmt: skip
        sources["before"] = scratch / "before" / "src"
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for name, command in COMMANDS.items():
            samples: dict[str, list[float]] = {label: [] for label in sources}
            for _ in range(args.runs):
                for label, source in sources.items():
                    samples[label].append(timed(source, command))
            results[name] = {label: summary(values) for label, values in samples.items()}
            print(name, results[name])
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(scratch / "before")], check=False)  # fmt: skip
    document = {"date": time.strftime("%Y-%m-%d"), "runs": args.runs, "before": args.before,
                "python": sys.version.split()[0], "results": results}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "cli_startup.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
