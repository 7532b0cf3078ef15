"""The podman runtime with real containers: swaps, strict mode, failures, the unit's argv.

Each engine is the tiny llama-server in the test image (tests/container_images.py),
run by soulstone as the `podman run` of its generated quadlet service.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import openai
import pytest

from conftest import kill_recorded
from container_images import LlamaImage, podman
from gateway_harness import SCRIPT, StartGateway
from helpers import free_port, load, write
from soulstone.codex.facts import HostFacts
from soulstone.codex.models import Soulstone
from soulstone.forge.units import ForgeOptions, container_unit, qualified_image
from soulstone.runtimes import procfs
from soulstone.runtimes.podman_unit import generate_service, outside_systemd, specifiers
from soulstone.runtimes.state import StateFolder, read_json
from soulstone.runtimes.systemd_exec import exec_command, service_settings, specifier_table

pytestmark = pytest.mark.containers

PODMAN_ONLY = HostFacts(has_podman=True, has_quadlet_generator=True)


def container_table(
    image: LlamaImage, table: str, model: str, group: str, *lines: str, model_file: str = ""
) -> str:
    """A podman-runtime soulstone running the tiny llama-server in the test image."""
    command = [image.server, "-m", f"/models/{model_file or image.model_file}", "-c", "512",
               "-t", "1", "--no-warmup", *(["--host", "0.0.0.0"] if any(
                   line.startswith("port_expose") for line in lines) else [])]  # fmt: skip
    return "\n".join([
        f"[{table}]", 'engine = "llamacpp"', 'runtime = "podman"', f'image = "{image.name}"',
        "devices = []", f'volumes = ["{image.models}:/models:ro"]', f"exec = {json.dumps(command)}",
        f'models = ["{model}"]', f'groups = ["{group}"]',
        "health = { start_timeout = 60, interval = 0.1 }", *lines, "",
    ])  # fmt: skip


def containers(ids: set[str]) -> dict[str, str]:
    """Name -> state of every container (running or not) labelled with one of these ids."""
    listed = json.loads(podman({}, "ps", "-a", "--format", "json") or "[]")
    return {
        entry["Names"][0]: entry["State"]
        for entry in listed
        if (entry.get("Labels") or {}).get("soulstone.id") in ids
    }


def chat(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def keepers(state: StateFolder) -> list[int]:
    """Pids of the keepers (and the `podman run` they wait for) that are still alive."""
    alive = []
    for record in (state.root / "engines").glob("*.keeper.json"):
        kept = read_json(record) or {}
        for pid, ticks in ((kept.get("keeper_pid"), kept.get("keeper_ticks")),
                           (kept.get("pid"), kept.get("ticks"))):  # fmt: skip
            if procfs.alive(pid, ticks):
                alive.append(int(pid))  # type: ignore[arg-type]
    return alive


def test_the_gateway_swaps_real_containers_and_leaves_none(
    tmp_path: Path, short_tmp: Path, start_gateway: StartGateway, llama_image: LlamaImage,
    podman_runtime_env: dict[str, str],
) -> None:  # fmt: skip
    codex = write(tmp_path / "codex", {"c.toml": "\n".join([
        container_table(llama_image, "north", "tiny-north", "n", f'socket = "{short_tmp}/n.sock"'),
        container_table(llama_image, "south", "tiny-south", "s", f'socket = "{short_tmp}/s.sock"'),
    ])})  # fmt: skip
    ids = {"north", "south"}
    gateway = start_gateway(codex, env=podman_runtime_env)
    client = gateway.uds_client()
    for model, running, loser in (("tiny-north", "north", None), ("tiny-south", "south", "north"),
                                  ("tiny-north", "north", "south")):  # fmt: skip
        chat(client, model)
        assert containers(ids) == {f"soulstone-{running}": "running"}, f"after {model}"
        if loser is not None:
            assert f"soulstone-{loser}" not in containers(ids)
    status = gateway.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    records = {r["id"]: r for r in json.loads(status.stdout)["soulstones"]}
    assert records["north"]["state"] == "running"
    assert records["north"]["container"] == "soulstone-north"
    assert records["north"]["container_state"] == "running"
    assert records["south"]["container_state"] == "absent"
    table = gateway.cli("status")
    assert "soulstone-north (running)" in table.stdout

    down = gateway.cli("down")
    assert down.returncode == 0 and "stopped north" in down.stdout, down.stderr
    assert containers(ids) == {}
    assert keepers(gateway.state) == []

    chat(client, "tiny-south")
    assert containers(ids) == {"soulstone-south": "running"}
    assert gateway.stop() == 0
    assert containers(ids) == {}
    assert keepers(gateway.state) == []


def netns_listeners(pid: int) -> list[str]:
    """Listening TCP sockets in the network namespace of a process (/proc/PID/net/tcp*)."""
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                found.append(f"{table} {fields[1]}")
    return found


def netns_interfaces(pid: int) -> list[str]:
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


def audit(gateway_env: dict[str, str], codex: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "--codex", str(codex), "audit", "--strict"],
                          env=gateway_env, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def test_strict_mode_runs_offline_containers_on_sockets(
    tmp_path: Path, start_gateway: StartGateway, llama_image: LlamaImage,
    podman_runtime_env: dict[str, str],
) -> None:  # fmt: skip
    # Declared on TCP ports: strict mode moves them onto sockets, with no network at all.
    codex = write(tmp_path / "codex", {"c.toml": "\n".join([
        container_table(llama_image, "east", "tiny-east", "e", f"port = {free_port()}"),
        container_table(llama_image, "west", "tiny-west", "w", f"port = {free_port()}"),
    ])})  # fmt: skip
    hf = tmp_path / "hf"
    (hf / "hub").mkdir(parents=True, mode=0o700)
    env = {**podman_runtime_env, "HF_HOME": str(hf)}
    gateway = start_gateway(codex, "--strict", tcp=False, env=env)
    client = gateway.uds_client()
    chat(client, "tiny-west")
    chat(client, "tiny-east")  # a swap, offline too
    assert containers({"east", "west"}) == {"soulstone-east": "running"}
    inspected = json.loads(podman({}, "container", "inspect", "soulstone-east"))[0]
    assert inspected["HostConfig"]["NetworkMode"] == "none"
    pid = inspected["State"]["Pid"]
    assert netns_interfaces(pid) == ["lo"]
    assert netns_listeners(pid) == []
    engines = Path(gateway.env["XDG_RUNTIME_DIR"]) / "soulstone" / "engines"
    assert (engines / "soulstone-east.sock").is_socket()
    assert engines.stat().st_mode & 0o777 == 0o700
    status = {r["id"]: r for r in json.loads(gateway.cli("status", "--json").stdout)["soulstones"]}
    assert status["east"]["socket"] == str(engines / "soulstone-east.sock")
    assert status["east"]["port"] is None
    clean = audit(gateway.env, codex)
    assert clean.returncode == 0, clean.stderr
    assert "no findings (strict)" in clean.stdout

    # The same audit fails for a container engine that listens on TCP in its own network.
    port = free_port()
    open_codex = write(tmp_path / "open", {"o.toml": container_table(
        llama_image, "open", "tiny-open", "o", f"port = {port}", "port_expose = true",
    ).replace('"0.0.0.0"', f'"0.0.0.0", "--port", "{port}"')})  # fmt: skip
    opened = start_gateway(open_codex, tcp=False, env=env)
    chat(opened.uds_client(), "tiny-open")
    found = audit(opened.env, open_codex)
    assert found.returncode == 1
    assert "engine open (container soulstone-open) listens on TCP" in found.stderr
    assert "has the network interfaces eth0" in found.stderr


def test_strict_mode_refuses_an_engine_it_cannot_put_on_a_socket(
    tmp_path: Path, podman_runtime_env: dict[str, str], llama_image: LlamaImage
) -> None:
    table = (
        f'[odd]\nengine = "generic"\nruntime = "podman"\nimage = "{llama_image.name}"\n'
        f'exec = ["/bin/busybox", "httpd", "-f"]\nport = {free_port()}\nmodels = ["x"]\n'
    )
    codex = write(tmp_path / "codex", {"odd.toml": table})
    env = {**os.environ, **podman_runtime_env, "XDG_RUNTIME_DIR": str(tmp_path / "run"),
           "XDG_STATE_HOME": str(tmp_path / "state")}  # fmt: skip
    refused = subprocess.run([str(SCRIPT), "--codex", str(codex), "serve", "--strict"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert refused.returncode != 0
    assert f"{codex / 'odd.toml'}: [odd] engine: strict mode serves engines on Unix sockets" in (
        refused.stderr
    )


def cli_env(tmp_path: Path, podman_runtime_env: dict[str, str]) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SOULSTONE_"))}
    return environ | podman_runtime_env | {
        "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "SOULSTONE_TEST_SESSION": os.environ.get("SOULSTONE_TEST_SESSION", ""),
    }  # fmt: skip


def test_a_container_that_exits_at_once_fails_up_and_a_killed_one_shows_its_exit_code(
    tmp_path: Path, short_tmp: Path, llama_image: LlamaImage, podman_runtime_env: dict[str, str]
) -> None:
    codex = write(tmp_path / "codex", {"c.toml": "\n".join([
        container_table(llama_image, "broken", "b", "b", f'socket = "{short_tmp}/b.sock"',
                        model_file="missing.gguf"),
        container_table(llama_image, "fine", "f", "f", f'socket = "{short_tmp}/f.sock"'),
    ])})  # fmt: skip
    env = cli_env(tmp_path, podman_runtime_env)
    state = StateFolder(tmp_path / "state" / "soulstone")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), "--codex", str(codex), *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip

    try:
        broken = cli("up", "broken")
        assert broken.returncode == 1
        assert "broken: exited before it was healthy" in broken.stderr
        assert "missing.gguf" in broken.stderr  # llama-server's own words, from the container
        assert containers({"broken"}) == {}

        assert cli("up", "fine").returncode == 0
        podman({}, "kill", "--signal", "KILL", "soulstone-fine")
        deadline = time.monotonic() + 60
        while True:
            record = json.loads(cli("status", "--json").stdout)["soulstones"]
            fine = next(r for r in record if r["id"] == "fine")
            if fine["state"] == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert fine["state"] == "failed" and fine["exit_code"] == 137, fine
        assert fine["container_state"] == "absent"
        assert "failed (exit 137)" in cli("status").stdout
        assert keepers(state) == []
    finally:
        cli("down")
        kill_recorded(state)
    assert containers({"broken", "fine"}) == {}


def test_the_podman_runtime_runs_the_generated_exec_start(
    tmp_path: Path, short_tmp: Path, llama_image: LlamaImage, podman_runtime_env: dict[str, str]
) -> None:
    codex_folder = write(tmp_path / "codex", {"c.toml": container_table(
        llama_image, "same", "s", "s", f'socket = "{short_tmp}/s.sock"'
    )})  # fmt: skip
    env = cli_env(tmp_path, podman_runtime_env)
    state = StateFolder(tmp_path / "state" / "soulstone")
    # The unit `soulstone forge` writes, through the real generator, read back independently.
    units = tmp_path / "units"
    forged = subprocess.run([str(SCRIPT), "--codex", str(codex_folder), "forge", "--output",
                             str(units)], env=env, capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert forged.returncode == 0, forged.stderr
    soulstone: Soulstone = load(codex_folder, PODMAN_ONLY).soulstones[0]
    generator = Path(podman_runtime_env["SOULSTONE_QUADLET"])
    service = generate_service("soulstone-same.container",
                               (units / "soulstone-same.container").read_text(), generator,
                               tmp_path / "generated")  # fmt: skip
    [line] = [value for key, value in service_settings(service) if key == "ExecStart"]
    expected = exec_command(line, specifier_table(specifiers(soulstone, env))).argv
    unit, _, _ = container_unit(soulstone, [soulstone], ForgeOptions())
    assert unit is not None and unit.text == (units / "soulstone-same.container").read_text()
    try:
        up = subprocess.run([str(SCRIPT), "--codex", str(codex_folder), "up", "same"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert up.returncode == 0, up.stderr
        kept = read_json(state.keeper("same"))
        assert kept is not None
        running = Path(f"/proc/{kept['pid']}/cmdline").read_bytes().split(b"\0")[:-1]
        ran = tuple(word.decode() for word in running)
        assert ran == outside_systemd(expected, qualified_image(llama_image.name))
        # ... and what changed is only systemd's part of `podman run`, never the engine's.
        image_at = expected.index(qualified_image(llama_image.name))
        assert ran[ran.index(qualified_image(llama_image.name)) :] == expected[image_at:]
        dropped = set(expected[:image_at]) - set(ran)
        assert {"-d", "--cgroups=split"} <= dropped
        assert all(w in ("-d", "--cgroups=split") or w.startswith(("--sdnotify=", "--health-"))
                   or expected[expected.index(w) - 1].startswith("--health-")
                   for w in dropped)  # fmt: skip
        assert "--sdnotify=ignore" in ran
    finally:
        subprocess.run([str(SCRIPT), "--codex", str(codex_folder), "down"], env=env,
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        kill_recorded(state)
    assert containers({"same"}) == {}
