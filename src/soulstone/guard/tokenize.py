"""Count a prompt's tokens with the target engine's own tokenizer, cached.

The engine's endpoints count it (`/tokenize`; llama-server's
`/apply-template` first), except for a remote soulstone that declares a
`tokenizer` folder: that folder counts it here, with no round trip (and,
on a soulstone gateway, no request spent against the peer's limits). A
folder that cannot be loaded (a library of the `tokenizer` extra missing, a
broken file) is logged once and the remote's `/tokenize` counts instead.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from soulstone.codex.models import Soulstone
from soulstone.errors import Refusal
from soulstone.guard.folder_tokenizer import FolderTokenizers
from soulstone.runtimes.upstream import Upstreams

CACHE_SIZE = 4096
TIMEOUT = aiohttp.ClientTimeout(total=30)


class TokenizeFailed(Refusal):
    """The engine could not count the prompt (502 TOKENIZE_FAILED)."""

    def __init__(self, message: str) -> None:
        super().__init__(
            502, "TOKENIZE_FAILED", f"the engine could not count the prompt: {message}"
        )


class TokenCounter:
    """Prompt token counts from the engines, remembered by prompt."""

    def __init__(self, upstreams: Upstreams, folders: FolderTokenizers | None = None) -> None:
        self.upstreams = upstreams
        self.folders = folders or FolderTokenizers()
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self.asked = 0  # counts that asked the engine (a request's trace shows those)

    async def count(self, soulstone: Soulstone, document: dict[str, Any]) -> int | None:
        """Tokens of the request's `messages` (chat template applied) or `prompt`.

        None when the engine has no tokenizer endpoint soulstone knows. A
        remote's declared `tokenizer` folder counts first (see the module).
        """
        if soulstone.engine not in ("vllm", "llamacpp", "generic"):
            return None
        messages, prompt = document.get("messages"), document.get("prompt")
        if messages is None and prompt is None:
            return 0
        key = hashlib.sha256(
            soulstone.id.encode()
            + b"\0"
            + (soulstone.tokenizer or "").encode()
            + b"\0"
            + orjson.dumps([messages, prompt], option=orjson.OPT_SORT_KEYS)
        ).digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        counted = None
        if soulstone.tokenizer is not None:
            folder = Path(soulstone.tokenizer).expanduser()
            counted = await self.folders.count(folder, document)
        if counted is None:
            self.asked += 1
            counted = await self._ask(soulstone, document.get("model"), messages, prompt)
        if counted is not None:
            self._cache[key] = counted
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return counted

    def reread_folders(self) -> None:
        """Load tokenizer folders afresh and forget the counts made so far (a reload)."""
        self.folders.forget()
        self._cache.clear()

    async def _post(self, soulstone: Soulstone, path: str, body: dict[str, Any]) -> Any:
        session = self.upstreams.session(soulstone)
        try:
            async with session.post(self.upstreams.url(soulstone, path), data=orjson.dumps(body),
                                    headers={"Content-Type": "application/json"},
                                    timeout=TIMEOUT) as response:  # fmt: skip
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise TokenizeFailed(f"{path} answered {response.status}")
                return orjson.loads(await response.read())
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as error:
            raise TokenizeFailed(f"{path}: {error}") from None

    async def _ask(
        self, soulstone: Soulstone, model: Any, messages: Any, prompt: Any
    ) -> int | None:
        if soulstone.engine == "llamacpp":
            text = prompt
            if messages is not None:
                applied = await self._post(soulstone, "/apply-template", {"messages": messages})
                if applied is None:
                    return None
                text = applied.get("prompt", "")
            if isinstance(text, list):
                text = "".join(str(part) for part in text)
            tokens = await self._post(soulstone, "/tokenize",
                                      {"content": text, "add_special": True})  # fmt: skip
            return None if tokens is None else len(tokens.get("tokens", []))
        body: dict[str, Any] = {"model": model}
        body |= {"messages": messages} if messages is not None else {"prompt": prompt}
        answer = await self._post(soulstone, "/tokenize", body)
        if answer is None or not isinstance(answer.get("count"), int):
            return None
        return int(answer["count"])
