"""Count prompt tokens with a Hugging Face tokenizer folder (a remote's `tokenizer = PATH`).

A folder holds `tokenizer.json` (read by the `tokenizers` library) and, when
the model has one, a chat template: `chat_template.jinja`, else
`chat_template` in `chat_template.json` or `tokenizer_config.json` (a string,
or named templates of which `default` is used, `tool_use` when the request
has tools). Chat messages are rendered as transformers' `apply_chat_template`
does (a sandboxed jinja2 environment with `trim_blocks` and `lstrip_blocks`,
`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII,
`add_generation_prompt = True`, the special tokens of `tokenizer_config.json`
such as `bos_token`) and the text is encoded without adding special tokens
(the template writes them); a plain `prompt` is encoded with them, as
vLLM's `/tokenize` counts both.

Without a template, or when the template refuses the messages, a chat is
counted by its fallback text: each message as `role: text` on a line of
its own (text parts joined; other parts left out), then `assistant:`,
encoded with special tokens — an estimate, close to what a template adds.

Both libraries belong to the optional extra `soulstone[tokenizer]`; they are
imported only when a folder is loaded (TokenizerUnavailable when missing).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from soulstone.errors import SoulstoneError

TOKENIZER_FILE = "tokenizer.json"
TEMPLATE_FILE = "chat_template.jinja"
EXTRA_HINT = "pip install 'soulstone[tokenizer]'"
OFF_LOOP_CHARS = 4_096  # a longer text is encoded in a worker thread (~1 ms and more)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")  # fmt: skip


class TokenizerUnavailable(SoulstoneError):
    """A tokenizer folder cannot be used: a library is missing, or a file is unreadable."""


class Encoder(Protocol):
    """What counting needs of a `tokenizers.Tokenizer`."""

    def encode(self, sequence: Any, pair: Any = None, is_pretokenized: bool = False,
               add_special_tokens: bool = True) -> Any:  # fmt: skip
        """Encode one text (its result has `ids`)."""


def missing_libraries() -> list[str]:
    """The libraries of the `tokenizer` extra that are not installed (names, in order)."""
    import importlib.util

    return [name for name in ("tokenizers", "jinja2") if importlib.util.find_spec(name) is None]


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TokenizerUnavailable(f"{path} cannot be read: {error}") from None
    return found if isinstance(found, dict) else {}


def _templates(folder: Path, config: dict[str, Any]) -> dict[str, str]:
    """The folder's chat templates by name (`default` for a single one); none when it has none."""
    jinja = folder / TEMPLATE_FILE
    if jinja.is_file():
        try:
            return {"default": jinja.read_text(encoding="utf-8")}
        except OSError as error:
            raise TokenizerUnavailable(f"{jinja} cannot be read: {error}") from None
    for source in (_read_json(folder / "chat_template.json"), config):
        declared = source.get("chat_template")
        if isinstance(declared, str):
            return {"default": declared}
        if isinstance(declared, list):
            return {str(t["name"]): str(t["template"]) for t in declared
                    if isinstance(t, dict) and "name" in t and "template" in t}  # fmt: skip
    return {}


def _compile(templates: dict[str, str]) -> dict[str, Any]:
    """Compile each template in the environment transformers' apply_chat_template uses."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}…{% endgeneration %}` (assistant masks in transformers): its body."""

        tags = {"generation"}  # noqa: RUF012 (jinja2's own class attribute)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: object, ensure_ascii: bool = False, indent: int | None = None,
        separators: tuple[str, str] | None = None, sort_keys: bool = False,
    ) -> str:  # fmt: skip
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)  # fmt: skip

    def strftime_now(form: str) -> str:
        return datetime.now().strftime(form)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    try:
        return {name: environment.from_string(text) for name, text in templates.items()}
    except jinja2.TemplateSyntaxError as error:
        raise TokenizerUnavailable(f"the chat template does not compile: {error}") from None


def _text_of(content: object) -> str:
    """A message's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content
                       if isinstance(p, dict) and p.get("type") == "text")  # fmt: skip
    return ""


def fallback_text(messages: list[Any]) -> str:
    """The documented stand-in for a chat template: `role: text` lines, then `assistant:`."""
    lines = [f"{m.get('role', '')}: {_text_of(m.get('content'))}" for m in messages
             if isinstance(m, dict)]  # fmt: skip
    return "\n".join([*lines, "assistant:"])


@dataclass(frozen=True)
class FolderTokenizer:
    """One loaded folder: its tokenizer, compiled templates and special tokens."""

    folder: Path
    encoder: Encoder
    templates: dict[str, Any]
    special: dict[str, str]

    @property
    def has_template(self) -> bool:
        """True when the folder has a chat template (else chats are estimated)."""
        return bool(self.templates)

    def render(self, messages: list[Any], tools: Any = None) -> str | None:
        """The chat as the template writes it (generation prompt added); None without one."""
        template = self.templates.get("tool_use") if tools else None
        template = template or self.templates.get("default")
        if template is None:
            return None
        import jinja2

        try:
            return str(template.render(messages=messages, tools=tools or None, documents=None,
                                       add_generation_prompt=True, **self.special))  # fmt: skip
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError):
            return None  # the template refuses these messages: the fallback counts them

    def tokens(self, text: str, special: bool) -> int:
        """Tokens of one text (with the tokenizer's special tokens when `special`)."""
        return len(self.encoder.encode(text, add_special_tokens=special).ids)

    def count(self, document: dict[str, Any]) -> int:
        """Tokens of a request's `messages` (templated) or `prompt` (as vLLM's /tokenize)."""
        messages = document.get("messages")
        if isinstance(messages, list):
            rendered = self.render(messages, document.get("tools"))
            if rendered is not None:
                return self.tokens(rendered, special=False)
            return self.tokens(fallback_text(messages), special=True)
        return self._prompt(document.get("prompt"))

    def _prompt(self, prompt: object) -> int:
        if isinstance(prompt, str):
            return self.tokens(prompt, special=True)
        if isinstance(prompt, int):
            return 1  # a token id
        if isinstance(prompt, list):
            return sum(self._prompt(part) for part in prompt)
        return 0


def load_folder(folder: Path) -> FolderTokenizer:
    """Read a tokenizer folder; TokenizerUnavailable when a library or a file is missing."""
    missing = missing_libraries()
    if missing:
        raise TokenizerUnavailable(f"{' and '.join(missing)} not installed ({EXTRA_HINT})")
    from tokenizers import Tokenizer

    path = folder / TOKENIZER_FILE
    try:
        encoder = Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust library raises plain Exception for a bad file
        raise TokenizerUnavailable(f"{path} cannot be read: {error}") from None
    config = _read_json(folder / "tokenizer_config.json")
    special = {name: text for name in SPECIAL_TOKENS
               if (text := _token_text(config.get(name))) is not None}  # fmt: skip
    return FolderTokenizer(folder, encoder, _compile(_templates(folder, config)), special)


class FolderTokenizers:
    """Tokenizer folders, each loaded once (in a worker thread) when first needed.

    A folder that cannot be loaded is remembered as such (`on_failed` hears
    of it once) and counts nothing: the caller falls back to the remote.
    """

    def __init__(self, on_failed: Callable[[Path, str], None] | None = None,
                 loader: Callable[[Path], FolderTokenizer] = load_folder) -> None:  # fmt: skip
        self.on_failed = on_failed or (lambda _folder, _why: None)
        self.loader = loader
        self._loaded: dict[Path, FolderTokenizer | None] = {}
        self._loading: dict[Path, asyncio.Task[FolderTokenizer | None]] = {}
        self.loads = 0  # folders read (a test sees one load per folder)

    async def get(self, folder: Path) -> FolderTokenizer | None:
        """The folder's tokenizer; None when it cannot be loaded."""
        if folder in self._loaded:
            return self._loaded[folder]
        task = self._loading.get(folder)
        if task is None:
            task = self._loading[folder] = asyncio.create_task(self._load(folder))
        return await asyncio.shield(task)

    async def _load(self, folder: Path) -> FolderTokenizer | None:
        self.loads += 1
        try:
            found: FolderTokenizer | None = await asyncio.to_thread(self.loader, folder)
        except TokenizerUnavailable as error:
            found = None
            self.on_failed(folder, str(error))
        self._loaded[folder] = found
        self._loading.pop(folder, None)
        return found

    def forget(self) -> None:
        """Read each folder again when next needed (a reload: its files may have changed)."""
        self._loaded.clear()

    async def count(self, folder: Path, document: dict[str, Any]) -> int | None:
        """Tokens of the request's prompt by this folder; None when it cannot be loaded."""
        tokenizer = await self.get(folder)
        if tokenizer is None:
            return None
        if _size(document) > OFF_LOOP_CHARS:
            return await asyncio.to_thread(tokenizer.count, document)
        return tokenizer.count(document)


def _size(document: dict[str, Any]) -> int:
    """Roughly how many characters the prompt holds (to decide where to encode it)."""
    messages, prompt = document.get("messages"), document.get("prompt")
    if isinstance(messages, list):
        return sum(len(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
    if isinstance(prompt, str):
        return len(prompt)
    return len(prompt) if isinstance(prompt, list) else 0
