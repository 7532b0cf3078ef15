"""`soulstone models [--json]`, `models pull`, `models verify`: the console script, run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import free_port, write
from hub_server import FakeHub, fill_cache

SCRIPT = Path(sys.executable).parent / "soulstone"
REPO = "soulstone-test/tiny"
FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x01" * 200_000}
MODEL_KEYS = {"model", "source", "revision", "commit", "present", "size", "path", "soulstones",
              "problem"}  # fmt: skip
VLLM = ["python3", "-m", "vllm.entrypoints.openai.api_server"]

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """Run the console script with a private HOME, codex folder and Hugging Face cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SOULSTONE_", "XDG_", "HF_"))}  # fmt: skip
    env |= {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_STATE_HOME": str(tmp_path / "state"), "HF_HUB_CACHE": str(tmp_path / "hub"),
            "SOULSTONE_CODEX": str(tmp_path / "codex"), "COLUMNS": "200"}  # fmt: skip

    def invoke(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], env=env | extra, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    return invoke


def codex(tmp_path: Path, pinned: str) -> None:
    def table(name: str, lines: str) -> str:
        return f"[{name}]\nport = {free_port()}\nexec = {json.dumps(VLLM)}\n{lines}\n"

    write(tmp_path / "codex", {"a.toml": table("a", f'model = "{REPO}"')
                               + table("b", f'model = "{REPO}"\nmodels = ["b1"]')
                               + table("c", f'model = "{REPO}"\nrevision = "{pinned}"')
                               + table("d", 'model_path = "weights"')})  # fmt: skip


def test_models_json_lists_what_the_codex_needs(
    tmp_path: Path, run: Run, fake_hub: FakeHub
) -> None:
    commit = fake_hub.publish(REPO, FILES)
    absent = "f" * 40
    codex(tmp_path, absent)
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    result = run("models", "--json")
    assert result.returncode == 1, result.stderr  # one model is missing
    document = json.loads(result.stdout)
    assert document["cache"] == str(tmp_path / "hub")
    by_key = {(m["model"], m["revision"]): m for m in document["models"]}
    for record in document["models"]:
        assert set(record) == MODEL_KEYS
    main = by_key[(REPO, None)]
    assert main == {"model": REPO, "source": "hub", "revision": None, "commit": commit,
                    "present": True, "size": sum(len(d) for d in FILES.values()),
                    "path": str(snapshot), "soulstones": ["a", "b"], "problem": None}  # fmt: skip
    pinned = by_key[(REPO, absent)]
    assert (pinned["present"], pinned["soulstones"]) == (False, ["c"])
    assert f"pinned to revision {absent}" in pinned["problem"]
    weights = by_key[(str(tmp_path / "codex" / "weights"), None)]
    assert (weights["source"], weights["present"], weights["soulstones"]) == ("path", False, ["d"])
    table = run("models")
    assert "present" in table.stdout and "missing" in table.stdout and "a, b" in table.stdout
    assert f"pinned to revision {absent}" in table.stderr


def test_pull_says_plainly_that_there_is_no_network(tmp_path: Path, run: Run) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    result = run("models", "pull", REPO, HF_ENDPOINT=nobody)
    assert result.returncode == 1
    assert f"error: no network: cannot reach the Hugging Face Hub at {nobody}" in result.stderr
    offline = run("models", "pull", REPO, HF_HUB_OFFLINE="1")
    assert offline.returncode == 1 and "offline mode is on" in offline.stderr
    assert not (tmp_path / "hub").exists()


def test_pull_downloads_into_the_cache(tmp_path: Path, run: Run, fake_hub: FakeHub) -> None:
    commit = fake_hub.publish(REPO, FILES)
    result = run("models", "pull", REPO, HF_ENDPOINT=fake_hub.url)
    assert result.returncode == 0, result.stderr
    assert f"{REPO} main = {commit[:12]}: 2 files" in result.stderr
    assert f"pulling {REPO}" in result.stderr  # the progress bar's last frame
    folder = tmp_path / "hub" / "models--soulstone-test--tiny" / "snapshots" / commit
    assert f"is in {folder}" in result.stdout
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    again = run("models", "pull", REPO, HF_ENDPOINT=fake_hub.url)
    assert again.returncode == 0 and "0 B to download (2 cached)" in again.stderr


def test_pull_refuses_names_it_cannot_mean(tmp_path: Path, run: Run) -> None:
    codex(tmp_path, "v1")
    result = run("models", "pull", "d")
    assert result.returncode == 2
    assert "[d] in" in result.stderr and "has no `model`" in result.stderr
    result = run("models", "pull", "nothing-here")
    assert result.returncode == 2 and "neither a soulstone id" in result.stderr


def test_verify_finds_a_corrupted_blob(tmp_path: Path, run: Run, fake_hub: FakeHub) -> None:
    fake_hub.publish(REPO, FILES)
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    good = run("models", "verify", REPO)
    assert good.returncode == 0, good.stderr
    assert "2 files intact" in good.stdout
    blob = (snapshot / "model.safetensors").resolve()
    with blob.open("r+b") as handle:
        handle.write(b"\x00")
    bad = run("models", "verify", REPO, "--json")
    assert bad.returncode == 1
    assert "model.safetensors is corrupt" in bad.stderr and f"delete {blob}" in bad.stderr
    [verdict] = json.loads(bad.stdout)["models"]
    assert verdict["ok"] is False
    [broken] = [b for b in verdict["blobs"] if not b["ok"]]
    assert (broken["file"], broken["kind"], broken["expected"]) == (
        "model.safetensors", "sha256", blob.name)  # fmt: skip


def test_a_codex_without_model_never_imports_huggingface_hub(tmp_path: Path) -> None:
    write(tmp_path / "codex", {"a.toml": f"[a]\nport = 1\nexec = {json.dumps(VLLM)}\n"})
    probe = (
        "import sys\n"
        "from soulstone.cli.app import COMMANDS, load_command\n"
        "from soulstone.codex.load import load_codex\n"
        "from soulstone.codex.facts import HostFacts\n"
        "from soulstone.artifacts.preflight import Preflight\n"
        "import soulstone.supervisor.supervisor, soulstone.guard.audit\n"
        "for name in COMMANDS: load_command(name)\n"
        f"[stone] = load_codex([__import__('pathlib').Path({str(tmp_path / 'codex')!r})],"
        " HostFacts()).soulstones\n"
        "assert Preflight(__import__('pathlib').Path('/nowhere'))(stone) is stone\n"
        "print('huggingface_hub' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
