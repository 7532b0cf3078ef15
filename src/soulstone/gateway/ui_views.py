"""The JSON snapshots the dashboard's pages load first (then live events keep them current).

Pure: each takes what the gateway knows now and returns a document; reading
engine statuses and GPU memory is the caller's business.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from soulstone.codex.conflicts import conflict_pairs
from soulstone.dispatch.services import Services
from soulstone.observe.live import LiveHub
from soulstone.runtimes.base import EngineStatus


def engines_view(services: Services, found: Sequence[EngineStatus],
                 gpu_memory: Mapping[str, int]) -> dict[str, Any]:  # fmt: skip
    """Every soulstone with its state, groups, health, address, GPU memory; the conflict graph."""
    codex = services.codex
    scheduler = services.scheduler
    by_id = {status.id: status for status in found}
    soulstones = []
    for soulstone in codex.soulstones:
        status = by_id.get(soulstone.id) or EngineStatus(soulstone.id, "stopped")
        soulstones.append({
            **status.summary(), "since_epoch": status.since, "groups": list(soulstone.groups),
            "models": list(soulstone.models), "engine": soulstone.engine,
            "runtime": soulstone.runtime, "uri": soulstone.uri,
            "port": status.port or soulstone.port, "socket": status.socket or soulstone.socket,
            "description": soulstone.description, "capabilities": list(soulstone.capabilities),
            "gpu_memory_bytes": gpu_memory.get(soulstone.id),
            "in_flight": scheduler.inflight[soulstone.id],
            "serving": soulstone.id in scheduler.running,
        })  # fmt: skip
    groups = sorted({group for s in codex.soulstones for group in s.groups})
    return {"soulstones": soulstones, "groups": groups,
            "conflicts": [list(pair) for pair in conflict_pairs(codex.soulstones)],
            "seq": services.live.last_seq}  # fmt: skip


def queue_view(services: Services) -> dict[str, Any]:
    """Requests waiting per soulstone and in waves, slots in use, refusals by minute."""
    scheduler = services.scheduler
    slots = services.guard.slots
    waiting: Counter[str] = Counter()
    waves = []
    for wave in scheduler.waves:
        tickets = [t for t in wave.tickets if t.counts and not t.future.done()]
        waiting.update(t.soulstone for t in tickets)
        waves.append({"soulstones": sorted(wave.targets), "waiting": len(tickets),
                      "swapping": wave.executing})  # fmt: skip
    soulstones = [{"id": s.id, "models": list(s.models), "running": s.id in scheduler.running,
                   "in_flight": scheduler.inflight[s.id], "waiting": waiting[s.id]}
                  for s in services.codex.soulstones]  # fmt: skip
    return {
        "slots": {"in_flight": slots.in_flight, "limit": slots.limit, "waiting": slots.waiting,
                  "queue": slots.queue},
        "soulstones": soulstones, "waves": waves, "minutes": services.live.minutes(),
        "swaps": scheduler.swaps, "seq": services.live.last_seq,
    }  # fmt: skip


def adapters_view(services: Services) -> dict[str, Any]:
    """Every adapter cold, warm or hot, per soulstone; loads and evictions so far."""
    hot = services.hot
    by_base: dict[str, list[dict[str, Any]]] = {}
    for name, record in sorted(services.adapters.items()):
        by_base.setdefault(record.base, []).append({
            "name": name, "rank": record.rank, "state": services.adapter_state(record),
            "size": record.size,
        })  # fmt: skip
    soulstones = []
    for soulstone in services.codex.soulstones:
        if soulstone.lora is None and soulstone.id not in by_base:
            continue
        soulstones.append({
            "id": soulstone.id, "running": soulstone.id in services.scheduler.running,
            "max_loras": soulstone.lora.max_loras if soulstone.lora else None,
            "hot": hot.hot(soulstone.id) if hot is not None else [],
            "adapters": by_base.get(soulstone.id, []),
        })  # fmt: skip
    recent = [e.as_dict() for e in services.live.recent(kinds=("adapter",))][-50:]
    return {"enabled": hot is not None, "soulstones": soulstones,
            "loads": hot.loads if hot is not None else 0,
            "evictions": hot.evictions if hot is not None else 0, "recent": recent,
            "seq": services.live.last_seq}  # fmt: skip


def councils_view(live: LiveHub, client: str, admin: bool) -> dict[str, Any]:
    """The last council runs this viewer may see (admins: all; others: their own)."""
    runs = [run for run in live.councils() if admin or run.get("client") == client]
    return {"runs": runs, "seq": live.last_seq}
