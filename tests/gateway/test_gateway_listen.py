"""Where the gateway listens: stale and live sockets, foreign folders, activation, strict."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2

from gateway_harness import SCRIPT, StartGateway, fake_codex, fake_table


def test_a_stale_socket_is_removed(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    first = start_gateway(codex)
    path = first.socket
    first.process.kill()  # dies without cleaning up: its socket file stays
    first.process.wait()
    assert path.exists()
    environment = first.env
    log = tmp_path / "second.log"
    second = subprocess.Popen([str(SCRIPT), "--codex", str(codex), "serve"], env=environment,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "listening" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "removed a stale socket" in log.read_text()
        http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(path)))
        assert http.get("http://localhost/health").status_code == 200
    finally:
        second.terminate()
        second.wait(timeout=30)


def test_a_live_gateway_is_not_replaced(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    first = start_gateway(codex)
    second = subprocess.run([str(SCRIPT), "--codex", str(codex), "serve"], env=first.env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert second.returncode == 1
    assert "another gateway already answers" in second.stderr
    assert first.http().get("/health").status_code == 200


def test_socket_option_in_a_foreign_folder(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    shared = Path(tempfile.mkdtemp(prefix="ss-shared-", dir="/tmp"))
    shared.chmod(0o777)
    created = Path(tempfile.mkdtemp(prefix="ss-new-", dir="/tmp")) / "deeper"
    try:
        gateway = start_gateway(codex, "--socket", str(shared / "api.sock"))
        assert "writable by others" in gateway.log.read_text()
        assert (shared.stat().st_mode & 0o777) == 0o777  # left as it was
        other = start_gateway(codex, "--socket", str(created / "api.sock"))
        assert (created.stat().st_mode & 0o777) == 0o700
        assert other.http().get("/health").status_code == 200
    finally:
        for folder in (shared, created.parent):
            subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_systemd_socket_activation(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    folder = Path(tempfile.mkdtemp(prefix="ss-act-", dir="/tmp"))
    path = folder / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    reference = start_gateway(codex)  # only for its environment
    env = reference.env | {"LISTEN_FDS": "1"}

    def as_fd_3() -> None:
        os.dup2(listener.fileno(), 3)

    process = subprocess.Popen(
        ["sh", "-c", f'LISTEN_PID=$$ exec "{SCRIPT}" --codex "{codex}" serve'],
        env=env, preexec_fn=as_fd_3, close_fds=False,
        stdout=(tmp_path / "activated.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    listener.close()
    try:
        http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(path)), timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                response = http.get("http://localhost/health")
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "activated.log").read_text()
                time.sleep(0.05)
        assert response.status_code == 200
        answer = http.post("http://localhost/v1/chat/completions", json={"model": "m"})
        assert answer.status_code == 200
        assert "unix:" + str(path) in (tmp_path / "activated.log").read_text()
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_strict_mode_refuses_tcp(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    reference = start_gateway(codex)
    result = subprocess.run(
        [str(SCRIPT), "--codex", str(codex), "serve", "--strict", "--tcp", "127.0.0.1:1"],
        env=reference.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "strict mode refuses TCP" in result.stderr
