"""Capture, opt-in: an opted-in client's chats land in its capture file; nobody else's do."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import httpx2

from gateway_harness import StartGateway, fake_codex, fake_table, keyed

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def capture_lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` lines of a capture file, waiting until the writer thread wrote them."""
    deadline = time.monotonic() + 15
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        assert time.monotonic() < deadline, f"{path}: {len(lines)} of {count} lines"
        time.sleep(0.05)


def test_only_an_opted_in_clients_chats_are_captured(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    ana_key, ana = keyed("ana", capture=True)
    bo_key, bo = keyed("bo")
    gateway = start_gateway(fake_codex(tmp_path / "codex", fake_table("m", model="m")),
                            clients={"clients": {**ana, **bo}}, with_harness=True)  # fmt: skip
    base = f"http://127.0.0.1:{gateway.tcp_port}/v1/chat/completions"

    def chat(key: str, **extra: Any) -> httpx2.Response:
        body = {"model": "m", "messages": QUESTION, **extra}
        return httpx2.post(base, json=body, headers={"Authorization": f"Bearer {key}"},
                           timeout=60)  # fmt: skip

    assert chat(bo_key).status_code == 200  # bo did not opt in: never captured
    assert chat(bo_key, stream=True).status_code == 200
    whole = chat(ana_key)
    assert whole.status_code == 200
    assert chat(ana_key, model="nobody").status_code == 404  # refused: nothing to keep
    streamed = chat(ana_key, stream=True)
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    completion = httpx2.post(base.replace("chat/", ""), json={"model": "m", "prompt": "x"},
                             headers={"Authorization": f"Bearer {ana_key}"})  # fmt: skip
    assert completion.status_code == 200  # not a chat: not captured
    folder = tmp_path / "data" / "soulstone" / "capture"
    lines = capture_lines(folder / "ana.jsonl", 2)
    answer = whole.json()["choices"][0]["message"]["content"]
    expected = [*QUESTION, {"role": "assistant", "content": answer}]
    assert [line["messages"] for line in lines] == [expected, expected]  # the stream assembled
    assert all(line["model"] == "m" and line["created"].endswith("Z") for line in lines)
    assert sorted(p.name for p in folder.iterdir()) == ["ana.jsonl"]  # no bo.jsonl
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ana.jsonl").stat().st_mode) == 0o600
    assert "Be brief." not in gateway.log.read_text()  # captured, never logged
