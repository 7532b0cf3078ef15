"""The codex's `fallback` field: a model another soulstone serves, checked with the rest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helpers import load, one, problems, write
from soulstone.gateway.app import changed_soulstones

CMD = 'exec = ["llama-server", "-m", "/m.gguf"]\n'


def test_a_fallback_names_a_model_of_another_soulstone(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f'[a]\n{CMD}port = 1\nfallback = "b-model"\n'
                               f'[b]\n{CMD}port = 2\nmodels = ["b-model"]\n'})  # fmt: skip
    codex = load(tmp_path)
    primary = codex.get("a")
    assert primary is not None and primary.fallback == "b-model"
    assert codex.serving("b-model") == codex.get("b")


def test_a_fallback_nobody_serves_is_an_error_naming_file_table_and_field(
    tmp_path: Path,
) -> None:
    write(tmp_path, {"a.toml": f'[g.a]\n{CMD}port = 1\nfallback = "nope"\n',
                     "b.toml": f"[b]\n{CMD}port = 2\n"})  # fmt: skip
    problem = one(problems(tmp_path), "g.a", "fallback")
    assert problem.file == str(tmp_path / "a.toml")
    assert "no soulstone serves the model 'nope'" in problem.message
    assert "valid models: a, b" in problem.message


def test_a_soulstone_may_not_fall_back_on_itself(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f'[a]\n{CMD}port = 1\nmodels = ["x", "y"]\nfallback = "y"\n'})
    problem = one(problems(tmp_path), "a", "fallback")
    assert "served by this soulstone itself" in problem.message


def test_a_fallback_of_the_wrong_type_is_reported(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"[a]\n{CMD}port = 1\nfallback = 3\n"})
    problem = one(problems(tmp_path), "a", "fallback")
    assert "a model name served by another soulstone" in problem.message


def test_two_soulstones_may_fall_back_on_each_other(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f'[a]\n{CMD}port = 1\nfallback = "b"\n'
                               f'[b]\n{CMD}port = 2\nfallback = "a"\n'})  # fmt: skip
    assert {s.fallback for s in load(tmp_path).soulstones} == {"a", "b"}  # one hop each


def test_changing_only_the_fallback_restarts_nothing_on_reload(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"[a]\n{CMD}port = 1\n[b]\n{CMD}port = 2\n"})
    old = load(tmp_path)
    primary = old.get("a")
    assert primary is not None
    new = dataclasses.replace(old, soulstones=(dataclasses.replace(primary, fallback="b"),
                                               *old.soulstones[1:]))  # fmt: skip
    assert changed_soulstones(old, new) == set()
