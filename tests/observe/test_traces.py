"""OpenTelemetry traces of a real gateway on fake engines, as a test collector gets them (C9).

Spans are exported in batches; the gateways here export every 50 ms
(OTEL_BSP_SCHEDULE_DELAY) and the tests wait on what the collector received
(with a deadline). Every prompt carries a marker no exported byte may hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway_harness import (
    RunningGateway,
    StartGateway,
    fake_codex,
    fake_table,
    gateway_starter,
    lora_table,
    table_port,
)
from lora_helpers import write_adapter
from otlp_receiver import ReceivedSpan, Receiver, running_receiver

MARKER = "quartz-zebra-7731"  # in every prompt here; in nothing the collector gets
BATCH_MS = "50"


def traced(receiver: Receiver, **more: str) -> dict[str, str]:
    """The environment of a gateway exporting to this collector, in short batches."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": BATCH_MS,
            **more}  # fmt: skip


def chat(model: str, words: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 4,
            "messages": [{"role": "user", "content": f"{MARKER} {words}"}], **extra}  # fmt: skip


def engine_calls(table: str) -> dict[str, dict[str, Any]]:
    """The answers a fake engine gave, by request id."""
    answer = httpx2.get(f"http://127.0.0.1:{table_port(table)}/fake/calls")
    return {call["id"]: call for call in answer.json()["calls"]}


def assert_no_marker(receiver: Receiver) -> None:
    with receiver.changed:
        assert receiver.bodies
        assert not [body for body in receiver.bodies if MARKER.encode() in body]


def within(child: ReceivedSpan, parent: ReceivedSpan) -> bool:
    return parent.start <= child.start <= child.end <= parent.end


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[RunningGateway, Receiver, str]]:  # fmt: skip
    """One traced gateway (its engine up already) for the tests that need nothing else."""
    folder = tmp_path_factory.mktemp("traced")
    table = fake_table("a", "--tokens", "3", model="m-a")
    with running_receiver() as receiver, gateway_starter(folder) as start:
        gateway = start(fake_codex(folder / "codex", table), "--otlp-endpoint", receiver.url,
                        env={"OTEL_BSP_SCHEDULE_DELAY": BATCH_MS})  # fmt: skip
        with gateway.http() as http:
            assert http.post("/admin/up", json={"name": "a"}).status_code == 200
        yield gateway, receiver, table


def test_a_request_is_one_trace_of_its_span_and_the_phases_that_happened(
    served: tuple[RunningGateway, Receiver, str],
) -> None:
    gateway, receiver, table = served
    with gateway.http() as http:
        answer = http.post("/v1/chat/completions", json=chat("m-a", "one"),
                           headers={"X-Request-ID": "plain-1",
                                    "X-Conveyance-Session-ID": "session-1"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    request = receiver.request_span("plain-1")
    assert request.kind == "server" and request.parent_id == "" and request.service == "soulstone"
    tokens = {k: request.attributes.pop(k) for k in ("prompt_tokens", "completion_tokens",
                                                      "total_tokens")}  # fmt: skip
    assert request.attributes == {"request_id": "plain-1", "conveyance_session_id": "session-1",
                                  "client": "owner", "model": "m-a", "way": "http",
                                  "status": 200}  # fmt: skip
    assert tokens["completion_tokens"] == 3 and tokens["prompt_tokens"] > 0
    assert tokens["total_tokens"] == tokens["prompt_tokens"] + 3
    children = receiver.children(request)
    # The engine ran and the prompt was new: a token count and the upstream call, nothing else.
    assert set(children) == {"soulstone.token_count", "soulstone.upstream"}
    upstream = children["soulstone.upstream"]
    assert upstream.kind == "client" and upstream.events == []
    assert upstream.attributes == {"soulstone": "a", "endpoint": "/v1/chat/completions",
                                   "stream": False, "status": 200}  # fmt: skip
    assert children["soulstone.token_count"].attributes["soulstone"] == "a"
    assert all(within(child, request) for child in children.values())
    assert children["soulstone.token_count"].end <= upstream.start
    assert len(receiver.trace(request.trace_id)) == 3
    # The engine was told the upstream span: it can join the trace.
    sent = engine_calls(table)["plain-1"]["traceparent"]
    assert sent == f"00-{request.trace_id}-{upstream.span_id}-01"
    assert_no_marker(receiver)


def test_a_stream_marks_its_first_token_and_a_callers_trace_is_continued(
    served: tuple[RunningGateway, Receiver, str],
) -> None:
    gateway, receiver, table = served
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    sent_by_caller = f"00-{caller_trace}-{caller_span}-01"
    with gateway.http() as http:
        answer = http.post("/v1/chat/completions", json=chat("m-a", "two", stream=True),
                           headers={"X-Request-ID": "stream-1",
                                    "traceparent": sent_by_caller})  # fmt: skip
    assert answer.status_code == 200 and "data: [DONE]" in answer.text
    request = receiver.request_span("stream-1")
    assert (request.trace_id, request.parent_id) == (caller_trace, caller_span)
    assert request.remote_parent and request.kind == "server"
    assert request.attributes["status"] == 200 and "conveyance_session_id" not in request.attributes
    upstream = receiver.children(request)["soulstone.upstream"]
    assert upstream.attributes["stream"] is True and upstream.attributes["chunks"] >= 3
    [(name, at)] = upstream.events
    assert name == "first_token" and upstream.start < at <= upstream.end
    sent = engine_calls(table)["stream-1"]["traceparent"]
    assert sent == f"00-{caller_trace}-{upstream.span_id}-01"
    assert_no_marker(receiver)


def test_a_refused_request_is_a_span_with_its_code_and_no_phases(
    served: tuple[RunningGateway, Receiver, str],
) -> None:
    gateway, receiver, _ = served
    with gateway.http() as http:
        answer = http.post("/v1/chat/completions", json=chat("no-such-model", "three"),
                           headers={"X-Request-ID": "refused-1"})  # fmt: skip
    assert answer.status_code == 404
    request = receiver.request_span("refused-1")
    assert request.attributes["status"] == 404
    assert request.attributes["error_code"] == "MODEL_NOT_FOUND"
    assert "model" not in request.attributes  # a name nothing serves is the caller's text
    assert receiver.children(request) == {}
    assert_no_marker(receiver)


def test_a_swap_shows_as_the_engine_start_of_the_request_that_waited_for_it(
    tmp_path: Path, start_gateway: StartGateway, otlp_receiver: Receiver,
) -> None:  # fmt: skip
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m-a", group="ga"),
                       fake_table("b", model="m-b", group="gb"))  # fmt: skip
    gateway = start_gateway(codex, "--max-wait", "0", env=traced(otlp_receiver))
    with gateway.http() as http:
        for index, model in enumerate(("m-a", "m-b")):
            answer = http.post("/v1/chat/completions", json=chat(model, str(index)),
                               headers={"X-Request-ID": f"swap-{index}"})  # fmt: skip
            assert answer.status_code == 200, answer.text
    for index, (soulstone, swapped) in enumerate((("a", False), ("b", True))):
        request = otlp_receiver.request_span(f"swap-{index}")
        children = otlp_receiver.children(request)
        start = children["soulstone.engine_start"]
        assert start.attributes == {"soulstone": soulstone, "wait": "engine", "swapped": swapped}
        assert within(start, request) and start.end <= children["soulstone.upstream"].start
    assert_no_marker(otlp_receiver)


def test_an_adapter_that_was_not_hot_is_loaded_in_a_phase_of_its_own(
    tmp_path: Path, start_gateway: StartGateway, otlp_receiver: Receiver,
) -> None:  # fmt: skip
    codex = fake_codex(tmp_path / "c", lora_table("base", model="base", max_loras=1))
    gateway = start_gateway(codex, env=traced(otlp_receiver))
    added = gateway.cli("lora", "add", "x", str(write_adapter(tmp_path / "x")), "--base", "base")
    assert added.returncode == 0, added.stderr
    with gateway.http() as http:
        for index in range(2):  # loaded for the first, hot for the second
            answer = http.post("/v1/chat/completions", json=chat("x", "adapter"),
                               headers={"X-Request-ID": f"adapter-{index}"})  # fmt: skip
            assert answer.status_code == 200, answer.text
    first, second = (otlp_receiver.request_span(f"adapter-{i}") for i in range(2))
    load = otlp_receiver.children(first)["soulstone.adapter_load"]
    assert load.attributes == {"adapter": "x", "soulstone": "base"} and within(load, first)
    assert first.attributes["model"] == "x"
    assert "soulstone.adapter_load" not in otlp_receiver.children(second)
    assert_no_marker(otlp_receiver)


COUNCIL = """
[persona.maat]
model = "m-a"
system = "You are Ma'at. [[say=balance]]"
[persona.roc]
model = "m-a"
system = "You are Roc. [[say=height]]"
[persona.thoth]
model = "m-a"
system = "You are Thoth. [[echo]]"

[council.pair]
personas = ["maat", "roc"]
aggregator = "thoth"
"""


def test_a_councils_span_parents_every_persona_request(
    tmp_path: Path, start_gateway: StartGateway, otlp_receiver: Receiver,
) -> None:  # fmt: skip
    councils = tmp_path / "councils"
    councils.mkdir()
    (councils / "pair.toml").write_text(COUNCIL)
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m-a"))
    gateway = start_gateway(codex, "--councils", str(councils), env=traced(otlp_receiver))
    with gateway.http() as http:
        answer = http.post("/v1/council/pair", headers={"X-Request-ID": "council-1"},
                           json={"messages": [{"role": "user", "content": MARKER}]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    request = otlp_receiver.request_span("council-1")
    assert request.attributes["model"] == "council/pair"
    run = otlp_receiver.children(request)["soulstone.council"]
    assert run.attributes == {"council": "pair"} and within(run, request)
    personas = {}
    for persona in ("maat", "roc", "thoth"):
        span = otlp_receiver.request_span(f"council-1.{persona}")
        assert (span.trace_id, span.parent_id) == (request.trace_id, run.span_id)
        assert not span.remote_parent and within(span, run)
        assert span.attributes["persona"] == persona and span.attributes["council"] == "pair"
        personas[persona] = span
    assert "soulstone.upstream" in otlp_receiver.children(personas["thoth"])
    with otlp_receiver.changed:
        assert not [b for b in otlp_receiver.bodies if b"You are" in b or b"balance" in b]
    assert_no_marker(otlp_receiver)


def _answers(gateway: RunningGateway, count: int) -> list[tuple[int, str]]:
    with gateway.http() as http:
        answers = [http.post("/v1/chat/completions", json=chat("m-a", "same"),
                             headers={"X-Request-ID": f"r-{i}"}) for i in range(count)]  # fmt: skip
    return [(a.status_code, json.dumps(a.json()["choices"])) for a in answers]


def _warnings(gateway: RunningGateway) -> list[dict[str, Any]]:
    return [line for line in gateway.logged() if line.get("event", "").startswith(
        "traces cannot be exported")]  # fmt: skip


def test_a_dead_collector_changes_nothing_for_clients_and_is_logged_once(
    tmp_path: Path, start_gateway: StartGateway,
) -> None:  # fmt: skip
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m-a"))
    plain = start_gateway(codex)
    expected = _answers(plain, 3)
    plain.stop()
    with running_receiver() as gone:  # a port nothing listens on once it is shut down
        dead = gone.url
    gateway = start_gateway(codex, "--otlp-endpoint", dead, env={
        "OTEL_BSP_SCHEDULE_DELAY": BATCH_MS, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"})  # fmt: skip
    assert _answers(gateway, 3) == expected
    deadline = time.monotonic() + 20
    while not _warnings(gateway):  # the first batch failed (the log is written as it goes)
        assert time.monotonic() < deadline, gateway.log.read_text()
        time.sleep(0.05)
    assert _answers(gateway, 3) == expected  # more batches fail: not logged again
    assert gateway.stop() == 0  # and the last one, at shutdown, within its bound
    warnings = _warnings(gateway)
    assert len(warnings) == 1 and warnings[0]["endpoint"] == f"{dead}/v1/traces"


def test_a_collector_that_refuses_every_batch_is_logged_once(
    tmp_path: Path, start_gateway: StartGateway, otlp_receiver: Receiver,
) -> None:  # fmt: skip
    otlp_receiver.status = 500
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m-a"))
    gateway = start_gateway(codex, env=traced(otlp_receiver))
    for batch in range(1, 4):  # three batches, each refused
        assert {status for status, _ in _answers(gateway, 2)} == {200}
        otlp_receiver.wait_for(lambda r: r.posts >= batch)  # noqa: B023 (used at once)
    assert len(_warnings(gateway)) == 1
    assert "Failed to export" not in gateway.log.read_text()  # the SDK's own lines: silenced


def test_with_tracing_off_nothing_of_opentelemetry_is_imported() -> None:
    code = (
        "import sys\n"
        "import soulstone.cli.app, soulstone.cli.serve, soulstone.gateway.serve\n"
        "import soulstone.dispatch.path, soulstone.council.convene\n"
        "from soulstone.gateway.serve import start_tracer\n"
        "assert start_tracer(None, None) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.strip() == "[]"
