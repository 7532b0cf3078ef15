"""Captured conversations: opted-in clients' chats appended as fine-tuning examples.

`<capture>/<client>.jsonl`, one `{"messages": [...], "model": ..., "created":
...}` per line (the OpenAI fine-tuning chat format, plus when and to which
model), the folder 0700 and each file 0600. Only a client whose clients.yaml
entry says `capture: true` is ever written here. The gateway hands over the
request's messages and the answer's bytes as they passed; one writer thread
assembles the answer (a whole body, or a stream's events), keeps only
exchanges `lora train` can learn from (text turns), and appends the line: the
event loop never parses or writes them.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from soulstone.lora.folders import private_folder
from soulstone.lora.traindata import capture_file, check_document

PRIVATE_FILE = 0o600


def _message(choice: Any, key: str) -> Any:
    return choice.get(key) if isinstance(choice, dict) else None


def answer_text(body: bytes | None, chunks: list[bytes], streamed: bool) -> str | None:
    """The assistant's text of the first choice (a stream's deltas joined); None if it has none.

    An answer that calls tools is not text, and is not kept.
    """
    if not streamed:
        try:
            document = orjson.loads(body or b"")
        except orjson.JSONDecodeError:
            return None
        choices = document.get("choices") if isinstance(document, dict) else None
        message = _message(choices[0] if isinstance(choices, list) and choices else None,
                           "message")  # fmt: skip
        if not isinstance(message, dict) or message.get("tool_calls"):
            return None
        content = message.get("content")
        return content if isinstance(content, str) else None
    pieces: list[str] = []
    for line in b"".join(chunks).splitlines():
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        for choice in (event.get("choices") or []) if isinstance(event, dict) else []:
            delta = _message(choice, "delta")
            if _message(choice, "index") not in (0, None) or not isinstance(delta, dict):
                continue
            if delta.get("tool_calls"):
                return None
            if isinstance(delta.get("content"), str):
                pieces.append(delta["content"])
    return "".join(pieces) if pieces else None


def capture_line(messages: Any, answer: str | None, model: str | None, when: float) -> bytes | None:
    """The line to append, or None when the exchange has nothing `lora train` can learn."""
    if answer is None or not isinstance(messages, list):
        return None
    checked = check_document({"messages": [*messages, {"role": "assistant", "content": answer}]})
    if isinstance(checked, str):
        return None
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    return orjson.dumps({"messages": list(checked), "model": model, "created": created}) + b"\n"


class CaptureLog:
    """Appends opted-in clients' exchanges to their capture files, in one writer thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soulstone-capture")
        self.written = 0

    def append(self, client: str, messages: Any, model: str | None, body: bytes | None,
               chunks: list[bytes], streamed: bool) -> None:  # fmt: skip
        """Queue one exchange for the writer thread (never blocks the caller)."""
        when = time.time()
        self._writer.submit(self._write, client, messages, model, body, chunks, streamed, when)

    def _write(self, client: str, messages: Any, model: str | None, body: bytes | None,
               chunks: list[bytes], streamed: bool, when: float) -> None:  # fmt: skip
        line = capture_line(messages, answer_text(body, chunks, streamed), model, when)
        if line is None:
            return
        private_folder(self.folder)
        path = capture_file(self.folder, client)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                     PRIVATE_FILE)  # fmt: skip
        try:
            os.fchmod(fd, PRIVATE_FILE)
            os.write(fd, line)
        finally:
            os.close(fd)
        self.written += 1

    def close(self) -> None:
        """Write what is queued, then end the writer thread."""
        self._writer.shutdown(wait=True)
