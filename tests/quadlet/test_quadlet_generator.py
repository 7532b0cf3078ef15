"""Every forged unit passes Podman's own quadlet generator and systemd-analyze verify.

Needs the quadlet binary that scripts/get-quadlet fetches, /usr/bin/podman and
systemd-analyze. Skipped only when they are truly absent, and never in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from container_images import quadlet_generator
from helpers import EXAMPLES, load, write
from soulstone.codex.engines import (
    derived_arguments,
    kept_argv,
    lora_environment,
    serve_on_socket,
)
from soulstone.codex.models import Codex, Soulstone
from soulstone.forge.units import (
    STRICT_CONTAINER_DIR,
    ForgeOptions,
    forge_units,
    qualified_image,
    strict_socket_name,
)
from systemd_words import exec_argv, split_words

pytestmark = pytest.mark.quadlet

GATEWAY = (str(Path(sys.executable).parent / "soulstone"),)
LOADING = "Loading source unit file"


def _require(path: Path | str | None, what: str) -> Path:
    if path is not None and Path(path).exists():
        return Path(path)
    message = f"{what} is missing: run scripts/get-quadlet"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def quadlet() -> Path:
    """Podman's quadlet generator, as scripts/get-quadlet caches it."""
    _require(shutil.which("podman"), "/usr/bin/podman")
    _require(shutil.which("systemd-analyze"), "systemd-analyze")
    return _require(quadlet_generator(), "Podman's quadlet generator")


@dataclass
class Generated:
    codex: Codex
    options: ForgeOptions
    units: Path
    services: dict[str, str]  # unit name (no suffix) -> generated .service text


def generate(quadlet: Path, tmp: Path, codex: Codex, options: ForgeOptions) -> Generated:
    units_dir, services_dir, runtime = tmp / "units", tmp / "services", tmp / "run"
    for folder in (units_dir, services_dir, runtime):
        folder.mkdir(parents=True)
    forged, _ = forge_units(codex, options)
    for unit in forged:
        (units_dir / unit.name).write_text(unit.text)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "XDG_RUNTIME_DIR": str(runtime),
           "QUADLET_UNIT_DIRS": str(units_dir)}  # fmt: skip
    dry = subprocess.run(
        [quadlet, "-dryrun", "-user"], env=env, capture_output=True, text=True, check=False
    )
    assert dry.returncode == 0, dry.stderr
    errors = [line for line in dry.stderr.splitlines() if LOADING not in line]
    assert errors == [], errors
    real = subprocess.run(
        [quadlet, "-user", "-no-kmsg-log", str(services_dir)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert real.returncode == 0, real.stderr
    services = {p.stem: p.read_text() for p in services_dir.glob("*.service")}
    expected = {s.unit for s in codex.soulstones if s.image}
    assert set(services) == expected
    return Generated(codex, options, units_dir, services)


def verify(unit_files: list[Path]) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, unit_files)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr


def expected_argv(soulstone: Soulstone, options: ForgeOptions) -> tuple[str, ...]:
    if options.strict and soulstone.socket is None:
        socket = f"{STRICT_CONTAINER_DIR}/{strict_socket_name(soulstone)}"
        rewritten = serve_on_socket(soulstone.engine, kept_argv(soulstone), socket)
        assert rewritten is not None
        return (*rewritten, *derived_arguments(soulstone))
    return (*kept_argv(soulstone), *derived_arguments(soulstone))


def environment_of(service_text: str) -> dict[str, str]:
    words = [word for line in service_text.splitlines() if line.startswith("Environment=")
             for word in split_words(line[len("Environment=") :])]  # fmt: skip
    return dict(word.split("=", 1) for word in words)


def conflicts_of(service_text: str) -> set[str]:
    return {
        word
        for line in service_text.splitlines()
        if line.startswith("Conflicts=")
        for word in line[len("Conflicts=") :].split()
    }


def check_round_trips(generated: Generated, tmp: Path) -> None:
    codex = generated.codex
    service_dir = tmp / "verify"
    service_dir.mkdir()
    for soulstone in codex.soulstones:
        if not soulstone.image:
            continue
        text = generated.services[soulstone.unit]
        path = service_dir / f"{soulstone.unit}.service"
        path.write_text(text)
        verify([path])
        [exec_start] = [line[len("ExecStart=") :] for line in text.splitlines()
                        if line.startswith("ExecStart=")]  # fmt: skip
        argv = exec_argv(exec_start)
        assert argv[:2] == ["/usr/bin/podman", "run"]
        image_at = argv.index(qualified_image(soulstone.image))
        assert tuple(argv[image_at + 1 :]) == expected_argv(soulstone, generated.options)
        assert environment_of(text).items() >= dict(lora_environment(soulstone)).items()
    # Conflicts= in the generated services is the codex's graph, in both directions.
    graph = {
        (a, b)
        for a, b in codex.conflicts
        if codex.get(a).image and codex.get(b).image  # type: ignore[union-attr]
    }
    found = {
        (first.id, second.id)
        for first in codex.soulstones
        for second in codex.soulstones
        if first.image and second.image and first.id < second.id
        and f"{second.unit}.service" in conflicts_of(generated.services[first.unit])
        and f"{first.unit}.service" in conflicts_of(generated.services[second.unit])
    }  # fmt: skip
    one_way = {
        (first.id, second.id)
        for first in codex.soulstones
        for second in codex.soulstones
        if first.image and second.image
        and f"{second.unit}.service" in conflicts_of(generated.services[first.unit])
    }  # fmt: skip
    assert found == graph
    assert one_way == graph | {(b, a) for a, b in graph}
    gateway = [generated.units / "soulstone-gateway.service",
               generated.units / "soulstone-gateway.socket"]  # fmt: skip
    verify(gateway)


AWKWARD = {
    "awkward.toml": """
[weird]
image = "localhost/engine:1"
port = 9100
port_expose = true
engine = "llamacpp"
exec = ["llama-server", "100%", "%n", "$HOME", "${X}", "$$", "a b", "it's", 'say "hi"',
        "back\\\\slash", "tab\\there", "new\\nline", "ünïcødé ✓", "😀", "-", "'", "\\\\", "a;b"]
env = { A = "b c", P = "100%", D = "$HOME", Q = 'q"uote', U = "ü" }
volumes = ["/data/100%:/d", "/opt/$x:/x:ro"]
description = "100% awkward $HOME"

[shell]
image = "docker.io/library/python:3.12"
port = 9101
exec = '''
python3 -c "print('%d %s' % (1, '$HOME'))"
  --flag=a\\ b 'single $x' \\
  trailing
'''
""",
}

MANY_GROUPS = {
    "many.toml": "".join(
        f'[{name}]\nimage = "x/generic"\nport = {9200 + i}\ngroups = {groups!r}\n'
        f'exec = ["serve", "--id", "{name}"]\n'
        for i, (name, groups) in enumerate(
            [
                ("a", ["g1"]), ("b", ["g1", "g2"]), ("c", ["g2", "g3"]), ("d", ["g3"]),
                ("e", ["g4"]), ("f", ["g1", "g4", "g5"]), ("g", []), ("h", ["g5"]),
            ]
        )
    ).replace("'", '"'),
}  # fmt: skip

STRICT_CODEX = {
    "strict.toml": """
[v]
image = "vllm/vllm-openai"
port = 8000
port_expose = true
exec = ["--model", "/m", "--host", "0.0.0.0", "--port=8000", "--gpu-memory-utilization", "0.4"]

[l]
image = "ghcr.io/ggml-org/llama.cpp:server"
port = 8001
exec = ["-m", "/models/x.gguf", "--port", "8001"]

[s]
image = "x/vllm"
socket = "/run/user/1000/soulstone/s.sock"
exec = ["--uds", "/run/user/1000/soulstone/s.sock"]
""",
}

# The `lora` table is the one declaration: exec's contradicting LoRA options and
# env's variable give way to the derived ones, in the generated service too.
LORA_CODEX = {
    "lora.toml": """
[adapted]
image = "vllm/vllm-openai"
port = 8000
port_expose = true
exec = ["--model", "/m", "--max-loras", "7", "--no-enable-lora", "--gpu-memory-utilization", "0.4"]
env = { VLLM_ALLOW_RUNTIME_LORA_UPDATING = "False", HF_HOME = "/hf" }
lora = { max_loras = 2, max_lora_rank = 32, max_cpu_loras = 4 }
""",
}


@pytest.mark.parametrize(
    ("files", "strict"),
    [(None, False), (AWKWARD, False), (MANY_GROUPS, False), (STRICT_CODEX, True),
     (LORA_CODEX, False), (LORA_CODEX, True)],
    ids=["reference-examples", "awkward", "many-groups", "strict", "lora", "lora-strict"],
)  # fmt: skip
def test_units_pass_quadlet_and_systemd_verify(
    quadlet: Path, tmp_path: Path, files: dict[str, str] | None, strict: bool
) -> None:
    folder = EXAMPLES if files is None else write(tmp_path / "codex", files)
    codex = load(folder)
    options = ForgeOptions(strict=strict, gateway_command=GATEWAY)
    generated = generate(quadlet, tmp_path / "gen", codex, options)
    check_round_trips(generated, tmp_path)


def test_awkward_exec_really_is_awkward(tmp_path: Path) -> None:
    codex = load(write(tmp_path, AWKWARD))
    weird = codex.get("weird")
    assert weird is not None
    assert {"100%", "%n", "$HOME", "${X}", "$$", "a b", 'say "hi"', "back\\slash"} <= set(
        weird.argv
    )
    shell = codex.get("shell")
    assert shell is not None
    assert shell.argv == (
        "python3", "-c", "print('%d %s' % (1, '$HOME'))", "--flag=a b", "single $x", "trailing",
    )  # fmt: skip


def test_the_lora_table_reaches_the_generated_service(quadlet: Path, tmp_path: Path) -> None:
    codex = load(write(tmp_path / "codex", LORA_CODEX))
    generated = generate(quadlet, tmp_path / "gen", codex, ForgeOptions(gateway_command=GATEWAY))
    text = generated.services["soulstone-adapted"]
    [exec_start] = [line[len("ExecStart=") :] for line in text.splitlines()
                    if line.startswith("ExecStart=")]  # fmt: skip
    argv = exec_argv(exec_start)
    engine = argv[argv.index("docker.io/vllm/vllm-openai") + 1 :]
    assert engine[-7:] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "32",
                           "--max-cpu-loras", "4"]  # fmt: skip
    assert "7" not in engine and "--no-enable-lora" not in engine
    assert environment_of(text)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert environment_of(text)["HF_HOME"] == "/hf"
