"""Pictures of the benchmark reports: a PNG beside each JSON in benchmarks/results/.

    .venv/bin/python benchmarks/plots.py [--results DIR]

- gateway_overhead.json, gateway_ab.json: latency (p50, p95, p99) of every path
  against its peers, at the lowest and the highest concurrency, plain and
  streamed, and the proxy's CPU per request;
- lora.json: an adapter cold, warm and hot against the base model;
- lora_loop.json: `lora train` to the new adapter's first answer, phase by phase;
- metrics_scrape.json: what a /metrics scrape costs with and without engines;
- council.json: council wall time against its floor and in turn, and the vLLM batch;
- engines_e2e.json: what the gateway adds (p50, p99) in front of llama-server and vLLM
  CPU, per concurrency, to the total time and to the stream's first token;
- lora_add.json: `lora add`'s wall time against the CLI's floor, the gateway's and the
  engine's shares.

A report no plotter knows is named and left alone; one that cannot be read or
lacks what its plotter needs is named with the reason (exit 1 at the end).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no display, no global figure state
from matplotlib.ticker import FuncFormatter

RESULTS = Path(__file__).resolve().parent / "results"
PERCENTILES = ("p50", "p95", "p99")
COLORS = {"p50": "#5b8cff", "p95": "#8f7bff", "p99": "#f25f5c"}
PLAIN = FuncFormatter(lambda value, _position: f"{value:g}")  # 0.5, 10, 300: not 10^x


class ReportError(Exception):
    """A report lacks what its plot needs."""


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    runs = report.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ReportError("no `runs` list")
    return [r for r in runs if isinstance(r, dict) and isinstance(r.get("latency_ms"), dict)]


def latency_figure(report: dict[str, Any], title: str) -> Figure:
    """Latency percentiles of every path, plain and streamed, at the lowest and highest c."""
    runs = _runs(report)
    levels = sorted({int(r["concurrency"]) for r in runs})
    if not levels:
        raise ReportError("no run has `latency_ms`")
    wanted = [levels[0], levels[-1]] if len(levels) > 1 else levels
    paths = list(dict.fromkeys(str(r["path"]) for r in runs))
    figure = Figure(figsize=(6.5 * len(wanted), 8))
    axes = figure.subplots(2, len(wanted), squeeze=False)
    for row, stream in enumerate((False, True)):
        for column, level in enumerate(wanted):
            axis = axes[row][column]
            picked: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for run in runs:
                if bool(run.get("stream")) == stream and int(run["concurrency"]) == level:
                    for p in PERCENTILES:
                        value = run["latency_ms"].get(p)
                        if isinstance(value, int | float):
                            picked[str(run["path"])][p].append(float(value))
            shown = [p for p in paths if p in picked]
            height = 0.8 / len(PERCENTILES)
            for index, percentile in enumerate(PERCENTILES):
                values = [_median(picked[p][percentile]) for p in shown]
                offsets = [i + (index - 1) * height for i in range(len(shown))]
                axis.barh(offsets, values, height=height, label=percentile,
                          color=COLORS[percentile])  # fmt: skip
            axis.set_yticks(range(len(shown)), shown, fontsize=8)
            axis.invert_yaxis()
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter(PLAIN)
            axis.xaxis.set_minor_formatter(PLAIN)
            axis.set_xlabel("ms (log scale; median over repeats)")
            axis.set_title(f"{'streamed' if stream else 'plain'} chat, concurrency {level}",
                           fontsize=10)  # fmt: skip
            axis.grid(axis="x", alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def lora_figure(report: dict[str, Any], title: str) -> Figure:
    """An adapter's first answer cold and warm, and a hot adapter's request against the base."""
    steps = [("cold → hot\n(lora add → first answer)", "cold_to_first_answer_ms"),
             ("warm → hot\n(first answer)", "warm_to_hot_first_answer_p50_ms"),
             ("hot adapter\n(request p50)", "hot_adapter_p50_ms"),
             ("base model\n(request p50)", "base_p50_ms")]  # fmt: skip
    missing = [key for _, key in steps if not isinstance(report.get(key), int | float)]
    if missing:
        raise ReportError(f"missing {', '.join(missing)}")
    figure = Figure(figsize=(8, 4.5))
    axis = figure.subplots()
    values = [float(report[key]) for _, key in steps]
    bars = axis.bar([label for label, _ in steps], values,
                    color=["#f25f5c", "#f5b942", "#3ecf8e", "#5b8cff"])  # fmt: skip
    axis.bar_label(bars, labels=[f"{v:.1f} ms" for v in values], fontsize=9)
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(PLAIN)
    axis.yaxis.set_minor_formatter(PLAIN)
    axis.set_ylabel("ms (log scale)")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


LOOP_PHASES = (("check", "data check", "#8f7bff"), ("train", "training", "#f25f5c"),
               ("store", "store", "#f5b942"), ("load", "load", "#3ecf8e"),
               ("cli", "CLI start-up and clean-up", "#b0b0b0"),
               ("first_answer", "first answer", "#5b8cff"))  # fmt: skip


def loop_figure(report: dict[str, Any], title: str) -> Figure:
    """`lora train` start to the new adapter's first answer, phase by phase, per run."""
    runs = report.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ReportError("no `runs` list")
    rows = [(str(run["name"]), run["seconds"]) for run in runs]
    rows.append(("median", report["median_s"]))
    figure = Figure(figsize=(9, 2.2 + 0.55 * len(rows)))
    axis = figure.subplots()
    left = [0.0] * len(rows)
    for key, label, color in LOOP_PHASES:
        widths = [float(seconds[key]) for _, seconds in rows]
        axis.barh([name for name, _ in rows], widths, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for row, total in enumerate(left):
        axis.text(total, row, f" {total:.1f} s", va="center", fontsize=9)
    axis.invert_yaxis()
    axis.set_xlim(0, max(left) * 1.12)
    axis.set_xlabel("seconds from `lora train` to the adapter's first answer")
    axis.set_title(title)
    axis.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def scrape_figure(report: dict[str, Any], title: str) -> Figure:
    """A /metrics scrape's wall time and the gateway's CPU, with and without engines."""
    cases = [(name, report.get(name)) for name in ("gateway_alone", "with_engines")]
    if any(not isinstance(case, dict) for _, case in cases):
        raise ReportError("needs `gateway_alone` and `with_engines`")
    figure = Figure(figsize=(10, 4))
    wall, cpu = figure.subplots(1, 2)
    labels = [name.replace("_", " ") for name, _ in cases]
    for offset, key in ((-0.2, "wall_ms_p50"), (0.2, "wall_ms_p99")):
        values = [float(case[key]) for _, case in cases]  # type: ignore[index]
        wall.bar([i + offset for i in range(len(cases))], values, width=0.4,
                 label=key.removeprefix("wall_ms_"))  # fmt: skip
    wall.set_xticks(range(len(cases)), labels)
    wall.set_ylabel("wall ms per scrape")
    wall.legend()
    cpu_values = [float(case["gateway_cpu_us_per_scrape"]) / 1000 for _, case in cases]  # type: ignore[index]
    cpu.bar(labels, cpu_values, color="#8f7bff")
    cpu.set_ylabel("gateway CPU ms per scrape")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def council_figure(report: dict[str, Any], title: str) -> Figure:
    """Council wall time against its floor and against asking in turn; the vLLM batch."""
    fake = report["fake"]
    sizes = sorted((key for key in fake if key.isdigit()), key=int)
    if not sizes:
        raise ReportError("needs `fake` results by number of personas")
    figure = Figure(figsize=(11, 4))
    times, batch = figure.subplots(1, 2)
    positions = range(len(sizes))
    council = [float(fake[n]["council_ms"]["p50"]) for n in sizes]
    in_turn = [float(fake[n]["in_turn_ms"]["p50"]) for n in sizes]
    times.bar([p - 0.2 for p in positions], council, width=0.4, label="council (p50)")
    times.bar([p + 0.2 for p in positions], in_turn, width=0.4, label="asked in turn (p50)")
    floor = float(fake["floor_ms"])
    times.axhline(floor, color="black", linestyle=":", label=f"floor {floor:.0f} ms")
    times.axhline(floor + float(fake["target_overhead_ms"]), color="red", linestyle="--",
                  label="target: floor + 20 ms")  # fmt: skip
    times.set_xticks(list(positions), [f"{n} personas" for n in sizes])
    times.set_ylabel("wall ms (fake engines)")
    times.legend(fontsize=8)
    vllm = report.get("vllm") or {}
    cases = [name for name in ("solo", "solo-adapter", "trio-base", "trio") if name in vllm]
    batch.bar(cases, [float(vllm[c]["council_ms"]["p50"]) for c in cases], color="#8f7bff")
    batch.set_ylabel("council wall ms p50 (vLLM CPU)")
    batch.set_title("one persona against three on one base", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


SYMLOG_TICKS = (-1000, -100, -10, -5, -2, -1, 0, 1, 2, 5, 10, 100, 1000)
E2E_BARS = (("direct again", "p50", "#c8c8c8"), ("direct again", "p99", "#8a8a8a"),
            ("gateway UDS", "p50", "#5b8cff"), ("gateway UDS", "p99", "#1f3f99"),
            ("gateway TCP", "p50", "#f5b942"), ("gateway TCP", "p99", "#b5651d"))  # fmt: skip


def e2e_figure(report: dict[str, Any], title: str) -> Figure:
    """Added ms (way − direct) at p50 and p99 per concurrency: engine × total/TTFT.

    `direct again` (grey) is the control: the same way measured twice.
    """
    rows = report.get("added")
    if not isinstance(rows, list) or not rows:
        raise ReportError("no `added` list")
    engines = sorted({str(r["engine"]) for r in rows})
    levels = sorted({int(r["concurrency"]) for r in rows})
    targets = report.get("targets_ms") or {"added_p50": 1.0, "added_p99": 5.0}
    figure = Figure(figsize=(12, 4 * len(engines)))
    axes = figure.subplots(len(engines), 2, squeeze=False)
    width = 0.8 / len(E2E_BARS)
    for row_axes, engine in zip(axes, engines, strict=True):
        for axis, stream in zip(row_axes, (False, True), strict=True):
            for offset, (path, q, color) in enumerate(E2E_BARS):
                cell = (engine, stream, path)
                found = {int(r["concurrency"]): r.get(f"added_{q}") for r in rows
                         if (r["engine"], r["stream"], r["path"]) == cell}  # fmt: skip
                values = [float(v) if isinstance(v, int | float) else float("nan")
                          for v in (found.get(c) for c in levels)]  # fmt: skip
                shift = offset - (len(E2E_BARS) - 1) / 2
                axis.bar([i + shift * width for i in range(len(levels))], values,
                         width=width, color=color, label=f"{path} +{q}")  # fmt: skip
            axis.axhline(float(targets["added_p50"]), color="#5b8cff", linestyle="--",
                         linewidth=1, label="target +p50")  # fmt: skip
            axis.axhline(float(targets["added_p99"]), color="#f25f5c", linestyle="--",
                         linewidth=1, label="target +p99")  # fmt: skip
            axis.axhline(0, color="black", linewidth=0.8)
            axis.set_yscale("symlog", linthresh=1)
            low, high = axis.get_ylim()
            axis.set_yticks([v for v in SYMLOG_TICKS if low <= v <= high])
            axis.yaxis.set_major_formatter(PLAIN)
            axis.set_xticks(range(len(levels)), [f"c = {c}" for c in levels])
            axis.set_ylabel("added ms (way − direct)")
            axis.set_title(f"{engine}: {'stream, first token' if stream else 'total'}",
                           fontsize=10)  # fmt: skip
            axis.grid(axis="y", alpha=0.3)
    axes[0][1].legend(fontsize=7, ncols=2)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


LORA_ADD_BARS = (("cli add (now)", "#3ecf8e"), ("cli add (before)", "#f25f5c"),
                 ("cli --version (now)", "#b0b0b0"), ("admin add", "#f5b942"),
                 ("engine load", "#8f7bff"), ("first answer", "#5b8cff"))  # fmt: skip


def lora_add_figure(report: dict[str, Any], title: str) -> Figure:
    """`lora add`'s wall time (p50) against the CLI's floor and the gateway's and engine's parts."""
    results = report.get("results")
    if not isinstance(results, dict) or "cli add (now)" not in results:
        raise ReportError("no `results` with `cli add (now)`")
    bars = [(name, color) for name, color in LORA_ADD_BARS if name in results]
    figure = Figure(figsize=(9, 4.5))
    axis = figure.subplots()
    values = [float(results[name]["p50"]) for name, _ in bars]
    drawn = axis.bar([name.replace(" (", "\n(") for name, _ in bars], values,
                     color=[color for _, color in bars])  # fmt: skip
    axis.bar_label(drawn, labels=[f"{v:.0f} ms" for v in values], fontsize=9)
    axis.axhline(float(report.get("target_ms", 300)), color="red", linestyle="--",
                 label="target: lora add ≤ 300 ms")  # fmt: skip
    axis.set_ylabel("wall ms, p50")
    axis.legend(fontsize=8)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


PLOTTERS: dict[str, tuple[Callable[[dict[str, Any], str], Figure], str]] = {
    "gateway_overhead": (latency_figure, "Gateway overhead: latency against the peers"),
    "gateway_ab": (latency_figure, "Gateway A/B: latency now against before"),
    "lora": (lora_figure, "LoRA adapters on the CPU vLLM engine: cold, warm, hot"),
    "lora_loop": (loop_figure, "The LoRA loop on the tiny CPU model: train, store, load, answer"),
    "metrics_scrape": (scrape_figure, "What a /metrics scrape costs"),
    "council": (council_figure, "Councils: wall time against the floor, and the vLLM batch"),
    "engines_e2e": (e2e_figure, "What the gateway adds in front of real engines"),
    "lora_add": (lora_add_figure, "`soulstone lora add` of a 24 KB adapter (vLLM CPU base)"),
}


def plot(report_path: Path) -> Path | None:
    """Write the report's PNG beside it; None when no plotter knows it (ReportError if bad)."""
    known = PLOTTERS.get(report_path.stem)
    if known is None:
        return None
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"unreadable: {error}") from None
    if not isinstance(report, dict):
        raise ReportError("not a JSON object")
    make, title = known
    try:
        figure = make(report, title)
    except (KeyError, TypeError, ValueError) as error:
        raise ReportError(f"unexpected shape ({type(error).__name__}: {error})") from None
    target = report_path.with_suffix(".png")
    figure.savefig(target, dpi=110)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    failed = 0
    for report_path in sorted(args.results.glob("*.json")):
        try:
            written = plot(report_path)
        except ReportError as error:
            print(f"{report_path}: {error}", file=sys.stderr)
            failed += 1
            continue
        if written is None:
            print(f"{report_path}: no plot for this report", file=sys.stderr)
        else:
            print(written)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
