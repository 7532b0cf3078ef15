"""`soulstone forge --kube` through the real console script: files, dry run, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from helpers import EXAMPLES, write

SCRIPT = Path(sys.executable).parent / "soulstone"
VALUES = Path("helm") / "vllm-stack-values.yaml"
MANIFESTS = {f"soulstone-{name}.yaml" for name in ("eye", "flash", "logic-alpha", "logic-beta",
                                                    "scribe")}  # fmt: skip

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """Run the console script in a private HOME/XDG environment (forge starts nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOULSTONE_", "XDG_"))}
    env |= {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"), "SOULSTONE_DEFAULT_RUNTIME": "process",
            "COLUMNS": "200"}  # fmt: skip

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip

    return invoke


def test_forge_kube_writes_the_fleet_then_changes_nothing(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    first = run("--codex", str(EXAMPLES), "forge", "--kube", "--output", str(out))
    assert first.returncode == 0, first.stderr
    assert "6 written, 0 unchanged, 0 removed" in first.stdout
    assert {p.name for p in out.glob("*.yaml")} == MANIFESTS
    values = yaml.safe_load((out / VALUES).read_text())
    assert values["routerSpec"]["staticModels"] == "alpha,beta,eye,flash,scribe"
    assert f"kubectl apply -f {out}" in first.stdout
    assert "[scribe] exec: llamacpp listens on 127.0.0.1" in first.stderr
    second = run("--codex", str(EXAMPLES), "forge", "--kube", "--output", str(out))
    assert second.returncode == 0, second.stderr
    assert "0 written, 6 unchanged, 0 removed" in second.stdout
    # Quadlet units are none of its business, nor are files it did not write.
    assert not list(out.glob("*.container"))


def test_forge_kube_removes_the_manifests_of_soulstones_gone(run: Run, tmp_path: Path) -> None:
    codex = write(tmp_path / "codex", {
        name: (EXAMPLES / name).read_text() for name in ("flash.toml", "logic_cluster.toml")
    })  # fmt: skip
    out = tmp_path / "fleet"
    (out).mkdir()
    (out / "soulstone-mine.yaml").write_text("kind: ConfigMap\n")  # not the forge's
    assert run("--codex", str(codex), "forge", "--kube", "--output", str(out)).returncode == 0
    (codex / "flash.toml").unlink()
    again = run("--codex", str(codex), "forge", "--kube", "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert f"removed {out / 'soulstone-flash.yaml'}" in again.stdout
    assert {p.name for p in out.glob("*.yaml")} == {
        "soulstone-logic-alpha.yaml", "soulstone-logic-beta.yaml", "soulstone-mine.yaml"
    }  # fmt: skip


def test_forge_kube_defaults_to_the_config_folder_and_dry_run_prints(
    run: Run, tmp_path: Path
) -> None:
    dry = run("--codex", str(EXAMPLES), "forge", "--kube", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    default = tmp_path / "config" / "soulstone" / "kube"
    assert not default.exists()
    assert f"# ==> {default / 'soulstone-flash.yaml'} (new) <==" in dry.stdout
    assert f"# ==> {default / VALUES} (new) <==" in dry.stdout
    assert 'staticModels: "alpha,beta,eye,flash,scribe"' in dry.stdout
    wrote = run("--codex", str(EXAMPLES), "forge", "--kube")
    assert wrote.returncode == 0, wrote.stderr
    assert {p.name for p in default.glob("*.yaml")} == MANIFESTS


def test_forge_kube_refuses_strict_and_an_empty_fleet(run: Run, tmp_path: Path) -> None:
    strict = run("--codex", str(EXAMPLES), "forge", "--kube", "--strict")
    assert strict.returncode == 2
    assert "leave out --strict with --kube" in strict.stderr
    codex = write(tmp_path / "codex", {"p.toml": '[p]\nexec = ["/bin/srv"]\nport = 9001\n'})
    empty = run("--codex", str(codex), "forge", "--kube", "--output", str(tmp_path / "f"))
    assert empty.returncode == 1
    assert "no soulstone can run on Kubernetes" in empty.stderr
    assert f"{codex / 'p.toml'}: [p] image: no image" in empty.stderr
    assert not (tmp_path / "f").exists()


def test_forge_help_documents_kube() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    shown = subprocess.run([str(SCRIPT), "forge", "--help"], capture_output=True, text=True,
                           env=env, timeout=60, check=False)  # fmt: skip
    assert shown.returncode == 0
    assert "--kube" in shown.stdout
    assert "~/.config/soulstone/kube/" in shown.stdout
