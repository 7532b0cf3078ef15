"""`soulstone up` without a gateway warms an engine up too, and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2

from conftest import kill_recorded
from helpers import FAKE_ENGINE, free_port, write
from soulstone.runtimes.state import StateFolder
from soulstone.runtimes.warmup import REQUEST_ID_PREFIX

SCRIPT = Path(sys.executable).parent / "soulstone"


def test_up_sends_the_warm_up_before_it_returns(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, str(FAKE_ENGINE), "--model", "m", "--port", str(port)]
    codex = write(tmp_path / "codex", {"a.toml": f"""
[a]
exec = {json.dumps(command)}
port = {port}
models = ["m"]
warmup = {{ max_tokens = 2 }}
health = {{ path = "/health", start_timeout = 15, interval = 0.05 }}
"""})  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOULSTONE_", "XDG_"))}
    env |= {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"), "SOULSTONE_DEFAULT_RUNTIME": "process",
            "COLUMNS": "200"}  # fmt: skip
    try:
        up = subprocess.run([str(SCRIPT), "--codex", str(codex), "up", "a"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert "a is healthy" in up.stderr and "a warmed up" in up.stderr
        calls = httpx2.get(f"http://127.0.0.1:{port}/fake/calls").json()["calls"]
        [call] = calls
        assert call["id"] == REQUEST_ID_PREFIX + "a" and call["model"] == "m"
        assert call["max_tokens"] == 2 and call["last"]["content"] == "Hello"
    finally:
        kill_recorded(StateFolder(tmp_path / "state" / "soulstone"))
