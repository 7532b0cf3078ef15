"""A soulstone's `fallback`: the soulstone serving that model takes its requests for a while.

While the requested soulstone is marked failed, or as many requests wait for
it as the gateway's queue holds (`gateway.queue`), a request goes to the
soulstone serving its `fallback` model instead: the same call, prepared
again for that model (so its permissions, tools policy and budget are that
soulstone's), and answered with `X-Soulstone-Served-By`. One hop only: a
fallback's own fallback is never followed.
"""

from __future__ import annotations

from soulstone.dispatch.call import Call
from soulstone.dispatch.prepare import Prepared, prepare
from soulstone.dispatch.services import Services
from soulstone.errors import Refusal


def overwhelmed(prepared: Prepared, services: Services) -> bool:
    """True when the requested soulstone is marked failed, or its queue is full."""
    scheduler, soulstone_id = services.scheduler, prepared.soulstone.id
    if scheduler.recovery.marked(soulstone_id):
        return True
    return scheduler.waiting(soulstone_id) >= max(1, services.guard.gateway.queue)


def fallback_for(call: Call, prepared: Prepared, services: Services) -> Prepared | None:
    """The call prepared for the soulstone serving the fallback model; None when it may not go.

    None: no fallback declared, an adapter was asked for, the fallback is
    itself marked failed, or the caller may not use the fallback model.
    """
    model = prepared.soulstone.fallback
    if model is None or prepared.adapter is not None:
        return None
    target = services.routes.get(model)
    if target is None or target.id == prepared.soulstone.id:
        return None
    if services.scheduler.recovery.marked(target.id):
        return None
    document = {**prepared.document, "model": model}
    try:
        found = prepare(call._replace(document=document), services.routes, services.adapters,
                        services.codex, services.policy, services.strict)  # fmt: skip
    except Refusal:
        return None
    return found._replace(changed=True)  # the body names the fallback model now
