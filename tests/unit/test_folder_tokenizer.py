"""A remote's `tokenizer` folder counts prompts (SPEC C12): template, fallback, loads, checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from helpers import load, one, problems, write
from soulstone.codex.models import Soulstone
from soulstone.guard import folder_tokenizer
from soulstone.guard.folder_tokenizer import (
    FolderTokenizer,
    FolderTokenizers,
    TokenizerUnavailable,
    load_folder,
)
from soulstone.guard.tokenize import TokenCounter
from soulstone.runtimes.upstream import Upstreams

# Every word and every run of punctuation is one token; <s> is added to a plain prompt.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip
CHAT = [{"role": "user", "content": "hi there"}]


def tiny_tokenizer(folder: Path, config: dict[str, Any] | None = None) -> Path:
    """A word-level tokenizer.json (unknown words count one each) and a tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "<|im_start|>", "<|im_end|>"]
    vocab = {"[UNK]": 0} | {token: i + 1 for i, token in enumerate(special)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(special)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config or {"bos_token": "<s>"}))
    return folder


def test_a_prompt_counts_with_special_tokens(tmp_path: Path) -> None:
    found = load_folder(tiny_tokenizer(tmp_path))
    assert found.count({"prompt": "one two three"}) == 4  # <s> one two three
    assert found.count({"prompt": ["one two", "three"]}) == 3 + 2
    assert found.count({"prompt": [5, 6, 7]}) == 3  # token ids


def test_a_chat_is_rendered_by_the_config_template(tmp_path: Path) -> None:
    found = load_folder(tiny_tokenizer(tmp_path, {"bos_token": {"content": "<s>"},
                                                  "chat_template": TEMPLATE}))  # fmt: skip
    assert found.render(CHAT) == "<s><|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    # <s> <|im_start|> user hi there <|im_end|> <|im_start|> assistant: no second <s> added
    assert found.count({"messages": CHAT}) == 8


def test_the_jinja_file_and_named_templates(tmp_path: Path) -> None:
    folder = tiny_tokenizer(tmp_path / "a", {"chat_template": "ignored {{ messages }}"})
    jinja = "{% for m in messages %}{{ m.content }}{% endfor %}"
    (folder / "chat_template.jinja").write_text(jinja)
    assert load_folder(folder).count({"messages": CHAT}) == 2  # hi there
    named = [
        {"name": "default", "template": "{{ messages[0].content }}"},
        {"name": "tool_use", "template": "{{ tools | tojson }} {{ messages[0].content }}"},
    ]
    found = load_folder(tiny_tokenizer(tmp_path / "b", {"chat_template": named}))
    assert found.count({"messages": CHAT}) == 2
    tools = [{"name": "é"}]  # tojson keeps it as it is, as transformers' tojson does
    assert found.render(CHAT, tools) == '[{"name": "é"}] hi there'


def test_transformers_template_helpers(tmp_path: Path) -> None:
    template = ("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
                "{% if loop.index > 0 %}{% break %}{% endif %}{% endfor %}"
                "{{ strftime_now('%Y')[:0] }}")  # fmt: skip
    found = load_folder(tiny_tokenizer(tmp_path, {"chat_template": template}))
    assert found.render([*CHAT, {"role": "user", "content": "never"}]) == "hi there"


def test_no_template_or_a_refusing_one_counts_the_fallback(tmp_path: Path) -> None:
    plain = load_folder(tiny_tokenizer(tmp_path / "a"))
    assert not plain.has_template
    assert folder_tokenizer.fallback_text(CHAT) == "user: hi there\nassistant:"
    assert plain.count({"messages": CHAT}) == 7  # <s> user : hi there assistant :
    image = {"type": "image_url", "image_url": {"url": "x"}}
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]
    assert plain.count({"messages": parts}) == 6  # <s> user : hi assistant :
    refusing = load_folder(tiny_tokenizer(tmp_path / "b", {
        "chat_template": "{{ raise_exception('roles must alternate') }}"}))  # fmt: skip
    assert refusing.count({"messages": CHAT}) == 7


def test_bad_folders_and_missing_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TokenizerUnavailable, match=r"tokenizer\.json cannot be read"):
        load_folder(tmp_path)
    broken = tiny_tokenizer(tmp_path / "t", {"chat_template": "{% for %}"})
    with pytest.raises(TokenizerUnavailable, match="does not compile"):
        load_folder(broken)
    monkeypatch.setattr(folder_tokenizer, "missing_libraries", lambda: ["jinja2"])
    with pytest.raises(TokenizerUnavailable, match=r"jinja2 not installed \(pip install"):
        load_folder(tiny_tokenizer(tmp_path / "ok"))


async def test_each_folder_loads_once_and_a_bad_one_is_reported_once(tmp_path: Path) -> None:
    failed: list[tuple[Path, str]] = []
    folders = FolderTokenizers(lambda folder, why: failed.append((folder, why)))
    good = tiny_tokenizer(tmp_path / "good")
    counts = await asyncio.gather(*(folders.count(good, {"prompt": "a b"}) for _ in range(5)))
    assert counts == [3] * 5 and folders.loads == 1
    long = " ".join(["word"] * 20_000)  # encoded in a worker thread
    assert await folders.count(good, {"prompt": long}) == 20_001
    assert await folders.count(tmp_path / "none", {"prompt": "a"}) is None
    assert await folders.count(tmp_path / "none", {"prompt": "a"}) is None
    assert folders.loads == 2 and [f for f, _ in failed] == [tmp_path / "none"]
    folders.forget()  # a reload: the folder is read again
    assert await folders.count(good, {"prompt": "a b"}) == 3 and folders.loads == 3


def _remote(folder: Path, tokenizer: Path) -> Soulstone:
    text = f'[far]\nremote = "http://127.0.0.1:9/v1"\nmodels = ["big"]\ntokenizer = "{tokenizer}"\n'
    far = load(write(folder, {"r.toml": text})).get("far")
    assert far is not None
    return far


class _Asked:
    """Stands in for the remote's /tokenize: counts how often it was asked."""

    def __init__(self) -> None:
        self.asked = 0

    async def __call__(self, *_args: Any) -> int:
        self.asked += 1
        return 99


async def test_a_declared_folder_counts_before_the_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    far = _remote(tmp_path / "codex", tiny_tokenizer(tmp_path / "tok"))
    counter = TokenCounter(Upstreams())
    remote = _Asked()
    monkeypatch.setattr(counter, "_ask", remote)
    assert await counter.count(far, {"model": "big", "prompt": "one two"}) == 3
    assert remote.asked == 0 and counter.asked == 0
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")  # unusable when first loaded
    unusable = TokenCounter(Upstreams())
    monkeypatch.setattr(unusable, "_ask", remote)
    assert await unusable.count(far, {"model": "big", "prompt": "one two"}) == 99
    assert remote.asked == 1  # the remote's /tokenize counted instead


def test_check_validates_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = '[far]\nremote = "http://10.0.0.2:8080/v1"\nmodels = ["big"]\n'
    found = problems(write(tmp_path / "a", {"a.toml": head + 'tokenizer = "tok"\n'}))
    assert "not an absolute path" in one(found, "far", "tokenizer").message
    found = problems(write(tmp_path / "b", {"b.toml": head + f'tokenizer = "{tmp_path}/no"\n'}))
    assert one(found, "far", "tokenizer").message == f"{tmp_path}/no is not a folder"
    (tmp_path / "empty").mkdir()
    found = problems(write(tmp_path / "c", {"c.toml": head + f'tokenizer = "{tmp_path}/empty"\n'}))
    problem = one(found, "far", "tokenizer")
    assert problem.file == str(tmp_path / "c" / "c.toml") and "no tokenizer.json" in problem.message
    local = '[near]\nexec = "llama-server"\nport = 8080\ntokenizer = "/t"\n'
    found = problems(write(tmp_path / "d", {"d.toml": local}))
    assert "remote soulstone" in one(found, "near", "tokenizer").message
    folder = tiny_tokenizer(tmp_path / "tok")
    codex = load(write(tmp_path / "e", {"e.toml": head + f'tokenizer = "{folder}"\n'}))
    far = codex.get("far")
    assert far is not None and far.tokenizer == str(folder)
    assert [(w.field, w.message) for w in codex.warnings] == [(
        "tokenizer", f"{folder} has no chat template: chat prompts are counted by an estimate "
        "(each message as a 'role: text' line)")]  # fmt: skip
    monkeypatch.setattr("soulstone.codex.load.tokenizer_libraries_missing", lambda: ["tokenizers"])
    codex = load(write(tmp_path / "e", {"e.toml": head + f'tokenizer = "{folder}"\n'}))
    [warning] = codex.warnings
    assert warning.table == "far" and warning.field == "tokenizer"
    assert "tokenizers not installed (pip install 'soulstone[tokenizer]')" in warning.message
    assert "the remote's POST /tokenize" in warning.message


def test_the_loaded_folder_is_a_value(tmp_path: Path) -> None:
    found = load_folder(tiny_tokenizer(tmp_path))
    assert isinstance(found, FolderTokenizer) and found.special == {"bos_token": "<s>"}
