"""Two real Unix users: SO_PEERCRED maps each caller of the socket to its client.

The gateway runs as one new user, the callers connect as others (setpriv), so
the kernel, not the test, says who is calling. Needs root (useradd, setpriv)
and a Python every user may run: a venv made from Debian's /usr/bin/python3.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import kill_recorded
from helpers import FAKE_ENGINE
from soulstone.runtimes.state import StateFolder

ROOT = Path(__file__).resolve().parents[2]
GROUP, GATEWAY_USER, CLIENT_USER, STRANGER = "ss-sock", "ss-gw", "ss-alice", "ss-stranger"


def _require_root_tools() -> None:
    missing = [t for t in ("useradd", "groupadd", "setpriv", "curl") if shutil.which(t) is None]
    if os.getuid() != 0 or missing or not Path("/usr/bin/python3").exists():
        reason = f"needs root, /usr/bin/python3 and {missing or 'useradd/setpriv/curl'}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_python() -> Path:
    """A venv with soulstone that every user may run (outside /root), made once."""
    _require_root_tools()
    stamp = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + str(ROOT).encode()).hexdigest()
    venv = Path("/opt/soulstone-test-venv") / stamp[:16]
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        "-e", str(ROOT)], check=True, timeout=900)  # fmt: skip
        (venv / ".complete").touch()
    for parent in (venv, *venv.parents):
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    return venv / "bin"


@pytest.fixture(scope="session")
def users() -> None:
    """The gateway's user and two callers, all in one group that may reach the socket."""
    _require_root_tools()
    subprocess.run(["groupadd", "-f", GROUP], check=True)
    for user in (GATEWAY_USER, CLIENT_USER, STRANGER):
        if subprocess.run(["id", user], capture_output=True, check=False).returncode != 0:
            subprocess.run(["useradd", "-M", "-N", "-g", GROUP, "-s", "/usr/sbin/nologin", user],
                           check=True)  # fmt: skip


def as_user(user: str, *command: str) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={GROUP}", "--init-groups", *command]


@pytest.fixture
def gateway_as_user(shared_python: Path, users: None) -> Iterator[Path]:
    """A gateway running as GATEWAY_USER on a socket its group may reach; yields the socket."""
    base = Path(tempfile.mkdtemp(prefix="ss-users-", dir="/tmp"))
    base.chmod(0o755)
    for name in ("config/soulstone", "state", "runtime", "codex", "sock"):
        (base / name).mkdir(parents=True)
    engine = [str(shared_python / "python"), str(FAKE_ENGINE), "--model", "m",
              "--uds", str(base / "runtime" / "e.sock")]  # fmt: skip
    (base / "codex" / "c.toml").write_text(
        f'[e]\nexec = {json.dumps(engine)}\nsocket = "{base / "runtime" / "e.sock"}"\n'
        'models = ["m", "n"]\nhealth = { path = "/health", start_timeout = 30, interval = 0.1 }\n'
    )
    clients = base / "config" / "soulstone" / "clients.yaml"
    clients.write_text(yaml.safe_dump({"clients": {"alice": {"users": [CLIENT_USER],
                                                             "models": ["m"]}}}))  # fmt: skip
    clients.chmod(0o600)
    subprocess.run(["chown", "-R", f"{GATEWAY_USER}:{GROUP}", str(base)], check=True)
    (base / "sock").chmod(0o750)
    socket_path = base / "sock" / "api.sock"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "XDG_CONFIG_HOME": str(base / "config"),
           "XDG_STATE_HOME": str(base / "state"), "XDG_RUNTIME_DIR": str(base / "runtime"),
           "SOULSTONE_DEFAULT_RUNTIME": "process",
           "SOULSTONE_TEST_SESSION": os.environ.get("SOULSTONE_TEST_SESSION", "")}  # fmt: skip
    log = base / "gateway.log"
    process = subprocess.Popen(
        as_user(GATEWAY_USER, str(shared_python / "soulstone"), "--codex", str(base / "codex"),
                "serve", "--socket", str(socket_path)),
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield socket_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        kill_recorded(StateFolder(base / "state" / "soulstone"))
        shutil.rmtree(base, ignore_errors=True)


def call(user: str, socket_path: Path, model: str) -> tuple[int, dict[str, Any]]:
    command = as_user(user, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket",
                      str(socket_path), "http://localhost/v1/chat/completions",
                      "-H", "Content-Type: application/json",
                      "-d", json.dumps({"model": model, "messages": []}))  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    body, _, status = result.stdout.rpartition("\n")
    document: dict[str, Any] = json.loads(body)
    return int(status), document


def test_peer_credentials_map_real_users_to_clients(gateway_as_user: Path) -> None:
    status, body = call(CLIENT_USER, gateway_as_user, "m")
    assert status == 200, body
    status, body = call(CLIENT_USER, gateway_as_user, "n")
    assert (status, body["error"]["code"]) == (403, "MODEL_FORBIDDEN")
    status, body = call(STRANGER, gateway_as_user, "m")
    assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED")
    status, body = call(GATEWAY_USER, gateway_as_user, "n")
    assert status == 200, body  # the gateway's own user is its owner
    assert sys.platform == "linux"
