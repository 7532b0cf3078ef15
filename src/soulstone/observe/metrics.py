"""Prometheus metrics of one gateway (its own registry: no module globals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SWAP_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """The gateway's counters, histograms and gauges."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "soulstone_requests", "Requests by model and HTTP status.", ["model", "status"],
            registry=self.registry,
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
        self.engine_failures = Counter(
            "soulstone_engine_failures", "Engines that stopped answering mid-request.",
            ["soulstone"], registry=self.registry,
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
        # labels() takes a lock and builds a key on every call: keep the children.
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._refusal_children: dict[str, Any] = {}

    def request_done(self, model: str, status: int, seconds: float | None) -> None:
        """Count one request (and its latency when it reached an engine)."""
        key = (model, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(model, str(status))
        counter.inc()
        if seconds is not None:
            histogram = self._latency_children.get(model)
            if histogram is None:
                histogram = self._latency_children[model] = self.latency.labels(model)
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

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
