"""The test image really runs llama-server under Podman: no network, a Unix socket in a mount."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from container_images import LlamaImage, container_log, podman, session_labels

pytestmark = pytest.mark.containers


@pytest.fixture
def container(podman_env: dict[str, str]) -> Iterator[str]:
    """A unique container name; the container is removed afterwards (not by --rm: its log
    stays readable for a failure message)."""
    name = f"ss-test-{uuid.uuid4().hex[:12]}"
    yield name
    podman(podman_env, "rm", "-f", "-t", "0", "--ignore", name)


def wait_healthy(client: httpx2.Client, socket: Path, name: str, env: dict[str, str]) -> None:
    """Return once the engine's socket exists and /health answers 200.

    A failure, with the container's log, when it stops first or after 60 s.
    """
    deadline = time.monotonic() + 60
    while True:
        if socket.exists():
            try:
                if client.get("http://engine/health").status_code == 200:
                    return
            except httpx2.TransportError:
                pass
        running = podman(env, "inspect", "--format", "{{.State.Running}}", name).strip()
        if running != "true" or time.monotonic() > deadline:
            logs = container_log(env, name)
            pytest.fail(f"llama-server in {name} not healthy (running: {running}); log:\n{logs}")
        time.sleep(0.1)


def test_llama_server_answers_from_a_container(
    llama_image: LlamaImage, podman_env: dict[str, str], container: str, short_tmp: Path
) -> None:
    podman(
        podman_env, "run", "-d", "--name", container, *session_labels(),
        "--network", "none", "-v", f"{llama_image.models}:/models:ro", "-v", f"{short_tmp}:/run/ss",
        llama_image.name, llama_image.server, "-m", f"/models/{llama_image.model_file}",
        "--host", "/run/ss/e.sock", "-c", "256", "-t", "1", "--no-warmup",
    )  # fmt: skip
    socket = short_tmp / "e.sock"
    with httpx2.Client(transport=httpx2.HTTPTransport(uds=str(socket)), timeout=10) as client:
        wait_healthy(client, socket, container, podman_env)
        reply = client.post(
            "http://engine/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
        )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] >= 1
    networks = podman(podman_env, "inspect", "--format", "{{.HostConfig.NetworkMode}}", container)
    assert networks.strip() == "none"
