"""A fake OpenAI-compatible engine (aiohttp) for fault injection and speed in tests.

    python fake_engine.py [--port N | --uds PATH] [--host H] [--model NAME]
        [--tokens N] [--chunk-bytes N] [--ttft-ms X] [--token-delay-ms X] [--slow-start S]
        [--fail-after-chunks K] [--die-after-chunks K] [--never-healthy]
        [--exit-at-once CODE] [--ignore-term] [--fork-child] [--escape-child] [--gate]
        [--fail-first STATUS]
        [--refuse-start-if PATH] [--oom-at-start]
        [--enable-sleep-mode] [--fail-sleep] [--fail-wake] [--no-tokenize]

Text is "tok0 tok1 ..."; `stream: true` gives SSE chunks then `data: [DONE]`
(`--chunk-bytes N` pads each streamed token with N bytes: a stream that fills buffers).
`GET /fake/stats` reports requests seen, requests whose client went away
(cancelled), requests in flight (so tests can see cancellation upstream) and
health probes answered.
`GET /fake/calls` lists each answer's request id, model, times, prompts,
`max_tokens` and `traceparent` header (`--fail-first STATUS` answers the first
with that error). `GET /fake/record` lists, in order, adapter loads and
unloads and the start and end of each answer (`load a`, `unload a`, `begin a`,
`end a`; the end is noted before the final `data: [DONE]`). With `--gate`,
every stream stops after its first chunk until `POST /fake/open` (sending SSE
comments while it waits): a test acts mid-stream without racing a clock.
`--refuse-start-if PATH` exits 1 at once while PATH exists (an engine that
cannot start until a test says so); `--oom-at-start` prints vLLM's CUDA
out-of-memory error and exits 1. vLLM's sleep mode: with `--enable-sleep-mode`
and `VLLM_SERVER_DEV_MODE=1` (else, as in vLLM, the paths do not exist),
`POST /sleep?level=N`, `POST /wake_up` and `GET /is_sleeping` answer as vLLM
0.32 does, and each is noted in `/fake/record` (`sleep N`, `wake`); a
sleeping engine answers generation requests 503. `--fail-sleep` and
`--fail-wake` make those calls answer 500. `--no-tokenize` serves no `/tokenize`
(a plain OpenAI-compatible server: it answers 404, as aiohttp does for any unknown path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import deque
from typing import Any

from aiohttp import web


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--uds")
    parser.add_argument("--model", default="fake")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--chunk-bytes", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--slow-start", type=float, default=0.0)
    parser.add_argument("--fail-after-chunks", type=int)
    parser.add_argument("--die-after-chunks", type=int)
    parser.add_argument("--never-healthy", action="store_true")
    parser.add_argument("--exit-at-once", type=int)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--fork-child", action="store_true")
    parser.add_argument("--escape-child", action="store_true")
    parser.add_argument("--gate", action="store_true")
    parser.add_argument("--metrics-delay", type=float, default=0.0)
    parser.add_argument("--fail-first", type=int)
    parser.add_argument("--refuse-start-if")
    parser.add_argument("--oom-at-start", action="store_true")
    # vLLM's LoRA options (soulstone derives them from a `lora` table): adapters load at run
    # time only with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING, as in vLLM.
    parser.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--max-loras", type=int, default=1)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-cpu-loras", type=int)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    parser.add_argument("--fail-sleep", action="store_true")
    parser.add_argument("--fail-wake", action="store_true")
    parser.add_argument("--no-tokenize", action="store_true")
    return parser.parse_args()


def _sleeper(new_session: bool) -> None:
    if os.fork() == 0:
        if new_session:
            os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)


def _chunk(kind: str, model: str, text: str | None, finish: str | None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    body: dict[str, Any]
    if kind == "chat":
        choice["delta"] = {"content": text} if text is not None else {}
        body = {"id": "fake", "object": "chat.completion.chunk", "model": model}
    else:
        choice["text"] = text or ""
        body = {"id": "fake", "object": "text_completion", "model": model}
    body["choices"] = [choice]
    return b"data: " + json.dumps(body).encode() + b"\n\n"


CALLS = {
    "valid": ('{"label": "name", "value": "Ada"}', "store_core"),
    "heartbeat": ('{"label": "a", "value": "b", "request_heartbeat": true}', "store_core"),
    "badjson": ('{"label": "name", "value": ', "store_core"),
    "schema": ('{"label": 7}', "fetch_core"),
}


def _tool_answer(kind: str) -> dict[str, Any]:
    """A canned answer with tool calls, for the tools contract tests."""
    if kind == "hermes":
        text = 'Sure. <tool_call>{"name": "fetch_core", "arguments": {"label": "x"}}</tool_call>'
        return {"message": {"role": "assistant", "content": text}}
    arguments, name = CALLS[kind]
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {
        "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": None, "tool_calls": [call]},
    }


def _tool_call_chunks(model: str) -> list[bytes]:
    """Two tool calls streamed a character at a time, interleaved; the second invalid."""

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {"id": "fake", "object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    texts = ['{"label": "name", "value": "Ada"}', '{"label": 7}']
    chunks = [event({"role": "assistant", "content": "Working"})]
    for index, name in enumerate(("store_core", "fetch_core")):
        chunks.append(
            event(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": f"call_{index}",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
    for position in range(max(map(len, texts))):
        for index, text in enumerate(texts):
            if position < len(text):
                chunks.append(
                    event(
                        {
                            "tool_calls": [
                                {"index": index, "function": {"arguments": text[position]}}
                            ]
                        }
                    )
                )
    chunks.append(event({}, finish="tool_calls"))
    return chunks


def token_count(body: dict[str, Any]) -> int:
    """vLLM's /tokenize answer, faked: words of the prompt, plus 4 per chat message."""
    if "messages" in body:
        return sum(len(str(m.get("content", "")).split()) + 4 for m in body["messages"])
    return len(str(body.get("prompt", "")).split())


# vLLM's words when the GPU's memory runs out (its error body's message, and its log line).
OOM_MESSAGE = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has "
               "a total capacity of 23.64 GiB of which 1.12 GiB is free.")  # fmt: skip

DIRECTIVE = re.compile(r"\[\[(\w[\w-]*)(?:=(.*?))?\]\]", re.S)


def directives(body: dict[str, Any]) -> dict[str, str]:
    """`[[name=value]]` marks in a chat request's system messages: how to answer (tests only).

    delay=MS (wait first), fail=STATUS (answer that error), oom (answer 500 with
    vLLM's out-of-memory error), say=TEXT (answer
    exactly that), echo (answer the last user message), json=TEXT (the answer
    when structured output is forced), veto-while=TEXT (forced output: veto
    while the prompt contains TEXT, else accept).
    """
    found: dict[str, str] = {}
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "system":
            for name, value in DIRECTIVE.findall(str(message.get("content", ""))):
                found[name] = value
    return found


def forced_json(body: dict[str, Any], marks: dict[str, str]) -> str | None:
    """The answer under structured output (vLLM's response_format, llama-server's json_schema)."""
    schema = body.get("json_schema")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return None
    if "json" in marks:
        return marks["json"]
    if "veto-while" in marks:
        prompt = json.dumps([m for m in body.get("messages") or [] if m.get("role") != "system"])
        if marks["veto-while"] in prompt:
            return json.dumps({"verdict": "veto", "reason": "not yet"})
        return json.dumps({"verdict": "accept", "reason": "fine"})
    properties = schema.get("properties") or {}
    if "personas" in properties:
        choices = properties["personas"].get("items", {}).get("enum", [])
        return json.dumps({"personas": choices[:1]})
    return json.dumps({"verdict": "accept", "reason": "fine"})


class Engine:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = {"requests": 0, "cancelled": 0, "in_flight": 0, "health": 0}
        self.last: dict[str, Any] = {}
        self.adapters: dict[str, str] = {}
        self.loads = 0
        self.record: deque[str] = deque(maxlen=10_000)  # bounded: benchmarks send many
        self.gate = asyncio.Event()
        # (request id, began, ended) on the machine's monotonic clock: overlaps across engines
        self.calls: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.asleep = False

    def _sleep_paths(self) -> bool:
        """vLLM serves the sleep paths only with the flag and in development mode."""
        return self.args.enable_sleep_mode and os.environ.get("VLLM_SERVER_DEV_MODE") == "1"

    async def sleep(self, request: web.Request) -> web.Response:
        if not self._sleep_paths():
            return web.json_response({"detail": "Not Found"}, status=404)
        level = int(request.query.get("level", "1"))
        self.record.append(f"sleep {level}")
        if self.args.fail_sleep:
            return web.json_response({"error": {"message": "told to fail"}}, status=500)
        self.asleep = True
        return web.json_response({"status": "sleeping", "level": level})

    async def wake_up(self, _request: web.Request) -> web.Response:
        if not self._sleep_paths():
            return web.json_response({"detail": "Not Found"}, status=404)
        self.record.append("wake")
        if self.args.fail_wake:
            return web.json_response({"error": {"message": "told to fail"}}, status=500)
        self.asleep = False
        return web.json_response({"status": "awake", "tags": None})

    async def is_sleeping(self, _request: web.Request) -> web.Response:
        if not self._sleep_paths():
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({"is_sleeping": self.asleep})

    async def health(self, _request: web.Request) -> web.Response:
        self.stats["health"] += 1
        return web.json_response({}, status=503 if self.args.never_healthy else 200)

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.args.model, "object": "model"}]}
        )

    async def stats_view(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def last_view(self, _request: web.Request) -> web.Response:
        return web.json_response(self.last)

    async def load_lora(self, request: web.Request) -> web.Response:
        updating = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").lower()
        if not self.args.enable_lora or updating not in ("1", "true"):
            return web.json_response({"error": "Not Found"}, status=404)  # vLLM has no route
        body = await request.json()
        if body["lora_name"] in self.adapters:
            return web.json_response({"error": "already loaded"}, status=400)
        await asyncio.sleep(0.2)  # loading takes a moment: concurrent first requests overlap
        self.adapters[body["lora_name"]] = body["lora_path"]
        self.loads += 1
        self.record.append(f"load {body['lora_name']}")
        return web.Response(text="Success: LoRA adapter loaded")

    async def unload_lora(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.adapters.pop(body["lora_name"], None) is None:
            return web.json_response({"error": "not found"}, status=404)
        self.record.append(f"unload {body['lora_name']}")
        return web.Response(text="Success: LoRA adapter unloaded")

    async def record_view(self, _request: web.Request) -> web.Response:
        return web.json_response({"record": list(self.record)})

    async def metrics(self, _request: web.Request) -> web.Response:
        """vLLM's shape of /metrics (a gauge, a counter, a histogram), from this engine's stats."""
        await asyncio.sleep(self.args.metrics_delay)
        label = f'model_name="{self.args.model}"'
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{label}}} {self.stats['in_flight']}\n"
            "# HELP vllm:request_success_total Count of successfully processed requests.\n"
            "# TYPE vllm:request_success_total counter\n"
            f"vllm:request_success_total{{{label}}} {self.stats['requests']}\n"
            f"vllm:request_success_created{{{label}}} 1.7e9\n"
            "# HELP vllm:iteration_tokens_total Histogram of tokens per engine step.\n"
            "# TYPE vllm:iteration_tokens_total histogram\n"
            f'vllm:iteration_tokens_total_bucket{{le="1.0",{label}}} 0\n'
            f'vllm:iteration_tokens_total_bucket{{le="+Inf",{label}}} {self.stats["requests"]}\n'
            f"vllm:iteration_tokens_total_count{{{label}}} {self.stats['requests']}\n"
            f"vllm:iteration_tokens_total_sum{{{label}}} {8 * self.stats['requests']}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def calls_view(self, _request: web.Request) -> web.Response:
        return web.json_response({"calls": list(self.calls)})

    async def open_gate(self, _request: web.Request) -> web.Response:
        self.gate.set()
        return web.json_response({"open": True})

    async def lora_view(self, _request: web.Request) -> web.Response:
        return web.json_response({"adapters": sorted(self.adapters), "loads": self.loads})

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's shape: words of the prompt, plus 4 per chat message."""
        count = token_count(await request.json())
        return web.json_response({"count": count, "max_model_len": 8192, "tokens": []})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        data = [{"object": "embedding", "index": i, "embedding": [0.1 * i, 0.2, 0.3]}
                for i in range(count)]  # fmt: skip
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": count, "total_tokens": count},
            }
        )

    async def _held(self, response: web.StreamResponse) -> None:
        """Wait for `POST /fake/open`, keeping the stream alive with SSE comments meanwhile."""
        while not self.gate.is_set():
            await response.write(b": held\n\n")  # the gateway's idle timer sees progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gate.wait(), 0.1)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        if self.asleep:
            return web.json_response({"error": {"message": "the engine sleeps"}}, status=503)
        kind = "chat" if request.path.endswith("chat/completions") else "text"
        body = await request.json()
        self.last = body
        model = body.get("model", self.args.model)
        tokens = min(int(body.get("max_tokens") or self.args.tokens), self.args.tokens)
        self.stats["requests"] += 1
        self.stats["in_flight"] += 1
        self.record.append(f"begin {model}")
        headers = {"X-Request-ID": request.headers.get("X-Request-ID", "")}
        marks = directives(body) if kind == "chat" else {}
        messages = body.get("messages") or [{}]
        system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
        call = {
            "id": headers["X-Request-ID"],
            "max_tokens": body.get("max_tokens"),
            "model": model,
            "began": time.monotonic(),
            "ended": None,
            "system": system,
            "last": messages[-1],
            "traceparent": request.headers.get("traceparent"),
        }
        first = not self.calls
        self.calls.append(call)
        try:
            await asyncio.sleep(self.args.ttft_ms / 1000 + float(marks.get("delay", 0)) / 1000)
            if self.args.fail_first is not None and first:
                return web.json_response({"error": {"message": "told to fail first"}},
                                         status=self.args.fail_first)  # fmt: skip
            if "oom" in marks:
                return web.json_response({"object": "error", "message": OOM_MESSAGE,
                                          "type": "InternalServerError", "param": None,
                                          "code": 500}, status=500)  # fmt: skip
            if "fail" in marks:
                self.record.append(f"fail {model}")
                return web.json_response({"error": {"message": "told to fail"}},
                                         status=int(marks["fail"]))  # fmt: skip
            words = [f"tok{i}" for i in range(tokens)]
            forced = forced_json(body, marks) if kind == "chat" else None
            if forced is not None:
                words = [forced]
            elif "say" in marks:
                words = marks["say"].split(" ")
            elif "echo" in marks:
                words = str((body.get("messages") or [{}])[-1].get("content", "")).split(" ")
            tokens = len(words)
            if not body.get("stream"):
                await asyncio.sleep(self.args.token_delay_ms * max(0, tokens - 1) / 1000)
                text = " ".join(words)
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                if kind == "chat":
                    choice["message"] = {"role": "assistant", "content": text}
                    asked = str((body.get("messages") or [{}])[-1].get("content", ""))
                    if asked.startswith("CALL:"):
                        choice.update(_tool_answer(asked.removeprefix("CALL:")))
                else:
                    choice["text"] = text
                usage = {"prompt_tokens": 4, "completion_tokens": tokens,
                         "total_tokens": 4 + tokens}  # fmt: skip
                self.record.append(f"end {model}")
                return web.json_response(
                    {"id": "fake", "object": "chat.completion" if kind == "chat" else
                     "text_completion", "model": model, "choices": [choice], "usage": usage},
                    headers=headers,
                )  # fmt: skip
            response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
            await response.prepare(request)
            asked = str((body.get("messages") or [{}])[-1].get("content", ""))
            if kind == "chat" and asked == "CALL:stream":
                for chunk in _tool_call_chunks(model):
                    await response.write(chunk)
                self.record.append(f"end {model}")
                await response.write(b"data: [DONE]\n\n")
                await response.write_eof()
                return response
            pad = "x" * self.args.chunk_bytes
            chunks = [_chunk(kind, model, (f" {w}" if i else w) + pad, None)
                      for i, w in enumerate(words)]  # fmt: skip
            chunks.append(_chunk(kind, model, None, "stop"))
            for number, chunk in enumerate(chunks):
                if number == self.args.die_after_chunks:
                    os._exit(3)  # the engine dies mid-stream
                if number == self.args.fail_after_chunks:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(chunk)
                if self.args.gate and number == 0:
                    await self._held(response)
                if self.args.token_delay_ms:
                    await asyncio.sleep(self.args.token_delay_ms / 1000)
            self.record.append(f"end {model}")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.stats["cancelled"] += 1
            raise
        finally:
            self.stats["in_flight"] -= 1
            call["ended"] = time.monotonic()


async def serve(args: argparse.Namespace) -> None:
    engine = Engine(args)
    app = web.Application()
    app.router.add_get("/health", engine.health)
    app.router.add_get("/v1/models", engine.models)
    app.router.add_get("/fake/calls", engine.calls_view)
    app.router.add_get("/metrics", engine.metrics)
    app.router.add_get("/fake/stats", engine.stats_view)
    app.router.add_get("/fake/last", engine.last_view)
    app.router.add_post("/v1/chat/completions", engine.generate)
    app.router.add_post("/v1/completions", engine.generate)
    app.router.add_post("/v1/embeddings", engine.embeddings)
    if not args.no_tokenize:
        app.router.add_post("/tokenize", engine.tokenize)
    app.router.add_post("/v1/load_lora_adapter", engine.load_lora)
    app.router.add_post("/v1/unload_lora_adapter", engine.unload_lora)
    app.router.add_get("/fake/lora", engine.lora_view)
    app.router.add_get("/fake/record", engine.record_view)
    app.router.add_post("/fake/open", engine.open_gate)
    app.router.add_post("/sleep", engine.sleep)
    app.router.add_post("/wake_up", engine.wake_up)
    app.router.add_get("/is_sleeping", engine.is_sleeping)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    if args.uds:
        if os.path.exists(args.uds):
            os.unlink(args.uds)
        site: web.BaseSite = web.UnixSite(runner, args.uds)
    else:
        site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    print(f"fake engine listening on {args.uds or args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if not args.ignore_term:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    args = _arguments()
    print(f"fake engine {os.getpid()} starting: {sys.argv[1:]}", flush=True)
    if args.exit_at_once is not None:
        print("fake engine: exiting at once", flush=True)
        sys.exit(args.exit_at_once)
    if args.refuse_start_if and os.path.exists(args.refuse_start_if):
        print(f"fake engine: {args.refuse_start_if} exists, refusing to start", flush=True)
        sys.exit(1)
    if args.oom_at_start:
        print(OOM_MESSAGE, flush=True)
        sys.exit(1)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.fork_child:
        _sleeper(new_session=False)
    if args.escape_child:
        _sleeper(new_session=True)
    time.sleep(args.slow_start)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
