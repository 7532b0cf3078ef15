"""`soulstone audit` finds every planted problem and passes a clean strict setup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gateway_harness import SCRIPT, RunningGateway, StartGateway, fake_codex, fake_table


def audit(gateway: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "--codex", str(gateway.codex), "audit", *args],
                          env=gateway.env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_clean_strict_setup_passes_then_each_planted_problem_is_found(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    run = tmp_path / "engines"
    codex = fake_codex(tmp_path / "c", fake_table("quiet", model="m", socket_path=run / "q.sock"))
    hf = tmp_path / "hf"
    (hf / "hub").mkdir(parents=True, mode=0o700)
    gateway = start_gateway(codex, tcp=False, env={"HF_HOME": str(hf)})
    gateway.http().post("/admin/up", json={"name": "quiet"})
    gateway.env["HF_HOME"] = str(hf)
    clean = audit(gateway, "--strict")
    assert clean.returncode == 0, clean.stderr
    assert "no findings (strict)" in clean.stdout

    (hf / "hub").chmod(0o755)
    gateway.socket.chmod(0o666)
    gateway.socket.parent.chmod(0o755)
    clients = tmp_path / "config" / "soulstone" / "clients.yaml"
    clients.chmod(0o644)
    secret = fake_table(
        "leaky", model="l", extra='env = { OPENAI_API_KEY = "sk-abcdefghijklmnopqrstuvwx" }'
    )
    (codex / "leaky.toml").write_text(secret)
    found = audit(gateway)
    assert found.returncode == 1
    expected = (
        "the socket folder has mode 0755",
        "the socket has mode 0666",
        "the model cache has mode 0755",
        "wider than 0640",
        "env.OPENAI_API_KEY",
    )
    for words in expected:
        assert words in found.stderr, words
    assert "5 finding(s)" in found.stderr


def test_strict_audit_finds_tcp_listeners(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("open", model="m"))  # an engine on a TCP port
    gateway = start_gateway(codex)  # and the gateway with --tcp
    gateway.http().post("/admin/up", json={"name": "open"})
    found = audit(gateway, "--strict")
    assert found.returncode == 1
    assert "the gateway listens on TCP" in found.stderr
    assert "engine open listens on TCP" in found.stderr
    relaxed = audit(gateway)
    assert "listens on TCP" not in relaxed.stderr
    assert json.loads(gateway.state.root.joinpath("gateway.json").read_text())["pid"] > 0
