"""`soulstone council list|check|plan`, and councils in `check`, `init` and `serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import kill_recorded
from gateway_harness import StartGateway, fake_codex, fake_table
from helpers import EXAMPLES, write
from lora_helpers import write_adapter
from soulstone.codex.facts import HostFacts
from soulstone.codex.load import load_codex
from soulstone.lora.adapter import inspect_adapter
from soulstone.lora.registry import opened
from soulstone.runtimes.state import StateFolder

SCRIPT = Path(sys.executable).parent / "soulstone"

Run = Callable[..., subprocess.CompletedProcess[str]]

SPREAD = """
[persona.sage]
model = "alpha"
[persona.hand]
model = "beta"
[persona.seer]
model = "eye"
[persona.bolt]
model = "flash"
[council.all]
personas = ["sage", "seer", "bolt", "hand"]
aggregator = "sage"
veto = "seer"
router = { kind = "model", persona = "bolt", max_personas = 2 }
memory = { embed_model = "scribe", top_k = 2 }
"""

BAD = """
[persona.sage]
model = "nope"
[council.all]
personas = ["sage", "ghost"]
aggregator = "sage"
quorum = 3
"""


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    """Run the console script in a private HOME/XDG environment; kill what it left."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOULSTONE_", "XDG_"))}
    env |= {
        "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"), "SOULSTONE_DEFAULT_RUNTIME": "process",
        "COLUMNS": "200",
    }  # fmt: skip

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip

    yield invoke
    kill_recorded(StateFolder(tmp_path / "state" / "soulstone"))


def test_init_writes_a_starter_council_that_checks_and_plans(run: Run, tmp_path: Path) -> None:
    first = run("init")
    assert first.returncode == 0, first.stderr
    council_file = tmp_path / "config" / "soulstone" / "councils" / "trial.toml"
    assert council_file.read_text().startswith("#")
    assert f"wrote {council_file}" in first.stdout
    check = run("check")
    assert check.returncode == 0, check.stderr
    assert "councils: trial (2 personas)" in check.stdout
    assert run("council", "check").stdout.startswith("councils OK: 1 council, 2 personas")
    listed = json.loads(run("council", "list", "--json").stdout)
    [trial] = listed["councils"]
    assert (trial["name"], trial["personas"], trial["aggregator"], trial["quorum"]) == (
        "trial", ["sage", "critic"], "sage", 2,
    )  # fmt: skip
    assert trial["file"] == str(council_file)
    plan = run("council", "plan", "trial", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout) == {"waves": [{
        "personas": ["sage", "critic"], "soulstones": ["logic.alpha", "logic.beta"],
        "why": "logic.alpha, logic.beta may run at once: one wave, no swap",
    }]}  # fmt: skip
    table = run("council", "list")
    assert "trial" in table.stdout and "sage, critic" in table.stdout and "off" in table.stdout


def test_plan_json_is_the_contract_shape_and_the_table_says_why(run: Run, tmp_path: Path) -> None:
    councils = write(tmp_path / "councils", {"spread.toml": SPREAD})
    args = ("--codex", str(EXAMPLES), "council")
    result = run(*args, "plan", "all", "--json", "--councils", str(councils))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"waves"}
    assert [(w["personas"], w["soulstones"]) for w in document["waves"]] == [
        (["bolt"], ["flash"]),
        (["seer"], ["eye"]),
        (["sage", "hand"], ["logic.alpha", "logic.beta"]),  # the aggregator's: no swap for it
    ]
    for wave in document["waves"]:
        assert set(wave) == {"personas", "soulstones", "why"}
    assert document["waves"][1]["why"] == (
        "flash and eye cannot share the GPU (flash is solitary): eye waits for wave 1"
    )
    text = run(*args, "plan", "all", "--councils", str(councils))
    assert "council all: 3 waves" in text.stdout and "eye waits for wave 1" in text.stdout
    listed = run(*args, "list", "--councils", str(councils))
    assert "model (bolt), at most 2" in listed.stdout and "scribe (top 2)" in listed.stdout
    unknown = run(*args, "plan", "nope", "--councils", str(councils))
    assert unknown.returncode == 2 and "no council named 'nope' (declared: all)" in unknown.stderr


def test_invalid_councils_list_every_problem_in_each_command(run: Run, tmp_path: Path) -> None:
    councils = write(tmp_path / "councils", {"bad.toml": BAD})
    file = councils / "bad.toml"
    expected = [
        f"error: {file}: [council.all] personas: no persona named 'ghost'",
        f"error: {file}: [council.all] quorum: 3 answers can never come from 2 personas",
        f"error: {file}: [persona.sage] model: no soulstone serves 'nope'",
    ]
    for command in (["council", "check"], ["check"], ["council", "plan", "all"]):
        result = run("--codex", str(EXAMPLES), *command, "--councils", str(councils))
        assert result.returncode == 1, command
        for line in expected:
            assert line in result.stderr, (command, result.stderr)
        assert "3 errors in the councils" in result.stderr
    as_json = run("--codex", str(EXAMPLES), "check", "--json", "--councils", str(councils))
    assert as_json.returncode == 1
    errors = json.loads(as_json.stdout)["errors"]
    assert [(e["table"], e["field"]) for e in errors] == [
        ("council.all", "personas"), ("council.all", "quorum"), ("persona.sage", "model"),
    ]  # fmt: skip
    codex = write(tmp_path / "codex", {"a.toml": "[a]\nport = 1\n"})
    both = run("--codex", str(codex), "check", "--councils", str(councils))
    assert both.returncode == 1
    assert f"{codex / 'a.toml'}: [a] exec:" in both.stderr
    assert "[council.all] personas: no persona named 'ghost'" in both.stderr
    assert "errors in the codex and the councils" in both.stderr
    missing = run("--codex", str(EXAMPLES), "council", "check", "--councils", "/no/such/path")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_serve_refuses_to_start_with_invalid_councils(run: Run, tmp_path: Path) -> None:
    councils = write(tmp_path / "councils", {"bad.toml": BAD})
    socket = tmp_path / "gw.sock"
    result = run("--codex", str(EXAMPLES), "serve", "--socket", str(socket),
                 "--councils", str(councils))  # fmt: skip
    assert result.returncode == 1
    assert "[persona.sage] model: no soulstone serves 'nope'" in result.stderr
    assert not socket.exists()


def test_a_persona_on_a_registered_adapter_plans_on_its_base(run: Run, tmp_path: Path) -> None:
    codex_folder = write(tmp_path / "codex", {"c.toml": """
[tiny]
port = 9
exec = ["vllm", "serve", "/models/tiny-llama", "--gpu-memory-utilization", "0.5"]
model_path = "/models/tiny-llama"
lora = { max_loras = 2, max_lora_rank = 8 }
"""})  # fmt: skip
    codex = load_codex([codex_folder], HostFacts(), read_models=lambda _ref: None)
    soulstone = codex.get("tiny")
    assert soulstone is not None
    folder = write_adapter(tmp_path / "story")
    with opened(tmp_path / "data" / "soulstone") as registry:
        registry.add(inspect_adapter("story", folder, soulstone), folder)
    councils = write(tmp_path / "councils", {"c.toml": """
[persona.plain]
model = "tiny"
[persona.teller]
model = "story"
[council.tales]
personas = ["plain", "teller"]
aggregator = "plain"
"""})  # fmt: skip
    args = ("--codex", str(codex_folder))
    check = run(*args, "council", "check", "--councils", str(councils))
    assert check.returncode == 0, check.stderr
    plan = run(*args, "council", "plan", "tales", "--json", "--councils", str(councils))
    assert [w["soulstones"] for w in json.loads(plan.stdout)["waves"]] == [["tiny"]]
    typo = write(tmp_path / "typo", {"c.toml": '[persona.teller]\nmodel = "stroy"\n'})
    refused = run(*args, "council", "check", "--councils", str(typo))
    assert refused.returncode == 1 and "did you mean 'story'" in refused.stderr


def test_serve_loads_councils_and_plan_puts_the_running_soulstone_first(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    codex = fake_codex(tmp_path / "codex", fake_table("east.m1", model="m1"),
                       fake_table("west.m2", model="m2"))  # fmt: skip
    councils = write(tmp_path / "councils", {"c.toml": """
[persona.one]
model = "m1"
[persona.two]
model = "m2"
[council.duo]
personas = ["one", "two"]
aggregator = "two"
"""})  # fmt: skip
    gateway = start_gateway(codex, "--councils", str(councils))

    def first_wave() -> list[str]:
        result = gateway.cli("council", "plan", "duo", "--json", "--councils", str(councils))
        assert result.returncode == 0, result.stderr
        waves = json.loads(result.stdout)["waves"]
        assert len(waves) == 2
        return list(waves[0]["soulstones"])

    assert first_wave() == ["east.m1"]  # the aggregator's soulstone goes last
    answer = gateway.uds_client().chat.completions.create(
        model="m2", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content
    assert first_wave() == ["west.m2"]  # what runs goes first


def test_council_forget_with_no_gateway_opens_the_memory_folder_itself(
    run: Run, tmp_path: Path
) -> None:
    import asyncio

    from soulstone.council.memory import Remembered, ResonanceMemory

    folder = tmp_path / "data" / "soulstone" / "memory"
    nothing = run("council", "forget", "s1", "--json")
    assert nothing.returncode == 0, nothing.stderr
    assert json.loads(nothing.stdout) == {"session": "s1", "forgotten": 0, "where": str(folder)}
    assert not folder.exists()  # forgetting creates no store

    async def remember() -> ResonanceMemory:
        memory = ResonanceMemory(folder)
        await memory.store("pantheon", "s1", [Remembered("maat", 1, "a", [1.0, 0.0]),
                                              Remembered("roc", 1, "b", [0.0, 1.0])])  # fmt: skip
        await memory.store("pantheon", "s2", [Remembered("maat", 1, "c", [1.0, 0.0])])
        return memory

    async def close(memory: ResonanceMemory) -> None:
        await memory.close()

    held = asyncio.run(remember())  # still open: this process holds the folder's lock
    try:
        busy = run("council", "forget", "s1")
        assert busy.returncode == 1
        assert f"{folder} is in use by another process" in " ".join(busy.stderr.split())
    finally:
        asyncio.run(close(held))
    forgot = run("council", "forget", "s1")
    assert forgot.returncode == 0, forgot.stderr
    assert f"forgot 2 memories of session 's1' ({folder})" in forgot.stdout
    assert json.loads(run("council", "forget", "s2", "--json").stdout)["forgotten"] == 1
