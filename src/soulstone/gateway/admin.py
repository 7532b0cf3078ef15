"""The admin API the CLI uses while a gateway runs: status, up, down, reload, lora, memory.

Admin clients only.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from soulstone.codex.models import Soulstone
from soulstone.council.memory import MemoryStoreError, ResonanceMemory
from soulstone.dispatch.call import wants_flat_errors
from soulstone.dispatch.services import Services
from soulstone.errors import Refusal, SoulstoneError, UsageError
from soulstone.gateway.errors import error_response
from soulstone.gateway.routes import caller, read_json_object
from soulstone.gateway.state import GATEWAY, correlation
from soulstone.lora.adapter import AdapterRefused, check_name, inspect_adapter
from soulstone.lora.hot import HotAdapters
from soulstone.lora.registry import AdapterRecord, RegistryError
from soulstone.supervisor.plan import Target, make_plan, name_target, resolve

routes = web.RouteTableDef()
MEMORY = web.AppKey("memory", ResonanceMemory)


def _json(
    gateway: Services, request: web.Request, document: Any, status: int = 200
) -> web.Response:
    return web.Response(
        body=orjson.dumps(document), status=status, content_type="application/json",
        headers=correlation(gateway, request),
    )  # fmt: skip


def _target(gateway: Services, body: dict[str, Any]) -> Target:
    name, capability = body.get("name"), body.get("capability")
    if (name is None) == (capability is None):
        raise Refusal(400, "BAD_TARGET", "give exactly one of `name` or `capability`")
    if capability is not None:
        return Target("capability", str(capability))
    try:
        return name_target(gateway.codex, str(name))
    except UsageError as error:
        raise Refusal(404, "UNKNOWN_TARGET", str(error)) from None


@web.middleware
async def admin_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Only admin clients may use the admin API; map refusals onto the error table."""
    gateway = request.config_dict[GATEWAY]
    client = None
    try:
        client = await caller(gateway, request)
        if not client.admin:
            raise Refusal(403, "ADMIN_ONLY", f"{client.name} is not an admin client")
        response: web.StreamResponse = await handler(request)
        return response
    except Refusal as refusal:
        failed = refusal
    except SoulstoneError as error:  # usage errors, manifest failures: one row of the table
        failed = Refusal(409, "ADMIN_FAILED", str(error))
    gateway.metrics.refused(failed.code)
    flat = wants_flat_errors(request.headers, client)
    return error_response(failed, correlation(gateway, request), flat)


@routes.get("/status")
async def status(request: web.Request) -> web.Response:
    """Every soulstone's status, as `soulstone status --json` prints it, and the last reload.

    A soulstone marked failed (or awaiting its restart) says so, and why, in `reason`.
    """
    gateway = request.config_dict[GATEWAY]
    found = await gateway.scheduler.supervisor.statuses()
    notes = gateway.scheduler.recovery.notes()
    for index, engine in enumerate(found):
        if (note := notes.get(engine.id)) is not None:
            marked, reason = note
            found[index] = replace(engine, state="failed" if marked else engine.state,
                                   reason=reason)  # fmt: skip
    document: dict[str, Any] = {"soulstones": [f.summary() for f in found]}
    if gateway.last_reload is not None:
        document["reload"] = gateway.last_reload
    return _json(gateway, request, document)


@routes.post("/up")
async def up(request: web.Request) -> web.Response:
    """Manifest a soulstone, group or capability through the wave queue (or plan it)."""
    gateway = request.config_dict[GATEWAY]
    body = await read_json_object(request)
    target = _target(gateway, body)
    scheduler = gateway.scheduler
    try:
        targets = resolve(gateway.codex, target, scheduler.running)
    except UsageError as error:
        raise Refusal(404, "UNKNOWN_TARGET", str(error)) from None
    running = [s for s in gateway.codex.soulstones if s.id in scheduler.running]
    plan = make_plan(targets, running)
    document = {
        "targets": [s.id for s in targets],
        "stop": [{"id": s.soulstone.id, "reason": s.reason} for s in plan.stop],
        "start": [s.id for s in plan.start],
    }
    if not body.get("dry_run"):
        scheduler.recovery.clear(s.id for s in targets)  # an operator's `up` lifts a failed mark
        await scheduler.manifest(targets)
    return _json(gateway, request, document)


@routes.post("/down")
async def down(request: web.Request) -> web.Response:
    """Stop a soulstone or group (all running ones without a name) once its requests drain."""
    gateway = request.config_dict[GATEWAY]
    body = await read_json_object(request)
    scheduler = gateway.scheduler
    if body.get("name") is None:
        ids = {s.id for s in await scheduler.supervisor.statuses() if s.alive}
    else:
        target = _target(gateway, {"name": body["name"]})
        ids = {s.id for s in resolve(gateway.codex, target, scheduler.running)}
    stopped = await scheduler.stop(ids, "asked to stop")
    return _json(gateway, request, {"stopped": sorted(stopped)})


@routes.post("/reload")
async def reload(request: web.Request) -> web.Response:
    """Validate and apply the codex again; keep the running one when it is invalid."""
    gateway = request.config_dict[GATEWAY]
    report = await gateway.reload()
    return _json(gateway, request, report, status=200 if report.get("reloaded") else 422)


def _hot(gateway: Services) -> HotAdapters:
    if gateway.hot is None:
        raise Refusal(409, "NO_ADAPTERS", "this gateway runs without an adapter registry")
    return gateway.hot


async def _named_adapter(
    request: web.Request,
) -> tuple[Services, HotAdapters, AdapterRecord, Soulstone | None]:
    """The gateway, its hot adapters, the adapter the body names, and its base (None when gone)."""
    gateway = request.config_dict[GATEWAY]
    hot = _hot(gateway)
    name = (await read_json_object(request)).get("name")
    if not isinstance(name, str) or not name:
        raise Refusal(400, "BAD_TARGET", "the body needs `name`: an adapter's name")
    record = gateway.adapters.get(name)
    if record is None:
        raise Refusal(404, "UNKNOWN_ADAPTER", f"no adapter named {name!r}")
    return gateway, hot, record, gateway.codex.get(record.base)


@routes.get("/lora")
async def lora_list(request: web.Request) -> web.Response:
    """Every registered adapter with its state (cold, warm, hot)."""
    gateway = request.config_dict[GATEWAY]
    _hot(gateway)
    await gateway.refresh_adapters()
    adapters = [r.summary(gateway.adapter_state(r)) for _, r in sorted(gateway.adapters.items())]
    return _json(gateway, request, {"adapters": adapters})


def _text_field(body: dict[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise Refusal(400, "ADAPTER_REFUSED", f"the body needs `{key}`: {what}")
    return value


@routes.post("/lora/add")
async def lora_add(request: web.Request) -> web.Response:
    """Validate and store an adapter folder the gateway can read (off the event loop)."""
    gateway = request.config_dict[GATEWAY]
    hot = _hot(gateway)
    body = await read_json_object(request)
    base_id = _text_field(body, "base", "the id of the soulstone serving the base model")
    folder = Path(_text_field(body, "path", "the adapter folder's absolute path"))
    if not folder.is_absolute():
        raise Refusal(400, "ADAPTER_REFUSED", f"{folder}: give the folder's absolute path")
    base = gateway.codex.get(base_id)
    if base is None:
        raise Refusal(404, "UNKNOWN_TARGET", f"no soulstone named {base_id!r}")
    await gateway.refresh_adapters()
    try:
        name = check_name(body.get("name"), gateway.codex, gateway.adapters)
        info = await asyncio.to_thread(inspect_adapter, name, folder, base,
                                       any_base=body.get("any_base") is True)  # fmt: skip
        record = await hot.registry.add(info, folder)
    except (AdapterRefused, RegistryError) as error:
        raise Refusal(400, "ADAPTER_REFUSED", str(error)) from None
    await gateway.refresh_adapters()
    return _json(gateway, request, record.summary(gateway.adapter_state(record)))


@routes.post("/lora/rm")
async def lora_rm(request: web.Request) -> web.Response:
    """Unload (when idle) and delete an adapter, and its warm copy."""
    gateway, hot, record, base = await _named_adapter(request)
    if base is not None:
        await _unload(hot, base, record.name)
    await hot.registry.remove(record.name)
    await asyncio.to_thread(hot.cache.remove, record)
    await gateway.refresh_adapters()
    return _json(gateway, request, {"removed": record.name})


@routes.post("/lora/load")
async def lora_load(request: web.Request) -> web.Response:
    """Make an adapter hot now (its base soulstone is brought up first)."""
    gateway, hot, record, base = await _named_adapter(request)
    if base is None:
        raise Refusal(409, "UNKNOWN_TARGET", f"{record.name}'s soulstone is gone")
    await gateway.scheduler.manifest((base,))
    await hot.acquire(base, record)
    hot.release(base, record.name)
    return _json(gateway, request, record.summary("hot"))


@routes.post("/lora/unload")
async def lora_unload(request: web.Request) -> web.Response:
    """Unload an adapter no request uses."""
    gateway, hot, record, base = await _named_adapter(request)
    unloaded = base is not None and await _unload(hot, base, record.name)
    return _json(gateway, request, {"unloaded": unloaded})


async def _unload(hot: HotAdapters, base: Soulstone, name: str) -> bool:
    return await hot.unload(base, name)


@routes.post("/memory/forget")
async def memory_forget(request: web.Request) -> web.Response:
    """Delete a session's resonance memories in every council (the gateway holds the store)."""
    gateway = request.config_dict[GATEWAY]
    memory = request.config_dict.get(MEMORY)
    if memory is None:
        raise Refusal(409, "NO_MEMORY", "this gateway runs without resonance memory")
    session = (await read_json_object(request)).get("session")
    if not isinstance(session, str) or not session:
        raise Refusal(400, "BAD_REQUEST", "the body needs `session`: a session id",
                      param="session")  # fmt: skip
    try:
        forgotten = await memory.forget(session)
    except MemoryStoreError as error:
        raise Refusal(503, "MEMORY_FAILED", str(error)) from None
    return _json(gateway, request, {"session": session, "forgotten": forgotten,
                                    "where": memory.where})  # fmt: skip


def make_admin_app(memory: ResonanceMemory | None = None) -> web.Application:
    """The admin sub-application, mounted at /admin/ (`memory`: the councils' memory)."""
    admin = web.Application(middlewares=[admin_guard])
    if memory is not None:
        admin[MEMORY] = memory
    admin.add_routes(routes)
    return admin
