"""Councils through a real gateway process and fake engines (SPEC C8).

The fake engines answer by marks in a persona's system prompt (`[[delay=MS]]`,
`[[fail=STATUS]]`, `[[say=TEXT]]`, `[[echo]]`, `[[json=…]]`,
`[[veto-while=TEXT]]`) and record each call's request id and times on the
machine's monotonic clock (`/fake/calls`), so overlap is read, not timed.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest

from gateway_harness import (
    RunningGateway,
    StartGateway,
    fake_codex,
    fake_engine_calls,
    fake_table,
    keyed,
    lora_table,
    request_lines,
    streamed_text,
    table_port,
    write_councils,
)
from lora_helpers import write_adapter


def ask(gateway: RunningGateway, name: str, question: str = "What is truth?",
        **extra: Any) -> httpx2.Response:  # fmt: skip
    body = {"messages": [{"role": "user", "content": question}], **extra}
    with gateway.http() as http:
        return http.post(f"/v1/council/{name}", json=body)


def events_of(text: str) -> list[tuple[str, Any]]:
    """(event name, data) of a server-sent event stream; `message` for unnamed events."""
    found = []
    for block in text.split("\n\n"):
        name, data = "message", None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            found.append((name, data if data == "[DONE]" else json.loads(data)))
    return found


def metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    text = gateway.http().get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = re.escape(f"{name}{{{wanted}}}" if labels else name)
    match = re.search(rf"^{key} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


TRIO = """
[persona.maat]
model = "m-a"
system = "You are Ma'at. [[delay=300]] [[say=truth is balance]]"
[persona.lilith]
model = "m-b"
system = "You are Lilith. [[delay=300]] [[say=truth is shadow]]"
[persona.roc]
model = "m-c"
system = "You are Roc. [[delay=300]] [[say=truth is height]]"
[persona.thoth]
model = "m-a"
system = "You are Thoth. [[echo]]"

[council.pantheon]
personas = ["maat", "lilith", "roc"]
aggregator = "thoth"
"""


@pytest.fixture
def trio(tmp_path: Path, start_gateway: StartGateway) -> tuple[RunningGateway, list[str]]:
    tables = [fake_table(name, model=f"m-{name}", group="g") for name in ("a", "b", "c")]
    codex = fake_codex(tmp_path / "codex", *tables)
    councils = write_councils(tmp_path / "councils", TRIO)
    return start_gateway(codex, "--councils", str(councils)), tables


def test_every_persona_answers_at_once_and_the_aggregator_sees_every_answer(
    trio: tuple[RunningGateway, list[str]],
) -> None:
    gateway, tables = trio
    with gateway.http() as http:
        for table in "abc":  # engines up first: the run's time is the personas' own
            assert http.post("/admin/up", json={"name": table}).status_code == 200
        answer = http.post(
            "/v1/council/pantheon",
            headers={"X-Request-ID": "council-1"},
            json={"messages": [{"role": "user", "content": "What is truth?"}]},
        )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["council"] == "pantheon"
    [first] = result["rounds"]
    assert first["routed"] == ["maat", "lilith", "roc"] and first["veto"] is None
    contents = {a["persona"]: a["content"] for a in first["answers"]}
    assert contents == {"maat": "truth is balance", "lilith": "truth is shadow",
                        "roc": "truth is height"}  # fmt: skip
    assert all(a["error"] is None and a["completion_tokens"] == 3 for a in first["answers"])
    final = result["final"]
    assert final["persona"] == "thoth"
    for persona, content in contents.items():  # labelled by persona (not anonymous)
        assert f"[{persona}]\n{content}" in final["content"]
    assert "What is truth?" in final["content"]
    assert result["usage"]["total_tokens"] == (result["usage"]["prompt_tokens"]
                                               + result["usage"]["completion_tokens"])  # fmt: skip
    # The three members overlapped on their engines: each began before any other ended.
    calls = [c for t in tables for c in fake_engine_calls(t) if c["id"] != "council-1.thoth"]
    assert sorted(c["id"] for c in calls) == ["council-1.lilith", "council-1.maat",
                                              "council-1.roc"]  # fmt: skip
    assert max(c["began"] for c in calls) < min(c["ended"] for c in calls)
    # ... and the aggregator began after the last of them ended.
    [aggregated] = [c for c in fake_engine_calls(tables[0]) if c["id"] == "council-1.thoth"]
    assert aggregated["began"] >= max(c["ended"] for c in calls)
    assert result["ms"] < 900  # three 300 ms personas one after another could not be this fast
    # One request-log line per persona call (council and persona named), one for the council.
    lines = request_lines(gateway, "council-1", "council-1.maat", "council-1.thoth")
    assert lines["council-1"]["model"] == "council/pantheon"
    assert lines["council-1.maat"]["council"] == "pantheon"
    assert lines["council-1.maat"]["persona"] == "maat"
    assert all("What is truth" not in json.dumps(line) for line in lines.values())
    assert metric(gateway, "soulstone_council_runs_total", council="pantheon",
                  outcome="answered") == 1  # fmt: skip


def test_the_openai_client_asks_a_council_as_a_model(
    trio: tuple[RunningGateway, list[str]],
) -> None:
    gateway, _ = trio
    client = gateway.uds_client()
    listed = {m.id for m in client.models.list().data}
    assert "council/pantheon" in listed
    messages: list[Any] = [{"role": "user", "content": "What is truth?"}]
    whole = client.chat.completions.create(model="council/pantheon", messages=messages)
    assert whole.model == "council/pantheon"
    content = whole.choices[0].message.content or ""
    assert "[maat]\ntruth is balance" in content
    assert whole.usage is not None and whole.usage.total_tokens > 0
    streamed = client.chat.completions.create(
        model="council/pantheon", messages=messages, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    text, usage = streamed_text(streamed)
    assert text == content
    assert usage is not None and usage.total_tokens > 0


def test_the_event_stream_comes_in_order(trio: tuple[RunningGateway, list[str]]) -> None:
    gateway, _ = trio
    answer = ask(gateway, "pantheon", stream=True)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = events_of(answer.text)
    names = [name for name, _ in events]
    assert names[0] == "routed" and events[0][1]["personas"] == ["maat", "lilith", "roc"]
    assert names[1:4] == ["answer"] * 3
    assert {data["persona"] for _, data in events[1:4]} == {"maat", "lilith", "roc"}
    assert set(names[4:-1]) == {"final"} and events[-1] == ("message", "[DONE]")
    final = "".join(data["content"] for name, data in events if name == "final")
    assert "[roc]\ntruth is height" in final


def test_a_failed_persona_is_recorded_and_the_council_goes_on_while_quorum_holds(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    table = fake_table("a", model="m-a")
    councils = write_councils(tmp_path / "councils", """
[persona.good1]
model = "m-a"
system = "[[say=one]]"
[persona.good2]
model = "m-a"
system = "[[say=two]]"
[persona.broken]
model = "m-a"
system = "[[fail=500]]"
[persona.slow]
model = "m-a"
system = "[[delay=5000]]"
[persona.agg]
model = "m-a"
system = "[[echo]]"

[council.holds]
personas = ["good1", "good2", "broken"]
aggregator = "agg"
quorum = 2

[council.breaks]
personas = ["good1", "broken", "slow"]
aggregator = "agg"
quorum = 2
timeout_s = 0.5
""")  # fmt: skip
    gateway = start_gateway(fake_codex(tmp_path / "codex", table), "--councils", str(councils))
    held = ask(gateway, "holds")
    assert held.status_code == 200, held.text
    answers = {a["persona"]: a for a in held.json()["rounds"][0]["answers"]}
    assert answers["broken"]["content"] is None
    assert answers["broken"]["error"].startswith("ENGINE_ERROR: status 500")
    assert "[broken]" not in held.json()["final"]["content"]
    broke = ask(gateway, "breaks")
    assert broke.status_code == 502, broke.text
    error = broke.json()["error"]
    assert error["code"] == "COUNCIL_QUORUM_NOT_MET"
    came = {a["persona"]: a for a in error["answers"]}
    assert came["good1"]["content"] == "one"
    assert came["slow"]["error"].startswith("COUNCIL_PERSONA_TIMEOUT")
    assert metric(gateway, "soulstone_council_quorum_failures_total", council="breaks") == 1


def test_a_veto_sends_the_draft_back_for_one_more_round(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    table = fake_table("a", model="m-a")
    councils = write_councils(tmp_path / "councils", """
[persona.one]
model = "m-a"
system = "[[say=first thought]]"
[persona.agg]
model = "m-a"
system = "[[echo]]"
[persona.judge]
model = "m-a"
system = "[[veto-while=(round 1)]]"
[persona.never]
model = "m-a"
system = "[[veto-while=Draft]]"

[council.judged]
personas = ["one"]
aggregator = "agg"
veto = "judge"

[council.stubborn]
personas = ["one"]
aggregator = "agg"
veto = "never"
max_rounds = 2
""")  # fmt: skip
    gateway = start_gateway(fake_codex(tmp_path / "codex", table), "--councils", str(councils))
    answer = ask(gateway, "judged", stream=True)
    names = [name for name, _ in events_of(answer.text)]
    assert names == ["routed", "answer", "draft", "veto", "routed", "answer", "draft", "veto",
                     "final", "message"]  # fmt: skip
    whole = ask(gateway, "judged")
    result = whole.json()
    first, second = result["rounds"]
    assert first["veto"] == {"verdict": "veto", "reason": "not yet"}
    assert second["veto"] == {"verdict": "accept", "reason": "fine"}
    assert result["final"]["content"] == second["draft"]
    # The second round's persona saw the vetoed draft and the reason.
    last = [c for c in fake_engine_calls(table) if c["id"].endswith(".one")][-1]["last"]
    assert "vetoed: not yet" in last["content"]
    stubborn = ask(gateway, "stubborn").json()
    assert len(stubborn["rounds"]) == 2
    assert stubborn["rounds"][-1]["veto"]["verdict"] == "veto"  # recorded, and still answered
    assert stubborn["final"]["content"] == stubborn["rounds"][-1]["draft"]
    assert metric(gateway, "soulstone_council_vetoes_total", council="stubborn") == 2


def test_routers_choose_by_rules_and_by_a_forced_json_answer(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    table = fake_table("a", model="m-a")
    councils = write_councils(tmp_path / "councils", """
[persona.isis]
model = "m-a"
system = "[[say=isis]]"
[persona.thoth]
model = "m-a"
system = "[[say=thoth]]"
[persona.agg]
model = "m-a"
system = "[[echo]]"
[persona.picker]
model = "m-a"
system = 'Pick. [[json={"personas": ["thoth", "nobody"]}]]'
[persona.confused]
model = "m-a"
system = "[[json=not json at all]]"

[council.ruled]
personas = ["isis", "thoth"]
aggregator = "agg"
router = { kind = "rules" }
[[council.ruled.rules]]
match = "(?i)myth"
personas = ["isis"]

[council.picked]
personas = ["isis", "thoth"]
aggregator = "agg"
router = { kind = "model", persona = "picker" }

[council.fallback]
personas = ["isis", "thoth"]
aggregator = "agg"
router = { kind = "model", persona = "confused" }
""")  # fmt: skip
    gateway = start_gateway(fake_codex(tmp_path / "codex", table), "--councils", str(councils))
    assert ask(gateway, "ruled", "Tell me a myth").json()["rounds"][0]["routed"] == ["isis"]
    unmatched = ask(gateway, "ruled", "Tell me a number").json()["rounds"][0]
    assert unmatched["routed"] == ["isis", "thoth"] and unmatched["fallback"]
    picked = ask(gateway, "picked").json()["rounds"][0]
    assert picked["routed"] == ["thoth"] and picked["fallback"] is None
    router_call = [c for c in fake_engine_calls(table) if c["id"].endswith(".picker")][-1]
    assert "isis" in router_call["last"]["content"]  # the router saw the personas to pick from
    fell = ask(gateway, "fallback").json()["rounds"][0]
    assert fell["routed"] == ["isis", "thoth"]
    assert "not a JSON object" in fell["fallback"]


def test_personas_on_conflicting_engines_run_in_waves_with_one_swap(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    """Group A's personas first (A runs), then B's with the aggregator: one swap, none back."""
    tables = [fake_table("a", model="m-a", group="ga"), fake_table("b", model="m-b", group="gb")]
    councils = write_councils(tmp_path / "councils", """
[persona.a1]
model = "m-a"
system = "[[say=a1]]"
[persona.a2]
model = "m-a"
system = "[[say=a2]]"
[persona.b1]
model = "m-b"
system = "[[say=b1]]"
[persona.agg]
model = "m-b"
system = "[[echo]]"

[council.split]
personas = ["b1", "a1", "a2"]
aggregator = "agg"
""")  # fmt: skip
    codex = fake_codex(tmp_path / "codex", *tables)
    gateway = start_gateway(codex, "--councils", str(councils))
    with gateway.http() as http:
        assert http.post("/admin/up", json={"name": "a"}).status_code == 200
    plan = gateway.cli("council", "plan", "split", "--json", "--councils", str(councils))
    assert plan.returncode == 0, plan.stderr
    answer = ask(gateway, "split")
    assert answer.status_code == 200, answer.text
    swaps = metric(gateway, "soulstone_swaps_total")
    assert swaps == 1, swaps
    assert {a["content"] for a in answer.json()["rounds"][0]["answers"]} == {"a1", "a2", "b1"}
    waves = [w["personas"] for w in json.loads(plan.stdout)["waves"]]
    assert waves == [["a1", "a2"], ["b1"]]


def test_twenty_personas_finish_through_four_slots(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    table = fake_table("a", model="m-a")
    personas = "".join(f'[persona.p{i}]\nmodel = "m-a"\nsystem = "[[delay=50]] [[say=p{i}]]"\n'
                       for i in range(20))  # fmt: skip
    names = ", ".join(f'"p{i}"' for i in range(20))
    councils = write_councils(tmp_path / "councils", personas + f"""
[persona.agg]
model = "m-a"
system = "[[echo]]"
[council.crowd]
personas = [{names}]
aggregator = "agg"
""")  # fmt: skip
    gateway = start_gateway(fake_codex(tmp_path / "codex", table), "--councils", str(councils),
                            "--max-parallel", "4")  # fmt: skip
    answer = ask(gateway, "crowd")
    assert answer.status_code == 200, answer.text
    answers = answer.json()["rounds"][0]["answers"]
    assert [a["content"] for a in answers] == [f"p{i}" for i in range(20)]


def test_a_caller_that_may_not_use_a_persona_or_is_over_its_tokens_runs_nothing(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    tables = [
        fake_table("a", "--tokens", "60", model="m-a", group="g"),
        fake_table("b", model="m-b", group="g"),
    ]
    councils = write_councils(tmp_path / "councils", TRIO.replace(
        '[persona.roc]\nmodel = "m-c"', '[persona.roc]\nmodel = "m-b"'))  # fmt: skip
    narrow_key, narrow = keyed("narrow", models=["m-a"])
    thrifty_key, thrifty = keyed("thrifty", limits={"tokens_per_minute": 40})
    gateway = start_gateway(fake_codex(tmp_path / "codex", *tables), "--councils", str(councils),
                            clients={"clients": {**narrow, **thrifty}},
                            with_harness=True)  # fmt: skip
    base = f"http://127.0.0.1:{gateway.tcp_port}"
    body = {"messages": [{"role": "user", "content": "What is truth?"}]}
    forbidden = httpx2.post(f"{base}/v1/council/pantheon", json=body,
                            headers={"Authorization": f"Bearer {narrow_key}"})  # fmt: skip
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "MODEL_FORBIDDEN"
    listed = httpx2.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {narrow_key}"})
    assert "council/pantheon" not in {m["id"] for m in listed.json()["data"]}
    spend = httpx2.post(f"{base}/v1/chat/completions", headers={
        "Authorization": f"Bearer {thrifty_key}"}, json={"model": "m-a", **body})  # fmt: skip
    assert spend.status_code == 200
    over = httpx2.post(f"{base}/v1/council/pantheon", json=body,
                       headers={"Authorization": f"Bearer {thrifty_key}"})  # fmt: skip
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "TOKEN_RATE_LIMITED"
    persona_calls = [c for t in tables for c in fake_engine_calls(t) if "." in c["id"]]
    assert persona_calls == []  # no persona ran for either refusal


def test_an_unknown_council_is_a_404_in_openai_shape(
    trio: tuple[RunningGateway, list[str]],
) -> None:
    gateway, _ = trio
    answer = ask(gateway, "nobody")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "COUNCIL_NOT_FOUND"
    bad = ask(gateway, "pantheon", messages="not a list")
    assert bad.status_code == 400


def test_the_websocket_asks_a_council_as_a_model(
    trio: tuple[RunningGateway, list[str]],
) -> None:
    gateway, _ = trio

    async def run() -> list[str]:
        connector = aiohttp.UnixConnector(path=str(gateway.socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.ws_connect("http://localhost/v1/stream") as ws,
        ):
            await ws.send_str(json.dumps({"model": "council/pantheon", "messages": [
                {"role": "user", "content": "What is truth?"}]}))  # fmt: skip
            frames: list[str] = []
            while not frames or frames[-1] != "[DONE]":
                message = await asyncio.wait_for(ws.receive(), 30)
                assert message.type == aiohttp.WSMsgType.TEXT
                frames.append(message.data)
            return frames

    frames = asyncio.run(run())
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all(c["model"] == "council/pantheon" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "[lilith]\ntruth is shadow" in text


def test_the_cli_runs_a_council_live_and_as_json(
    trio: tuple[RunningGateway, list[str]],
) -> None:
    gateway, _ = trio
    whole = gateway.cli("council", "run", "pantheon", "What is truth?", "--json")
    assert whole.returncode == 0, whole.stderr
    result = json.loads(whole.stdout)
    assert result["council"] == "pantheon" and result["final"]["persona"] == "thoth"
    live = gateway.cli("council", "run", "pantheon", "What is truth?")
    assert live.returncode == 0, live.stderr
    assert "[maat]\ntruth is balance" in live.stdout  # the final answer
    assert "lilith" in live.stderr and "answered" in live.stderr  # the live table
    missing = gateway.cli("council", "run", "nobody", "What is truth?")
    assert missing.returncode != 0
    assert "no council is named 'nobody'" in missing.stderr


def test_a_reload_reads_the_council_files_again_and_refuses_broken_ones(
    tmp_path: Path,
    trio: tuple[RunningGateway, list[str]],
) -> None:
    gateway, _ = trio
    councils = tmp_path / "councils" / "councils.toml"
    councils.write_text(TRIO + '\n[council.pair]\npersonas = ["maat", "roc"]\n'
                        'aggregator = "thoth"\n')  # fmt: skip
    assert ask(gateway, "pair").status_code == 404  # not read yet
    with gateway.http() as http:
        assert http.post("/admin/reload").json()["reloaded"] is True
    paired = ask(gateway, "pair")
    assert paired.status_code == 200, paired.text
    assert paired.json()["rounds"][0]["routed"] == ["maat", "roc"]
    councils.write_text(TRIO + '\n[council.broken]\npersonas = ["nobody"]\naggregator = "thoth"\n')
    with gateway.http() as http:
        refused = http.post("/admin/reload")
    assert refused.status_code == 422
    assert any("nobody" in e["message"] for e in refused.json()["errors"])
    assert ask(gateway, "pair").status_code == 200  # the councils in force stay


def test_a_council_is_one_request_in_flight_for_its_caller(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    """`concurrent = 1` lets a three-persona council through, and nothing beside it."""
    table = fake_table("a", model="m-a")
    councils = write_councils(tmp_path / "councils", """
[persona.p1]
model = "m-a"
system = "[[delay=1500]] [[say=one]]"
[persona.p2]
model = "m-a"
system = "[[delay=1500]] [[say=two]]"
[persona.p3]
model = "m-a"
system = "[[delay=1500]] [[say=three]]"
[persona.agg]
model = "m-a"
system = "[[echo]]"
[council.slow]
personas = ["p1", "p2", "p3"]
aggregator = "agg"
""")  # fmt: skip
    key, single = keyed("single", limits={"concurrent": 1})
    gateway = start_gateway(fake_codex(tmp_path / "codex", table), "--councils", str(councils),
                            clients={"clients": single})  # fmt: skip
    base = f"http://127.0.0.1:{gateway.tcp_port}"
    headers = {"Authorization": f"Bearer {key}"}
    body = {"messages": [{"role": "user", "content": "Count."}]}

    async def run() -> tuple[httpx2.Response, httpx2.Response]:
        async with httpx2.AsyncClient(timeout=60) as http:
            council = asyncio.ensure_future(
                http.post(f"{base}/v1/council/slow", json=body, headers=headers)
            )
            while len([c for c in fake_engine_calls(table) if c["ended"] is None]) < 3:
                await asyncio.sleep(0.02)  # until the three personas are being answered
            beside = await http.post(f"{base}/v1/chat/completions", headers=headers,
                                     json={"model": "m-a", **body})  # fmt: skip
            return await council, beside

    council, beside = asyncio.run(run())
    assert council.status_code == 200, council.text
    assert [a["error"] for a in council.json()["rounds"][0]["answers"]] == [None] * 3
    assert beside.status_code == 429
    assert beside.json()["error"]["code"] == "CONCURRENCY_LIMITED"


def test_adapter_personas_on_one_base_wait_for_a_hot_slot_rather_than_fail(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    """Two adapters and the base as personas, `max_loras = 1`: all answer, one adapter waits."""
    table = lora_table("base", model="base", max_loras=1)
    councils = write_councils(tmp_path / "councils", '[persona.plain]\nmodel = "base"\n')
    gateway = start_gateway(fake_codex(tmp_path / "codex", table), "--councils", str(councils))
    with gateway.http() as http:
        for name in ("a", "b"):
            path = str(write_adapter(tmp_path / name))
            added = http.post("/admin/lora/add",
                              json={"name": name, "path": path, "base": "base"})  # fmt: skip
            assert added.status_code == 200, added.text
        (councils / "councils.toml").write_text("""
[persona.plain]
model = "base"
system = "[[say=plain]]"
[persona.first]
model = "a"
system = "[[delay=200]] [[say=first]]"
[persona.second]
model = "b"
system = "[[delay=200]] [[say=second]]"
[council.adapters]
personas = ["plain", "first", "second"]
aggregator = "plain"
""")  # fmt: skip
        assert http.post("/admin/reload").json()["reloaded"] is True
    answer = ask(gateway, "adapters")
    assert answer.status_code == 200, answer.text
    contents = {a["persona"]: a["content"] for a in answer.json()["rounds"][0]["answers"]}
    assert contents == {"plain": "plain", "first": "first", "second": "second"}
    record = httpx2.get(f"http://127.0.0.1:{table_port(table)}/fake/record").json()["record"]
    loads = [line for line in record if line.startswith(("load", "unload"))]
    assert loads in (["load a", "unload a", "load b"], ["load b", "unload b", "load a"])
