"""Prometheus metrics of one gateway (its own registry: no module globals)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from soulstone.observe.gpu import GpuMemory

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Live(Collector):
    """Figures read when scraped: engines up, the API socket there, GPU memory (when any)."""

    def __init__(self) -> None:
        self.engines: Callable[[], Mapping[str, bool]] | None = None
        self.sockets: Sequence[str] = ()
        self.gpus = GpuMemory()

    def collect(self) -> Iterator[Metric]:
        if self.engines is not None:
            up = GaugeMetricFamily(
                "soulstone_engine_up", "1 while a soulstone runs and answered its health "
                "check, else 0.", labels=["soulstone"],
            )  # fmt: skip
            for soulstone, running in sorted(self.engines().items()):
                up.add_metric([soulstone], 1.0 if running else 0.0)
            yield up
        if self.sockets:
            present = GaugeMetricFamily("soulstone_api_socket_up", "1 while the gateway's API "
                                        "Unix socket exists, else 0.", labels=["path"])  # fmt: skip
            for path in self.sockets:
                try:
                    alive = stat.S_ISSOCK(os.stat(path).st_mode)
                except OSError:
                    alive = False
                present.add_metric([path], 1.0 if alive else 0.0)
            yield present
        gpus = self.gpus.read()
        if gpus:  # absent, not zero, without a GPU
            used = GaugeMetricFamily("soulstone_gpu_memory_used_bytes", "GPU memory in use "
                                     "(NVML).", labels=["gpu", "name"])  # fmt: skip
            total = GaugeMetricFamily("soulstone_gpu_memory_total_bytes", "GPU memory "
                                      "(NVML).", labels=["gpu", "name"])  # fmt: skip
            for gpu in gpus:
                used.add_metric([str(gpu.gpu), gpu.name], float(gpu.used))
                total.add_metric([str(gpu.gpu), gpu.name], float(gpu.total))
            yield used
            yield total


SWAP_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """The gateway's counters, histograms and gauges."""

    content_type = CONTENT_TYPE_LATEST
    openmetrics_type = OPENMETRICS_TYPE

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "soulstone_requests", "Requests by model, HTTP status and client.",
            ["model", "status", "client"], registry=self.registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "soulstone_ttft_seconds", "Time from request to the first streamed chunk, by model.",
            ["model"], buckets=TTFT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "soulstone_prompt_tokens", "Prompt tokens (as the engine reported them), by model "
            "and client.", ["model", "client"], registry=self.registry,
        )  # fmt: skip
        self.completion_tokens = Counter(
            "soulstone_completion_tokens", "Completion tokens (as the engine reported them), by "
            "model and client.", ["model", "client"], registry=self.registry,
        )  # fmt: skip
        self.scrape_failures = Counter(
            "soulstone_engine_scrape_failures", "Engine /metrics scrapes that failed or took "
            "too long (left out of that answer).", ["soulstone"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "soulstone_request_seconds", "Time from request to the last byte, by model.",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.swaps = Counter("soulstone_swaps", "Engine swaps.", registry=self.registry)
        self.swap_seconds = Histogram(
            "soulstone_swap_seconds", "Time a swap took (stop, start, healthy).",
            buckets=SWAP_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.generated_ids = Counter(
            "soulstone_request_ids_generated", "Requests that came without X-Request-ID.",
            registry=self.registry,
        )  # fmt: skip
        self.warmup_seconds = Histogram(
            "soulstone_engine_warmup_seconds", "Time an engine's warm-up request took (sent "
            "once it turned healthy, before user traffic), by soulstone.", ["soulstone"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.warmup_failures = Counter(
            "soulstone_engine_warmup_failures", "Warm-up requests that failed (the engine "
            "served anyway), by soulstone.", ["soulstone"], registry=self.registry,
        )  # fmt: skip
        self.engine_failures = Counter(
            "soulstone_engine_failures", "Engines that stopped answering mid-request.",
            ["soulstone"], registry=self.registry,
        )  # fmt: skip
        self.engine_restarts = Counter(
            "soulstone_engine_restarts", "Engines the gateway restarted after they died or "
            "failed to start.", ["soulstone"], registry=self.registry,
        )  # fmt: skip
        self.prefetch = Counter(
            "soulstone_adapter_prefetch", "Adapter requests the prefetcher had predicted (hit) "
            "or not (miss).", ["result"], registry=self.registry,
        )  # fmt: skip
        self.adapter_loads = Counter(
            "soulstone_adapter_loads", "Adapters loaded into engines.", registry=self.registry
        )
        self.adapter_evictions = Counter(
            "soulstone_adapter_evictions", "Adapters unloaded to make room.", registry=self.registry
        )
        self.adapter_slot_waits = Counter(
            "soulstone_adapter_slot_waits", "Adapter loads that waited for a busy slot to free.",
            registry=self.registry,
        )  # fmt: skip
        self.heartbeat_refusals = Counter(
            "soulstone_heartbeat_refusals", "Heartbeat requests refused, by limit.", ["code"],
            registry=self.registry,
        )  # fmt: skip
        self.refusals = Counter(
            "soulstone_refusals", "Requests refused (or streams ended by an error), by code.",
            ["code"], registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "soulstone_queue_depth", "Requests waiting for an engine.", registry=self.registry
        )
        self.in_flight = Gauge(
            "soulstone_in_flight", "Requests being served.", registry=self.registry
        )
        self.council_runs = Counter(
            "soulstone_council_runs", "Council runs, by council and outcome (answered or the "
            "error code).", ["council", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.council_persona_seconds = Histogram(
            "soulstone_council_persona_seconds", "Time one persona of a council took to answer.",
            ["council", "persona"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.council_vetoes = Counter(
            "soulstone_council_vetoes", "Drafts a council's veto persona sent back.",
            ["council"], registry=self.registry,
        )  # fmt: skip
        self.council_quorum_failures = Counter(
            "soulstone_council_quorum_failures", "Council rounds with fewer answers than the "
            "quorum.", ["council"], registry=self.registry,
        )  # fmt: skip
        self.live = _Live()
        self.registry.register(self.live)
        # labels() takes a lock and builds a key on every call: keep the children.
        self._request_children: dict[tuple[str, int, str], Any] = {}
        self._token_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._ttft_children: dict[str, Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._refusal_children: dict[str, Any] = {}

    def request_done(self, model: str, status: int, client: str, seconds: float | None,
                     request_id: str) -> None:  # fmt: skip
        """Count one request, and its latency (its id the exemplar) when it reached an engine."""
        key = (model, status, client)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(model, str(status),
                                                                         client)  # fmt: skip
        counter.inc()
        if seconds is not None:
            histogram = self._latency_children.get(model)
            if histogram is None:
                histogram = self._latency_children[model] = self.latency.labels(model)
            histogram.observe(seconds, {"request_id": request_id[:64]})

    def tokens(self, model: str, client: str, prompt: int | None, completion: int | None) -> None:
        """Count a request's prompt and completion tokens."""
        key = (model, client)
        children = self._token_children.get(key)
        if children is None:
            children = (self.prompt_tokens.labels(model, client),
                        self.completion_tokens.labels(model, client))  # fmt: skip
            self._token_children[key] = children
        if prompt:
            children[0].inc(prompt)
        if completion:
            children[1].inc(completion)

    def first_token(self, model: str, seconds: float) -> None:
        """A stream's time to its first chunk."""
        histogram = self._ttft_children.get(model)
        if histogram is None:
            histogram = self._ttft_children[model] = self.ttft.labels(model)
        histogram.observe(seconds)

    def refused(self, code: str) -> None:
        """Count one refusal by its error code."""
        counter = self._refusal_children.get(code)
        if counter is None:
            counter = self._refusal_children[code] = self.refusals.labels(code)
        counter.inc()

    def watch(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the queue depth and in-flight count from these functions at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)

    def swapped(self, seconds: float) -> None:
        """Count one swap and its duration."""
        self.swaps.inc()
        self.swap_seconds.observe(seconds)

    def warmed(self, soulstone: str, seconds: float, answered: bool) -> None:
        """One warm-up request: its time when answered, else a failure."""
        if answered:
            self.warmup_seconds.labels(soulstone).observe(seconds)
        else:
            self.warmup_failures.labels(soulstone).inc()

    def watch_engines(self, engines: Callable[[], Mapping[str, bool]]) -> None:
        """Read which soulstones run (id -> up) from this function at scrape time."""
        self.live.engines = engines

    def watch_sockets(self, paths: Sequence[str]) -> None:
        """Report whether these API socket files exist at scrape time."""
        self.live.sockets = tuple(paths)

    def render(self, openmetrics: bool = False) -> bytes:
        """The exposition text (OpenMetrics, with exemplars, when asked)."""
        if openmetrics:
            text: bytes = generate_openmetrics(self.registry)  # type: ignore[no-untyped-call]
            return text
        return generate_latest(self.registry)
