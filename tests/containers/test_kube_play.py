"""A forged Kubernetes manifest really runs: `podman kube play` of one llama-server soulstone.

The soulstone runs the tiny llama-server of the test image (tests/container_images.py),
its model folder mounted by the manifest's hostPath volume. Podman 4.3 publishes only
the container ports that declare a hostPort (`kube play` has no --publish), so the test
adds one on 127.0.0.1, as a user trying the manifest on one box would; everything else
is played as forged.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import yaml

from conftest import SESSION_MARKER, TEST_LABEL
from container_images import LlamaImage, podman
from helpers import free_port, load, write
from soulstone.codex.engines import derived_arguments, kept_argv
from soulstone.forge.kube import kube_name
from soulstone.forge.kube_values import VALUES_FILE, forge_kube

pytestmark = pytest.mark.containers

ENGINE_PORT = 8080  # inside the pod's own network namespace
Play = Callable[[Path], None]


@pytest.fixture
def kube_play(podman_env: dict[str, str]) -> Iterator[Play]:
    """`podman kube play FILE`; whatever a played file made is removed afterwards, even on
    failure (`kube down`, then any pod of its Deployments still there)."""
    played: list[Path] = []

    def play(manifest: Path) -> None:
        played.append(manifest)
        podman(podman_env, "kube", "play", str(manifest), timeout=120)

    yield play
    env = {**os.environ, **podman_env}
    for manifest in played:
        subprocess.run(["podman", "kube", "down", str(manifest)], env=env, capture_output=True,
                       timeout=120, check=False)  # fmt: skip
        for document in yaml.safe_load_all(manifest.read_text()):
            if document["kind"] == "Deployment":
                for pod in pods(podman_env, document["metadata"]["name"]):
                    podman(podman_env, "pod", "rm", "-f", "-t", "0", "--ignore", pod["Name"])


def pods(env: dict[str, str], name: str) -> list[dict[str, Any]]:
    """The pods `podman kube play` made for a Deployment of this name."""
    listed = json.loads(podman(env, "pod", "ps", "--format", "json") or "[]")
    return [pod for pod in listed if pod["Name"].startswith(f"{name}-pod")]


def wait_ready(env: dict[str, str], name: str, url: str) -> None:
    """Return once the engine answers /health with 200; fail with its log if its pod stops."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx2.get(url, timeout=5).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        states = [pod["Status"] for pod in pods(env, name)]
        if states != ["Running"] or time.monotonic() > deadline:
            logs = podman(env, "logs", "--tail", "40", f"{pods(env, name)[0]['Name']}-engine")
            pytest.fail(f"pod {name} not ready (pods: {states}); engine log:\n{logs}")
        time.sleep(0.1)


def test_podman_kube_play_runs_a_forged_llama_server_pod(
    tmp_path: Path, llama_image: LlamaImage, podman_env: dict[str, str], kube_play: Play
) -> None:
    command = [llama_image.server, "-m", f"/models/{llama_image.model_file}", "-c", "512", "-t",
               "1", "--no-warmup", "--host", "0.0.0.0", "--port", str(ENGINE_PORT)]  # fmt: skip
    table = "\n".join([
        "[kube.tiny]", 'engine = "llamacpp"', f'image = "{llama_image.name}"', "devices = []",
        f'volumes = ["{llama_image.models}:/models:ro"]', f"exec = {json.dumps(command)}",
        'models = ["tiny-kube"]', f"port = {ENGINE_PORT}", "",
    ])  # fmt: skip
    codex = load(write(tmp_path / "codex", {"tiny.toml": table}))
    [soulstone] = codex.soulstones
    files, warnings = forge_kube(codex)
    assert warnings == ()
    [manifest] = [f for f in files if f.name != VALUES_FILE]
    deployment, service = yaml.safe_load_all(manifest.text)
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert tuple(container["args"]) == (*kept_argv(soulstone), *derived_arguments(soulstone))
    assert container["volumeMounts"] == [
        {"name": "volume-0", "mountPath": "/models", "readOnly": True}
    ]
    assert pod["spec"]["volumes"] == [{"name": "volume-0", "hostPath": {"path": str(
        llama_image.models)}}]  # fmt: skip

    host_port = free_port()
    container["ports"][0] |= {"hostPort": host_port, "hostIP": "127.0.0.1"}
    # Pod labels reach the containers: the session's leak check counts this one.
    pod["metadata"]["labels"][TEST_LABEL] = os.environ[SESSION_MARKER]
    played = tmp_path / "soulstone-kube-tiny.yaml"
    played.write_text(yaml.safe_dump_all([deployment, service]))

    name = kube_name(soulstone)
    kube_play(played)
    wait_ready(podman_env, name, f"http://127.0.0.1:{host_port}/health")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{host_port}/v1", api_key="none")
    reply = client.chat.completions.create(
        model="tiny-kube", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    assert [m.id for m in client.models.list().data] == ["tiny-kube"]  # the derived --alias

    podman(podman_env, "kube", "down", str(played), timeout=120)
    assert pods(podman_env, name) == []
    listed = json.loads(podman(podman_env, "ps", "-a", "--format", "json") or "[]")
    assert [c["Names"] for c in listed if c.get("PodName", "").startswith(name)] == []
