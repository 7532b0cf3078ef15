"""Run the gateway: listeners, signals, reload, idle stops, and a bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from soulstone.artifacts.preflight import Preflight
from soulstone.codex.models import Codex, Soulstone
from soulstone.council.convene import Convener
from soulstone.council.door import CouncilDoor
from soulstone.council.memory import ResonanceMemory
from soulstone.council.models import Councils
from soulstone.dispatch.path import RequestPath
from soulstone.dispatch.services import Services
from soulstone.errors import UsageError
from soulstone.gateway.admin import make_admin_app
from soulstone.gateway.app import MAX_BODY_BYTES, make_app
from soulstone.gateway.connections import (
    ConnectionOptions,
    PeerKey,
    connection_ceiling,
    raise_open_files_limit,
)
from soulstone.gateway.hotpath import HotGate
from soulstone.gateway.listen import (
    ListenError,
    activation_sockets,
    bind_unix,
    describe,
    parse_tcp,
    prepare_socket,
    tcp_refusal,
)
from soulstone.gateway.observability import (
    make_metrics_app,
    metrics_socket,
    metrics_tcp_address,
)
from soulstone.gateway.reload import reload_codex
from soulstone.gateway.ui_listener import Dashboard, make_ui_door
from soulstone.guard.guard import Guard
from soulstone.lora.cache import AdapterCache
from soulstone.lora.hot import HotAdapters, upstream_call
from soulstone.lora.owner import RegistryOwner
from soulstone.lora.registry import RegistryError
from soulstone.observe.live import LiveHub
from soulstone.observe.logging import RequestLog, make_logger
from soulstone.observe.metrics import Metrics
from soulstone.observe.trace import ENDPOINT_FLAG, Target, Tracer, shown_url
from soulstone.runtimes.process import ProcessRuntime
from soulstone.runtimes.remote import RemoteKeyError, RemoteRuntime, read_key
from soulstone.runtimes.state import StateFolder, write_json
from soulstone.runtimes.table import make_runtimes
from soulstone.runtimes.upstream import Upstreams
from soulstone.supervisor.recovery import Note
from soulstone.supervisor.remotes import RemoteWatch
from soulstone.supervisor.restarts import RestartPolicy
from soulstone.supervisor.schedule import Scheduler
from soulstone.supervisor.supervisor import Event, Supervisor
from soulstone.tools.policy import default_policy
from soulstone.tools.store import load_policy

GC_THRESHOLD = 20_000
TRACES_CLOSE_S = 5.0  # at shutdown, queued spans get this long to reach the collector


@dataclass(frozen=True)
class ServeOptions:
    """How `soulstone serve` listens and schedules."""

    socket: Path
    clients: Path
    own_socket_folder: bool = True
    tcp: str | None = None
    tcp_public: bool = False  # a non-loopback --tcp address (then API keys are required)
    strict: bool = False
    max_wait: float = 2.0
    drain_timeout: float = 30.0
    shutdown_timeout: float = 30.0
    idle_check: float = 5.0
    max_parallel: int | None = None
    queue: int | None = None
    timeout: float | None = None
    tools: Path | None = None  # tools.yaml; None or absent: the built-in policy
    adapters: Path | None = None  # the registry's folder; None: no LoRA adapters
    adapter_cache: Path | None = None
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_connections_per_peer: int = 256
    councils: Councils | None = None  # the validated council files (SPEC C8); None: not loaded
    # Reads the council files again against a codex and the adapter names (on SIGHUP).
    reload_councils: Callable[[Codex, Collection[str]], Councils] | None = None
    metrics_socket: Path | None = None  # the read-only observability listener (SPEC C9)
    metrics_group: str | None = None  # the group that may read it
    metrics_tcp: str | None = None  # or on loopback TCP (not under --strict)
    memory: Path | None = None  # the councils' resonance memory folder; None: no memory
    memory_url: str | None = None  # a Qdrant server that replaces the folder
    otlp: Target | None = None  # where traces go (--otlp-endpoint, OTEL_*); None: tracing off
    restarts: RestartPolicy = field(default_factory=RestartPolicy)  # dead engines (SPEC C10)
    capture: Path | None = None  # the folder of opted-in clients' chats (SPEC C7); None: off


def _log_event(log: Any, live: LiveHub, metrics: Metrics) -> Callable[[Event], None]:
    def emit(event: Event) -> None:
        failed = ("warmup_failed", "sleep_failed", "wake_failed")
        write = log.warning if event.kind in failed else log.info
        write(event.kind, soulstone=event.soulstone, detail=event.detail or None,
              seconds=round(event.elapsed, 3) if event.elapsed else None)  # fmt: skip
        if event.kind in ("warmed", "warmup_failed"):
            metrics.warmed(event.soulstone, event.elapsed, event.kind == "warmed")
        live.supervisor_event(event)  # the dashboard's feed

    return emit


NOTES = {
    "died": "engine died", "restarting": "restarting engine", "marked": "engine marked failed",
    "cleared": "engine restart allowed again", "connection": "engine connection broke; it runs",
}  # fmt: skip


def _recovery_note(log: Any, live: LiveHub, metrics: Metrics) -> Callable[[Note], None]:
    def emit(note: Note) -> None:
        if note.kind == "restarting":
            metrics.engine_restarts.labels(note.soulstone).inc()
        write = log.warning if note.kind in ("died", "marked") else log.info
        write(NOTES[note.kind], soulstone=note.soulstone, detail=note.detail or None)
        if note.kind in ("died", "marked"):
            live.engine(note.soulstone, "failed", note.detail)

    return emit


def checked_keys(load: Callable[[], Codex]) -> Callable[[], Codex]:
    """`load`, refusing (UsageError) a codex whose remote soulstones' keys cannot be read.

    So the gateway does not start, and a reload keeps the running codex.
    """

    def load_checked() -> Codex:
        codex = load()
        problems = []
        for soulstone in codex.soulstones:
            if soulstone.remote is not None:
                try:
                    read_key(soulstone)
                except RemoteKeyError as error:
                    problems.append(str(error))
        if problems:
            raise UsageError("\n".join(problems))
        return codex

    return load_checked


def _tokenizer_failed(log: Any) -> Callable[[Path, str], None]:
    def emit(folder: Path, why: str) -> None:
        log.warning("tokenizer folder unusable: the remote's /tokenize counts instead",
                    folder=str(folder), reason=why)  # fmt: skip

    return emit


def _remote_state(log: Any, live: LiveHub) -> Callable[[Soulstone, bool, str | None], None]:
    def emit(soulstone: Soulstone, up: bool, detail: str | None) -> None:
        if up:
            log.info("remote answers", soulstone=soulstone.id, probe=detail)
        else:
            log.warning("remote does not answer", soulstone=soulstone.id, reason=detail)
        live.engine(soulstone.id, "running" if up else "failed", detail or "")

    return emit


def _listeners(options: ServeOptions) -> tuple[list[socket.socket], Path | None, list[str]]:
    activated = activation_sockets()
    if activated:
        if options.strict and any(s.family != socket.AF_UNIX for s in activated):
            raise UsageError("strict mode refuses TCP, and systemd passed a TCP socket")
        return activated, None, []
    warnings = prepare_socket(options.socket, options.own_socket_folder)
    return [bind_unix(options.socket)], options.socket, warnings


async def _metrics_listener(
    services: Services, options: ServeOptions, tcp: tuple[str, int] | None
) -> tuple[web.AppRunner | None, list[str]]:
    """Start the read-only observability listener when asked; its runner and addresses."""
    if options.metrics_socket is None and tcp is None:
        return None, []
    runner = web.AppRunner(make_metrics_app(services), access_log=None)
    await runner.setup()
    addresses = []
    try:
        if options.metrics_socket is not None:
            sock = metrics_socket(options.metrics_socket, options.metrics_group)
            await web.SockSite(runner, sock).start()
            addresses.append(f"unix:{options.metrics_socket}")
        if tcp is not None:
            try:
                await web.TCPSite(runner, tcp[0], tcp[1]).start()
            except OSError as error:
                raise ListenError(f"cannot listen on --metrics-tcp {tcp[0]}:{tcp[1]}: "
                                  f"{error.strerror or error}") from None  # fmt: skip
            addresses.append(f"tcp:{tcp[0]}:{tcp[1]}")
    except BaseException:
        await runner.cleanup()
        raise
    return runner, addresses


def start_tracer(target: Target | None, log: Any) -> Tracer | None:
    """The OTLP tracer when tracing is asked for (the SDK is imported only then), else None.

    Without the `otel` extra installed: UsageError when --otlp-endpoint asked
    for traces, a warning (and no traces) when only an OTEL_* variable did.
    """
    if target is None:
        return None
    try:
        from soulstone.observe.otlp import start_tracing
    except ImportError as error:
        why = (f"traces need the OpenTelemetry SDK (pip install 'soulstone[otel]'); "
               f"{error.name or 'it'} is not installed")  # fmt: skip
        if target.source == ENDPOINT_FLAG:
            raise UsageError(f"{ENDPOINT_FLAG}: {why}") from None
        log.warning(f"{target.source} is set, but {why}: serving without traces")
        return None
    tracer = start_tracing(target, log)
    log.info("traces go to an OTLP collector", endpoint=shown_url(target.url),
             asked_by=target.source)  # fmt: skip
    return tracer


def _tcp_keys(guard: Guard) -> int:
    return sum(1 for entry in guard.identities.keys.values() if "tcp" in entry.transports)


def _on_refused(log: Any) -> Callable[[PeerKey, str], None]:
    def emit(key: PeerKey, reason: str) -> None:
        log.warning("refusing connections", peer=f"{key[0]}:{key[1]}", reason=reason)

    return emit


async def serve(
    options: ServeOptions,
    load: Callable[[], Codex],
    state: StateFolder,
    ready: Callable[[list[str]], None] | None = None,
    stop: asyncio.Event | None = None,
    log_stream: Any = None,
) -> None:
    """Serve until SIGTERM or SIGINT (or `stop` is set); SIGHUP reloads the codex."""
    log = make_logger("gateway", log_stream)
    if options.strict and options.tcp:
        raise UsageError("strict mode refuses TCP: leave out --tcp")
    metrics_tcp = (metrics_tcp_address(options.metrics_tcp, options.strict)
                   if options.metrics_tcp else None)  # fmt: skip
    if options.metrics_group is not None and options.metrics_socket is None:
        raise UsageError("--metrics-group names the group of --metrics-socket: give that too")
    load = checked_keys(load)
    codex = load()
    live = LiveHub()
    metrics = Metrics()
    runtimes = make_runtimes(state, strict=options.strict, spare_keeper=True)
    supervisor = Supervisor(codex, state, runtimes,
                            on_event=_log_event(log, live, metrics),
                            preflight=Preflight.from_env(strict=options.strict))  # fmt: skip
    upstreams = Upstreams()
    overrides = {"max_parallel": options.max_parallel, "queue": options.queue,
                 "timeout_s": options.timeout}  # fmt: skip
    guard = Guard.load(options.clients, upstreams, overrides, _tokenizer_failed(log))
    refused = tcp_refusal(options.tcp, options.tcp_public, _tcp_keys(guard), options.clients)
    if refused is not None:
        raise UsageError(refused)
    files_before, open_files = raise_open_files_limit()
    policy = load_policy(options.tools) if options.tools is not None else default_policy()
    sockets, owned_path, warnings = _listeners(options)  # refuses a live gateway's socket
    hot: HotAdapters | None = None
    if options.adapters is not None:
        try:
            registry = await RegistryOwner.open(options.adapters)  # its own thread owns ZODB
        except RegistryError as error:
            warnings.append(f"adapters are off in this gateway: {error}")
        else:
            cache = AdapterCache(options.adapter_cache or options.adapters / "cache")
            hot = HotAdapters(upstream_call(upstreams), registry, cache)

    def engines_changed(ids: set[str]) -> None:
        for soulstone_id in ids:
            if hot is not None:
                hot.forget(soulstone_id)

    scheduler = Scheduler(supervisor, max_wait=options.max_wait,
                          drain_timeout=options.drain_timeout, on_swap=metrics.swapped,
                          on_change=engines_changed, on_wave=live.swap, restarts=options.restarts,
                          on_note=_recovery_note(log, live, metrics))  # fmt: skip
    metrics.watch(scheduler.queued, scheduler.in_flight)
    metrics.watch_engines(lambda: {s.id: s.id in scheduler.running
                                   for s in scheduler.codex.soulstones})  # fmt: skip
    await scheduler.sync()
    memory = None if options.memory is None else ResonanceMemory(options.memory,
                                                                 options.memory_url)  # fmt: skip

    def use_councils(declared: Councils | None) -> None:
        if declared is None or not declared.councils:
            request_path.councils = None
        else:
            request_path.councils = CouncilDoor(Convener(request_path, declared, memory))

    async def reload() -> dict[str, Any]:
        councils = None
        if options.reload_councils is not None:
            councils = (options.reload_councils, use_councils)
        return await reload_codex(gateway, load, log, options.tools, councils)

    gateway = Services(scheduler, upstreams, metrics, reload, guard, RequestLog(log_stream), hot,
                       strict=options.strict, live=live, capture_to=options.capture)  # fmt: skip
    await gateway.refresh_adapters()
    gateway.use_policy(policy)
    remote_runtime = runtimes["remote"]
    assert isinstance(remote_runtime, RemoteRuntime)
    watch = gateway.remotes = scheduler.remotes = RemoteWatch(
        scheduler, upstreams, remote_runtime, on_models=gateway.discover,
        on_state=_remote_state(log, live),
    )  # fmt: skip
    watch.use(codex)
    if hot is not None:
        hot.on_load, hot.on_evict = metrics.adapter_loads.inc, metrics.adapter_evictions.inc
        hot.on_wait = metrics.adapter_slot_waits.inc
        hot.on_change = live.adapter
    request_path = RequestPath(gateway, log, start_tracer(options.otlp, log))
    use_councils(options.councils)
    dashboard = Dashboard(request_path, state.root / "gateway.json", options.strict, log)
    runner = web.AppRunner(
        make_app(request_path, make_admin_app(memory), make_ui_door(dashboard)),
        handler_cancellation=True,
        access_log=None, shutdown_timeout=options.shutdown_timeout,
    )  # fmt: skip
    await runner.setup()
    assert runner.server is not None
    connection_options = ConnectionOptions(
        header_timeout=options.header_timeout, idle_timeout=options.idle_timeout,
        max_per_peer=options.max_connections_per_peer,
        max_total=connection_ceiling(open_files),
    )  # fmt: skip
    gate = HotGate(runner.server, connection_options, _on_refused(log), request_path,
                   MAX_BODY_BYTES)  # fmt: skip
    for warning in warnings:
        log.warning(warning)
    # The observability listener first: once the API answers, everything listens.
    try:
        metrics_runner, metrics_addresses = await _metrics_listener(gateway, options, metrics_tcp)
    except BaseException:
        await runner.cleanup()
        raise
    try:
        listeners = await gate.listen(sockets, parse_tcp(options.tcp) if options.tcp else None)
    except BaseException:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
            if options.metrics_socket is not None:
                options.metrics_socket.unlink(missing_ok=True)
        await runner.cleanup()
        raise
    addresses = [describe(s) for s in sockets] + ([f"tcp:{options.tcp}"] if options.tcp else [])
    metrics.watch_sockets([str(s.getsockname()) for s in sockets if s.family == socket.AF_UNIX])
    write_json(state.root / "gateway.json", {"pid": os.getpid(), "on": addresses,
                                             "strict": options.strict})  # fmt: skip
    # Everything built so far lives as long as the gateway: keep it out of the garbage
    # collector's young generations, and collect those less often under load.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    log.info("listening", on=addresses, metrics_on=metrics_addresses or None,
             soulstones=len(codex.soulstones),
             clients=str(options.clients) if options.clients.exists() else None,
             open_files=open_files, open_files_before=files_before)  # fmt: skip
    if ready is not None:
        ready(addresses)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    background: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(reload())
        background.add(task)
        task.add_done_callback(background.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    async def reap_idle() -> None:
        while True:
            await asyncio.sleep(options.idle_check)
            stopped = await scheduler.stop_idle()
            if stopped:
                log.info("stopped idle soulstones", soulstones=stopped)

    idle = asyncio.create_task(reap_idle())
    try:
        await stop.wait()
    finally:
        log.info("shutting down", in_flight=scheduler.in_flight())
        idle.cancel()
        for listener in listeners:  # 1. stop accepting
            listener.close()
        live.close()  # the dashboard's live feeds end
        await dashboard.close()
        deadline = loop.time() + options.shutdown_timeout
        while scheduler.in_flight() and loop.time() < deadline:  # 2. let requests finish
            await asyncio.sleep(0.05)
        gate.close()  # 3. close what is left
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
            if options.metrics_socket is not None:
                options.metrics_socket.unlink(missing_ok=True)
        await watch.close()
        await scheduler.close()
        stopped = await supervisor.stop_soulstones(scheduler.started, "the gateway stops")
        for runtime in runtimes.values():
            if isinstance(runtime, ProcessRuntime):
                await asyncio.to_thread(runtime.close)  # its spare keeper
        await upstreams.close()
        gateway.requests_log.flush()
        if request_path.tracer is not None:
            await request_path.tracer.aclose(TRACES_CLOSE_S)
        if hot is not None:
            await hot.registry.close()
        if memory is not None:
            await memory.close()
        if owned_path is not None:
            with contextlib.suppress(FileNotFoundError):
                owned_path.unlink()
        (state.root / "gateway.json").unlink(missing_ok=True)
        log.info("stopped", engines_stopped=stopped)
