"""Pure planning: names, capabilities, stops with reasons, starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import EXAMPLES, load, write
from soulstone.codex.engines import launch_argv, served_argv
from soulstone.errors import UsageError
from soulstone.supervisor.plan import Target, make_plan, name_target, resolve


def test_names_resolve_to_soulstones_or_groups() -> None:
    codex = load(EXAMPLES)
    assert name_target(codex, "eye") == Target("soulstone", "eye")
    assert name_target(codex, "logic") == Target("group", "logic")
    with pytest.raises(UsageError, match="no soulstone or group named 'nope'"):
        name_target(codex, "nope")
    assert [s.id for s in resolve(codex, Target("group", "logic"), ())] == [
        "logic.alpha", "logic.beta",
    ]  # fmt: skip


def test_plan_stops_what_conflicts_and_says_why() -> None:
    codex = load(EXAMPLES)
    by_id = {s.id: s for s in codex.soulstones}
    targets = resolve(codex, Target("soulstone", "eye"), ())
    plan = make_plan(targets, [by_id["logic.alpha"], by_id["scribe"]])
    assert [(s.soulstone.id, s.reason) for s in plan.stop] == [
        ("logic.alpha", "eye conflicts with logic.alpha: no shared group"),
    ]
    assert [s.id for s in plan.start] == ["eye"]
    solo = make_plan(resolve(codex, Target("soulstone", "flash"), ()), [by_id["eye"]])
    assert [s.reason for s in solo.stop] == ["flash conflicts with eye: flash is solitary"]
    back = make_plan(resolve(codex, Target("soulstone", "eye"), ()), [by_id["flash"]])
    assert [s.reason for s in back.stop] == ["eye conflicts with flash: flash is solitary"]
    assert make_plan(targets, [by_id["eye"]]).noop


def test_capability_prefers_what_runs_then_fewest_starts(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[v1.a]\nport = 1\nexec = ["x"]\ncapabilities = ["vision"]\n'
            '[v1.b]\nport = 2\nexec = ["x"]\n'
            '[v2.c]\nport = 3\nexec = ["x"]\ncapabilities = ["vision"]\n'
            '[solo]\nport = 4\nexec = ["x"]\ncapabilities = ["ocr"]\n'
        },
    )
    codex = load(tmp_path)
    vision = Target("capability", "vision")
    assert [s.id for s in resolve(codex, vision, ())] == ["v2.c"]  # one start beats two
    assert [s.id for s in resolve(codex, vision, {"v1.a", "v1.b"})] == ["v1.a", "v1.b"]
    assert [s.id for s in resolve(codex, Target("capability", "ocr"), ())] == ["solo"]
    with pytest.raises(UsageError, match="capability 'tts'"):
        resolve(codex, Target("capability", "tts"), ())


def test_launch_argv_puts_engines_where_the_codex_says() -> None:
    assert launch_argv("vllm", ("vllm", "serve", "/m"), 8000, None) == (
        "vllm", "serve", "/m", "--port", "8000", "--host", "127.0.0.1",
    )  # fmt: skip
    assert launch_argv("vllm", ("x", "--port", "9", "--host", "::1"), 9, None) == (
        "x", "--port", "9", "--host", "::1",
    )  # fmt: skip
    assert launch_argv("vllm", ("x", "--port", "9"), None, "/run/v.sock") == (
        "x", "--uds", "/run/v.sock",
    )  # fmt: skip
    assert launch_argv("llamacpp", ("llama-server", "-m", "m"), None, "/run/l.sock") == (
        "llama-server", "-m", "m", "--host", "/run/l.sock",
    )  # fmt: skip
    assert launch_argv("llamacpp", ("llama-server",), 8080, None) == (
        "llama-server", "--port", "8080",
    )  # fmt: skip
    assert launch_argv("generic", ("serve",), 8080, "/s.sock") == ("serve",)
    assert launch_argv("generic", ("serve",), 8080, None) == ("serve",)


def test_llama_server_is_told_the_first_served_name_as_its_alias(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": (
        '[plain]\nport = 8080\nexec = ["llama-server", "-m", "/m.gguf"]\nmodels = ["m1", "m2"]\n'
        '[long]\nport = 8081\nexec = ["llama-server", "--alias", "mine"]\n'
        '[short]\nport = 8082\nexec = ["llama-server", "-a=mine"]\n'
        '[env]\nport = 8083\nexec = ["llama-server"]\nenv = {LLAMA_ARG_ALIAS = "mine"}\n'
        '[py]\nport = 8084\nexec = ["python", "-m", "llama_cpp.server", "--model", "/m.gguf"]\n'
        '[sock]\nsocket = "/run/s.sock"\nexec = ["llama-server"]\n'
        '[vllm]\nport = 8000\nexec = ["vllm", "serve", "/m"]\n'
    )})  # fmt: skip
    argv = {s.id: served_argv(s) for s in load(tmp_path).soulstones}
    # ... and `--metrics`, so the gateway can scrape its Prometheus endpoint.
    assert argv["plain"] == ("llama-server", "-m", "/m.gguf", "--port", "8080", "--alias", "m1",
                             "--metrics")  # fmt: skip
    assert argv["long"] == ("llama-server", "--alias", "mine", "--port", "8081", "--metrics")
    assert argv["short"] == ("llama-server", "-a=mine", "--port", "8082", "--metrics")
    assert argv["env"] == ("llama-server", "--port", "8083", "--metrics")
    assert argv["py"][-2:] == ("--model_alias", "py")  # llama-cpp-python: no --metrics
    assert argv["sock"] == ("llama-server", "--host", "/run/s.sock", "--alias", "sock",
                            "--metrics")  # fmt: skip
    assert "--alias" not in argv["vllm"] and "--metrics" not in argv["vllm"]
