"""The reference examples (copied from shared/examples) give the documented codex."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import EXAMPLES, PODMAN_HOST, load
from soulstone.cli.init import starter_codex
from soulstone.codex.models import Codex

EXPECTED_CONFLICTS = {
    frozenset(pair)
    for pair in [
        ("flash", "logic.alpha"),
        ("flash", "logic.beta"),
        ("flash", "eye"),
        ("flash", "scribe"),
        ("logic.alpha", "eye"),
        ("logic.alpha", "scribe"),
        ("logic.beta", "eye"),
        ("logic.beta", "scribe"),
    ]
}


def test_reference_examples_give_the_documented_conflict_pairs() -> None:
    codex = load(EXAMPLES)
    assert {frozenset(pair) for pair in codex.conflicts} == EXPECTED_CONFLICTS
    assert len(codex.conflicts) == len(EXPECTED_CONFLICTS)
    assert list(codex.conflicts) == sorted(codex.conflicts)
    assert all(a < b for a, b in codex.conflicts)


def test_reference_examples_resolve_ids_units_groups_and_uris() -> None:
    codex = load(EXAMPLES)
    by_id = {s.id: s for s in codex.soulstones}
    assert sorted(by_id) == ["eye", "flash", "logic.alpha", "logic.beta", "scribe"]
    alpha = by_id["logic.alpha"]
    assert alpha.unit == "soulstone-logic-alpha"
    assert alpha.groups == ("logic",)
    assert alpha.models == ("alpha",)
    assert alpha.uri == "http://localhost:8000/v1"
    assert alpha.engine == "vllm"
    assert by_id["logic.beta"].engine == "llamacpp"
    assert by_id["flash"].groups == ()
    assert by_id["flash"].engine == "sglang"
    assert by_id["eye"].groups == by_id["scribe"].groups == ("vision-ritual",)
    assert by_id["scribe"].engine == "llamacpp"
    assert codex.groups() == {
        "logic": ("logic.alpha", "logic.beta"),
        "vision-ritual": ("eye", "scribe"),
    }


def test_multiline_exec_string_is_split_like_a_shell() -> None:
    eye = load(EXAMPLES).get("eye")
    assert eye is not None
    assert eye.argv == (
        "python3", "-m", "sglang.launch_server",
        "--model-path", "TheBloke/Llama-3-70B-Instruct-AWQ",
        "--tp", "2", "--port", "8780", "--enable-marlin",
        "--disable-radix-attention", "False",
    )  # fmt: skip
    scribe = load(EXAMPLES).get("scribe")
    assert scribe is not None
    assert scribe.argv[:3] == ("/server", "-m", "/models/moondream.gguf")


def test_examples_default_to_quadlet_where_podman_and_systemd_exist() -> None:
    codex = load(EXAMPLES, PODMAN_HOST)
    assert {s.runtime for s in codex.soulstones} == {"quadlet"}


def test_examples_default_to_process_without_podman_and_warn_only() -> None:
    codex = load(EXAMPLES)
    assert {s.runtime for s in codex.soulstones} == {"process"}
    runtime_warnings = {w.table for w in codex.warnings if w.field == "runtime"}
    # Their exec holds only arguments for the image's entrypoint.
    assert runtime_warnings == {"logic.alpha", "logic.beta"}


def test_bundled_starter_codex_matches_the_reference_examples(tmp_path: Path) -> None:
    starter = tmp_path / "starter"
    starter.mkdir()
    for item in starter_codex().iterdir():
        if item.name.endswith(".toml"):
            (starter / item.name).write_text(item.read_text())
    reference = load(EXAMPLES)
    bundled = load(starter)
    assert bundled.conflicts == reference.conflicts

    def strip(codex: Codex) -> list[dict[str, object]]:
        return [s.summary() | {"file": Path(s.file).name} for s in codex.soulstones]

    assert strip(bundled) == strip(reference)
    shutil.rmtree(starter)
