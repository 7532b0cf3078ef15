"""Reload (SIGHUP or the admin API): a new codex replaces the running one only if it works.

Two ways a reload fails, and in both the running configuration keeps serving:

- the new codex (or clients file, tools policy, councils) is invalid: nothing
  changes;
- an engine the reload restarts on its new declaration does not become
  healthy: the old declarations come back, and what they ran is started again.

Either way `Services.last_reload` says what happened and why (`soulstone
status` shows a failed one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from soulstone.codex.conflicts import in_conflict
from soulstone.codex.models import Codex, Soulstone
from soulstone.council.models import Councils
from soulstone.dispatch.services import Services
from soulstone.errors import CodexError, SoulstoneError, UsageError
from soulstone.gateway.app import changed_soulstones
from soulstone.guard.clients import ClientsFileError
from soulstone.tools.store import PolicyError, load_policy

CouncilsReload = tuple[Callable[[Codex, Collection[str]], Councils], Callable[[Councils], None]]


def restartable(codex: Codex, ids: Collection[str], running: Collection[str],
                ) -> tuple[Soulstone, ...]:  # fmt: skip
    """These soulstones (by id, as `codex` declares them) that conflict with nothing running."""
    found = [s for i in sorted(ids) if (s := codex.get(i)) is not None]
    beside = [s for s in codex.soulstones if s.id in running] + found
    return tuple(s for s in found if not any(in_conflict(s, o) for o in beside if o.id != s.id))


def _outcome(reloaded: bool, **details: Any) -> dict[str, Any]:
    """What `status` shows of the last reload: whether it took, when, and why not."""
    return {"reloaded": reloaded, "at": time.time(), **details}


async def reload_codex(
    gateway: Services, load: Callable[[], Codex], log: Any, tools: Path | None = None,
    councils: CouncilsReload | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Load and validate the codex (and clients file, councils) again; restart what changed.

    `councils` reads the council files against the new codex, and then puts
    them in force; nothing changes when either the codex or they are invalid.
    Soulstones whose declaration changed are stopped once their requests
    drain; those that ran are started again on the new declaration, and if
    one fails the old codex is put back (and its engines started again).
    """
    try:
        new = load()
        declared = councils[0](new, gateway.adapters.keys()) if councils is not None else None
        gateway.guard.reload()
        gateway.guard.counter.reread_folders()  # a remote's tokenizer folder may have changed
        if tools is not None:
            gateway.use_policy(load_policy(tools))
    except (CodexError, UsageError, ClientsFileError, PolicyError) as error:
        problems = getattr(error, "problems", ())
        log.error("reload refused: the codex is invalid; the running one stays",
                  errors=len(problems) or 1)  # fmt: skip
        errors = [p.as_dict() for p in problems] or [{"message": str(error)}]
        gateway.last_reload = _outcome(False, why="the new codex is invalid", errors=errors)
        return {"reloaded": False, "errors": errors}
    old = gateway.codex
    changed = changed_soulstones(old, new)
    scheduler = gateway.scheduler
    async with scheduler.paused():
        stopped = await scheduler.stop(changed, "its declaration changed")
        scheduler.recovery.clear(changed)  # a new declaration starts with a clean record
        gateway.use(new)
        try:
            await scheduler.start_now(restartable(new, stopped, scheduler.running))
        except SoulstoneError as error:
            gateway.use(old)
            scheduler.retarget(old)
            log.error("reload failed: an engine did not start; the running codex stays",
                      stopped=sorted(stopped))  # fmt: skip
            errors = [{"message": str(error)}]
            back = restartable(old, stopped, scheduler.running)
            try:
                await scheduler.start_now(back)
            except SoulstoneError as again:
                log.error("the running codex's engines did not start again either",
                          soulstones=[s.id for s in back])  # fmt: skip
                errors.append({"message": f"starting the running codex again: {again}"})
            gateway.last_reload = _outcome(
                False, why="an engine of the new codex did not start", errors=errors
            )
            return {"reloaded": False, "errors": errors}
        scheduler.retarget(new)
    if councils is not None and declared is not None:
        councils[1](declared)
    log.info("reloaded the codex", changed=sorted(changed), stopped=sorted(stopped))
    gateway.last_reload = _outcome(True, changed=sorted(changed))
    return {"reloaded": True, "changed": sorted(changed), "stopped": sorted(stopped)}
