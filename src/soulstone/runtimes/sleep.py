"""vLLM's sleep mode over HTTP: POST /sleep, POST /wake_up, GET /is_sleeping on one engine.

A vLLM engine started with `--enable-sleep-mode` (and `VLLM_SERVER_DEV_MODE=1`,
which serves these paths) offloads its weights to CPU memory and drops its
KV cache on `POST /sleep?level=1`, giving its GPU memory back while the
process runs on; `POST /wake_up` brings the weights back. Either call fails
with SleepError, and the caller falls back to a stop or a start.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from soulstone.codex.models import Soulstone
from soulstone.errors import SoulstoneError

SLEEP_LEVEL = 1  # weights to CPU memory, KV cache dropped: a wake-up needs no reload


class SleepError(SoulstoneError):
    """An engine did not go to sleep, or did not wake up."""


def _base(soulstone: Soulstone) -> str:
    return "http://localhost" if soulstone.socket is not None else (
        f"http://127.0.0.1:{soulstone.port}")  # fmt: skip


async def _call(soulstone: Soulstone, method: str, path: str, timeout: float) -> Any:
    """One request to the engine; its JSON answer (None when not JSON), SleepError otherwise."""
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(path=soulstone.socket)
        if soulstone.socket is not None
        else aiohttp.TCPConnector()
    )
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session,
            session.request(method, _base(soulstone) + path) as response,
        ):
            if response.status != 200:
                text = (await response.text())[:200]
                raise SleepError(f"{method} {path}: HTTP {response.status} {text}".strip())
            try:
                return await response.json(content_type=None)
            except ValueError:
                return None
    except TimeoutError:
        raise SleepError(f"{method} {path}: no answer within {timeout:g} s") from None
    except (aiohttp.ClientError, OSError) as error:
        raise SleepError(f"{method} {path}: {error}") from None


async def is_sleeping(soulstone: Soulstone, timeout: float = 10.0) -> bool:
    """GET /is_sleeping: whether the engine says it sleeps (SleepError when it cannot say)."""
    answer = await _call(soulstone, "GET", "/is_sleeping", timeout)
    if not isinstance(answer, dict) or not isinstance(answer.get("is_sleeping"), bool):
        raise SleepError(f"GET /is_sleeping: unexpected answer {answer!r}"[:200])
    return bool(answer["is_sleeping"])


async def put_to_sleep(soulstone: Soulstone, timeout: float) -> None:
    """POST /sleep?level=1, then check /is_sleeping; SleepError when the engine still wakes."""
    await _call(soulstone, "POST", f"/sleep?level={SLEEP_LEVEL}", timeout)
    if not await is_sleeping(soulstone):
        raise SleepError("POST /sleep answered, but /is_sleeping says it is awake")


async def wake_up(soulstone: Soulstone, timeout: float) -> None:
    """POST /wake_up; SleepError unless the engine says it is fully awake."""
    answer = await _call(soulstone, "POST", "/wake_up", timeout)
    status = answer.get("status") if isinstance(answer, dict) else None
    if status not in (None, "awake"):  # vLLM 0.32 answers {"status": "awake" | "sleeping"}
        raise SleepError(f"POST /wake_up: the engine is still {status}")
    if await is_sleeping(soulstone):
        raise SleepError("POST /wake_up answered, but /is_sleeping says it still sleeps")
