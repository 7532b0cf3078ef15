"""The warm-up request: one small completion sent to an engine that just turned healthy.

An engine's first request is often its slowest (kernels compiled, caches
filled, pages of the model read in); a soulstone with `warmup` pays that
before a user does. The request is a chat completion with the soulstone's
first model name; an engine that has no chat (it answers 400, 404, 405 or
501: no such route, or no chat template) gets a plain completion instead.
What fails is reported by status and kind only: never the prompt, never the
engine's answer.
"""

from __future__ import annotations

import aiohttp

from soulstone.codex.models import Soulstone, Warmup
from soulstone.errors import SoulstoneError
from soulstone.runtimes.upstream import base_url

CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/v1/completions"
NO_CHAT = frozenset({400, 404, 405, 501})
REQUEST_ID_PREFIX = "soulstone-warmup-"


class WarmupError(SoulstoneError):
    """The warm-up request failed (the message names no prompt text)."""


def warmup_bodies(soulstone: Soulstone, warmup: Warmup) -> list[tuple[str, dict[str, object]]]:
    """The requests to try in order: (path, JSON body), chat first."""
    model = soulstone.models[0]
    common = {"model": model, "max_tokens": warmup.max_tokens, "stream": False}
    chat = {**common, "messages": [{"role": "user", "content": warmup.prompt}]}
    return [(CHAT_PATH, chat), (COMPLETION_PATH, {**common, "prompt": warmup.prompt})]


async def warm_up(soulstone: Soulstone, warmup: Warmup, timeout: float) -> str:
    """Send the warm-up request and read the whole answer; return the path that answered.

    Raises WarmupError when the engine answers with an error, cannot be
    reached, or takes longer than `timeout` seconds in all.
    """
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(path=soulstone.socket)
        if soulstone.socket is not None
        else aiohttp.TCPConnector()
    )
    headers = {"X-Request-ID": REQUEST_ID_PREFIX + soulstone.id}
    status = 0
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session:
            for path, body in warmup_bodies(soulstone, warmup):
                async with session.post(base_url(soulstone) + path, json=body,
                                        headers=headers) as response:  # fmt: skip
                    await response.read()
                    status = response.status
                if status == 200:
                    return path
                if status not in NO_CHAT:
                    break
    except TimeoutError:
        raise WarmupError(f"no answer within {timeout:g} s") from None
    except (aiohttp.ClientError, OSError) as error:
        raise WarmupError(f"cannot reach the engine ({type(error).__name__})") from None
    raise WarmupError(f"{path} answered HTTP {status}")
