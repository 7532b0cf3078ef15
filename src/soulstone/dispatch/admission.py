"""Admission on the request path: a global slot, the engine (or its fallback), the adapter.

Each step holds what it took on the request's lease, so whatever happens
next releases it once.
"""

from __future__ import annotations

import asyncio
import time

from soulstone.codex.models import Soulstone
from soulstone.dispatch.call import Call
from soulstone.dispatch.fallback import fallback_for, overwhelmed
from soulstone.dispatch.lease import Lease
from soulstone.dispatch.prepare import Prepared
from soulstone.dispatch.services import Services
from soulstone.errors import Refusal
from soulstone.lora.registry import AdapterRecord
from soulstone.observe.trace import Notes
from soulstone.supervisor.restarts import EngineFailed


def admit_now(services: Services, prepared: Prepared, lease: Lease) -> bool:
    """Take a free slot and the running engine without waiting (no adapter asked for).

    False, holding nothing, when anything must wait: then `_admit` does it all.
    """
    if prepared.adapter is not None:
        return False
    slots, scheduler = services.guard.slots, services.scheduler
    soulstone = prepared.soulstone
    if not slots.try_acquire():
        return False
    if not scheduler.admit_now(soulstone):
        slots.release()
        return False
    lease.hold(slots.release)
    lease.hold(lambda: scheduler.release(soulstone))
    return True


async def admit(services: Services, call: Call, prepared: Prepared, lease: Lease,
                trace: Notes | None) -> Prepared:  # fmt: skip
    """Take a global slot, the engine (manifested, swapped in) and the adapter (hot).

    Returns the call as prepared for the soulstone that takes it: the
    requested one, or its fallback while that one is failed or full.
    Traced: a phase for each wait there was (slot, engine, adapter load).
    """
    slots, scheduler = services.guard.slots, services.scheduler
    if not slots.try_acquire():
        began = time.perf_counter()
        await slots.acquire()
        if trace is not None:
            trace.add("soulstone.queue", began, wait="slot")
    lease.hold(slots.release)
    if not scheduler.admit_now(prepared.soulstone):
        if prepared.soulstone.fallback is not None and overwhelmed(prepared, services):
            prepared = fallback_for(call, prepared, services) or prepared
        prepared = await _engine(services, call, prepared, trace)
    soulstone = prepared.soulstone
    lease.hold(lambda: scheduler.release(soulstone))
    adapter = prepared.adapter
    if adapter is not None:
        if services.hot is None:
            raise Refusal(409, "NO_ADAPTERS", "this gateway runs without adapters")
        hot = services.hot
        loads = trace is not None and adapter.name not in hot.hot(soulstone.id)
        began = time.perf_counter()
        await hot.acquire(soulstone, adapter)
        if loads and trace is not None:
            trace.add("soulstone.adapter_load", began, adapter=adapter.name,
                      soulstone=soulstone.id)  # fmt: skip
        lease.hold(lambda: hot.release(soulstone, adapter.name))
        if call.session_id and call.council is None:
            _prefetch_next(services, soulstone, call.session_id, adapter)
    return prepared


async def _engine(services: Services, call: Call, prepared: Prepared,
                  trace: Notes | None) -> Prepared:  # fmt: skip
    """Wait for the engine (started or swapped in); a failed one's fallback takes the call."""
    scheduler = services.scheduler
    soulstone = prepared.soulstone
    began, swaps = time.perf_counter(), scheduler.swaps
    running = soulstone.id in scheduler.running  # running: queued behind a swap
    try:
        try:
            await scheduler.acquire(soulstone)
        except EngineFailed:
            fallback = fallback_for(call, prepared, services)
            if fallback is None:
                raise
            prepared, soulstone = fallback, fallback.soulstone
            await scheduler.acquire(soulstone)
    finally:
        if trace is not None:
            trace.add("soulstone.queue" if running else "soulstone.engine_start", began,
                      soulstone=soulstone.id, wait="engine",
                      swapped=scheduler.swaps != swaps)  # fmt: skip
    return prepared


def _prefetch_next(
    services: Services, soulstone: Soulstone, session: str, adapter: AdapterRecord
) -> None:
    """Count the session's transition; warm (or load) the adapter likely to come next."""
    hit, following = services.transitions.observe(session, adapter.name)
    services.metrics.prefetch.labels("hit" if hit else "miss").inc()
    record = services.adapters.get(following) if following else None
    if record is None or services.hot is None or record.base != soulstone.id:
        return
    task = asyncio.create_task(services.hot.prefetch(soulstone, record))
    services.background.add(task)
    task.add_done_callback(services.background.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
