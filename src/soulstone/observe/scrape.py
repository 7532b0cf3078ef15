"""Engines' own Prometheus figures, re-exposed under the gateway's /metrics (SPEC C9).

Each running engine that exports metrics (vLLM's `vllm:*`, llama-server's
`llamacpp:*` with `--metrics`) is asked when /metrics is asked, all at once
and within a short timeout; a slow or dead engine is left out (and counted),
never waited for. Every sample gets a `soulstone="<id>"` label, and the
families of all engines are merged, so one scrape covers the box.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

SCRAPE_TIMEOUT_S = 1.0
# A sample line: a metric name, labels or not, then a number (what anything else is, is dropped).
_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? '
    r"([-+]?(?:[0-9.]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))( -?[0-9]+)?$"
)
_OPENMETRICS_TYPES = {"untyped": "unknown"}


@dataclass
class Family:
    """One metric family: its name, help, type and sample lines (with the engine's label)."""

    name: str
    help: str = ""
    type: str = "untyped"
    samples: list[str] = field(default_factory=list)


def _labelled(line: str, label: str) -> str | None:
    """A sample line with `label` first among its labels; None for a line that is no sample."""
    brace = line.find("{")
    space = line.find(" ")
    if space < 0:
        return None
    if 0 <= brace < space:
        rest = line[brace + 1 :]
        return f"{line[:brace]}{{{label}{',' if not rest.startswith('}') else ''}{rest}"
    return f"{line[:space]}{{{label}}}{line[space:]}"


def parse_families(text: str, soulstone: str) -> list[Family]:
    """An engine's exposition text as families whose samples carry `soulstone="<id>"`."""
    label = f'soulstone="{soulstone}"'
    families: dict[str, Family] = {}
    current: Family | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                current = families.setdefault(name, Family(name))
                value = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    current.help = value
                else:
                    current.type = value or "untyped"
            continue
        matched = _SAMPLE.match(line)
        sample = _labelled(line, label) if matched else None
        if matched is None or sample is None:
            continue  # not a sample: never passed on
        name = matched.group(1)
        if name.endswith("_created"):
            continue  # creation times: of no use here, and they clash in OpenMetrics
        if current is None or not name.startswith(current.name):
            current = families.setdefault(name, Family(name))
        current.samples.append(sample)
    return [f for f in families.values() if f.samples]


def merge(per_engine: Iterable[Sequence[Family]]) -> list[Family]:
    """The families of several engines, each name once (help and type from the first)."""
    merged: dict[str, Family] = {}
    for families in per_engine:
        for family in families:
            found = merged.get(family.name)
            if found is None:
                merged[family.name] = Family(family.name, family.help, family.type,
                                             list(family.samples))  # fmt: skip
            else:
                found.samples.extend(family.samples)
    return list(merged.values())


def render_text(families: Iterable[Family]) -> str:
    """Families in Prometheus's text format (0.0.4)."""
    lines: list[str] = []
    for family in families:
        if family.help:
            lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.type}")
        lines.extend(family.samples)
    return "\n".join(lines) + "\n" if lines else ""


def render_openmetrics(families: Iterable[Family]) -> str:
    """Families in OpenMetrics text (a counter's family is named without `_total`)."""
    lines: list[str] = []
    for family in families:
        name, kind = family.name, _OPENMETRICS_TYPES.get(family.type, family.type)
        if kind == "counter" and name.endswith("_total"):
            name = name.removesuffix("_total")
        if family.help:
            lines.append(f"# HELP {name} {family.help}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(family.samples)
    return "\n".join(lines) + "\n" if lines else ""


Fetch = Callable[[], Awaitable[str]]


async def scrape(targets: Sequence[tuple[str, Fetch]],
                 timeout: float = SCRAPE_TIMEOUT_S) -> tuple[list[Family], list[str]]:  # fmt: skip
    """Ask every engine at once; its families, and the ids that failed or took too long."""

    async def one(soulstone: str, fetch: Fetch) -> list[Family]:
        async with asyncio.timeout(timeout):
            return parse_families(await fetch(), soulstone)

    results = await asyncio.gather(*(one(s, f) for s, f in targets), return_exceptions=True)
    families: list[Sequence[Family]] = []
    failed: list[str] = []
    for (soulstone, _), result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            failed.append(soulstone)
        else:
            families.append(result)
    return merge(families), failed
