"""Forged unit text: field mapping, quoting, strict mode, refusals, golden files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import EXAMPLES, load, write
from soulstone.codex.models import Codex
from soulstone.errors import CodexError
from soulstone.forge.quoting import command_line
from soulstone.forge.units import ForgeOptions, UnitFile, forge_units, qualified_image
from systemd_words import exec_argv, split_words

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "forge"
OPTIONS = ForgeOptions(gateway_command=("/usr/bin/soulstone",))
STRICT = ForgeOptions(strict=True, gateway_command=("/usr/bin/soulstone",))


def units(codex: Codex, options: ForgeOptions = OPTIONS) -> dict[str, str]:
    found, _warnings = forge_units(codex, options)
    return {unit.name: unit.text for unit in found}


def settings_of(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("vllm/vllm-openai", "docker.io/vllm/vllm-openai"),
        ("busybox", "docker.io/library/busybox"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("lmsysorg/sglang:latest", "docker.io/lmsysorg/sglang:latest"),
        ("ghcr.io/ggerganov/llama.cpp:server", "ghcr.io/ggerganov/llama.cpp:server"),
        ("localhost/engine", "localhost/engine"),
        ("registry:5000/x", "registry:5000/x"),
    ],
)
def test_short_image_names_are_qualified(image: str, expected: str) -> None:
    assert qualified_image(image) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=6))
def test_command_lines_read_back_as_the_same_words(words: list[str]) -> None:
    assert exec_argv(command_line(words)) == words


def test_reference_examples_match_the_golden_files() -> None:
    forged = units(load(EXAMPLES))
    if os.environ.get("SOULSTONE_UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.iterdir():
            old.unlink()
        for name, text in forged.items():
            (GOLDEN / name).write_text(text)
    assert sorted(forged) == sorted(p.name for p in GOLDEN.iterdir())
    for name, text in forged.items():
        assert text == (GOLDEN / name).read_text(), f"{name} differs from its golden file"


def test_forge_is_deterministic() -> None:
    assert units(load(EXAMPLES)) == units(load(EXAMPLES))


def test_conflicts_and_after_name_every_conflicting_service() -> None:
    codex = load(EXAMPLES)
    forged = units(codex)
    for soulstone in codex.soulstones:
        text = forged[f"{soulstone.unit}.container"]
        [conflicts] = settings_of(text, "Conflicts")
        [after] = settings_of(text, "After")
        expected = {
            f"{codex.get(b if a == soulstone.id else a).unit}.service"  # type: ignore[union-attr]
            for a, b in codex.conflicts
            if soulstone.id in (a, b)
        }
        assert set(conflicts.split()) == expected == set(after.split())


def test_field_mapping(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[g.a]\nimage = "vllm/vllm-openai:v1"\nport = 8000\nport_expose = true\n'
            'exec = ["--model", "/m", "--gpu-memory-utilization", "0.5"]\n'
            'volumes = ["/mnt/m:/m:ro,z"]\nenv = { HF_HOME = "/cache", MODE = "a b" }\n'
            'capabilities = ["ocr"]\ngroups = ["h"]\n'
            "health = { start_timeout = 120, interval = 0.5 }\n"
            '[b]\nimage = "x/llama.cpp:server"\nport = 8001\nexec = ["-m", "/m.gguf"]\n'
            "devices = []\n"
            '[c]\nimage = "x/generic"\nport = 8002\ndevices = ["/dev/dri"]\n'
        },
    )
    forged = units(load(tmp_path))
    a = forged["soulstone-g-a.container"]
    assert settings_of(a, "Image") == ["docker.io/vllm/vllm-openai:v1"]
    assert settings_of(a, "ContainerName") == ["soulstone-g-a"]
    assert settings_of(a, "PublishPort") == ["127.0.0.1:8000:8000"]
    assert settings_of(a, "Volume") == ["/mnt/m:/m:ro,z"]
    assert settings_of(a, "Environment") == ["HF_HOME=/cache", '"MODE=a b"']
    assert settings_of(a, "AddDevice") == ["nvidia.com/gpu=all"]
    assert settings_of(a, "Label") == [
        "soulstone.id=g.a", "soulstone.engine=vllm", "soulstone.groups=g,h",
        "soulstone.capabilities=ocr",
    ]  # fmt: skip
    [health] = settings_of(a, "HealthCmd")
    assert "http://127.0.0.1:8000/health" in health and health.startswith("python3 -c")
    assert settings_of(a, "HealthInterval") == ["500ms"]
    assert settings_of(a, "HealthStartPeriod") == ["120s"]
    assert settings_of(a, "Notify") == ["healthy"]
    assert settings_of(a, "Restart") == ["on-failure"]
    assert settings_of(a, "TimeoutStartSec") == ["900s"]
    assert split_words(settings_of(a, "Exec")[0]) == [
        "--model", "/m", "--gpu-memory-utilization", "0.5",
    ]  # fmt: skip
    b = forged["soulstone-b.container"]
    assert settings_of(b, "AddDevice") == []
    assert settings_of(b, "PublishPort") == []
    [curl] = settings_of(b, "HealthCmd")
    assert curl.startswith("curl ") and "http://127.0.0.1:8001/health" in curl
    c = forged["soulstone-c.container"]
    assert settings_of(c, "AddDevice") == ["/dev/dri"]
    assert settings_of(c, "Exec") == []
    assert "[Install]" not in a  # engines start on demand, never all at login
    assert set(forged) == {
        "soulstone-g-a.container", "soulstone-b.container", "soulstone-c.container",
        "soulstone-gateway.service", "soulstone-gateway.socket",
    }  # fmt: skip


def test_soulstones_without_an_image_get_no_unit(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[a]\nport = 1\nexec = ["llama-server"]\n'})
    assert set(units(load(tmp_path))) == {"soulstone-gateway.service", "soulstone-gateway.socket"}


def test_unpublished_ports_are_warned_about(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[a]\nport = 1\nimage = "x/y"\n'})
    _units, warnings = forge_units(load(tmp_path), OPTIONS)
    assert [(w.table, w.field) for w in warnings] == [("a", "port_expose")]


def test_strict_mode_serves_engines_on_sockets(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[v]\nimage = "vllm/vllm-openai"\nport = 8000\nport_expose = true\n'
            'exec = ["--model", "/m", "--host", "0.0.0.0", "--port=8000"]\n'
            '[l]\nimage = "ghcr.io/ggml-org/llama.cpp:server"\nport = 8001\n'
            'exec = ["-m", "/m.gguf", "--port", "8001"]\n'
            '[s]\nimage = "x/vllm"\nsocket = "/run/user/1000/soulstone/s.sock"\n'
            'exec = ["--uds", "/run/user/1000/soulstone/s.sock"]\n'
        },
    )
    forged = units(load(tmp_path), STRICT)
    v = forged["soulstone-v.container"]
    assert settings_of(v, "Network") == ["none"]
    assert settings_of(v, "PublishPort") == []
    assert split_words(settings_of(v, "Exec")[0]) == [
        "--model", "/m", "--uds", "/run/soulstone/soulstone-v.sock",
    ]  # fmt: skip
    assert settings_of(v, "Volume") == ["%t/soulstone/engines:/run/soulstone:z"]
    assert "--unix-socket" not in settings_of(v, "HealthCmd")[0]
    assert "/run/soulstone/soulstone-v.sock" in settings_of(v, "HealthCmd")[0]
    assert settings_of(v, "ExecStartPre") == [
        "/usr/bin/mkdir -p -m 0700 %t/soulstone/engines",
        "/usr/bin/rm -f %t/soulstone/engines/soulstone-v.sock",
    ]
    l_unit = forged["soulstone-l.container"]
    assert split_words(settings_of(l_unit, "Exec")[0]) == [
        "-m", "/m.gguf", "--host", "/run/soulstone/soulstone-l.sock", "--alias", "l", "--metrics",
    ]  # fmt: skip
    assert "--unix-socket /run/soulstone/soulstone-l.sock" in settings_of(l_unit, "HealthCmd")[0]
    s = forged["soulstone-s.container"]
    assert settings_of(s, "Volume") == ["/run/user/1000/soulstone:/run/user/1000/soulstone"]
    assert split_words(settings_of(s, "Exec")[0]) == ["--uds", "/run/user/1000/soulstone/s.sock"]
    assert split_words(settings_of(forged["soulstone-gateway.service"], "ExecStart")[0]) == [
        "/usr/bin/soulstone", "serve", "--strict",
    ]  # fmt: skip


def test_llama_server_containers_get_the_served_name_as_alias(tmp_path: Path) -> None:
    image = 'image = "ghcr.io/ggml-org/llama.cpp:server"\nport_expose = true\n'
    write(tmp_path, {"a.toml": (
        f'[named]\n{image}port = 8001\nmodels = ["chat"]\nexec = ["-m", "/m.gguf"]\n'
        f'[own]\n{image}port = 8002\nexec = ["-m", "/m.gguf", "-a", "mine"]\n'
        f"[bare]\n{image}port = 8003\n"
    )})  # fmt: skip
    forged = units(load(tmp_path))
    exec_of = {name: settings_of(forged[f"soulstone-{name}.container"], "Exec")
               for name in ("named", "own", "bare")}  # fmt: skip
    assert split_words(exec_of["named"][0]) == ["-m", "/m.gguf", "--alias", "chat", "--metrics"]
    assert split_words(exec_of["own"][0]) == ["-m", "/m.gguf", "-a", "mine", "--metrics"]
    assert exec_of["bare"] == []  # the image's own command runs unchanged


def test_strict_mode_refuses_engines_that_cannot_serve_on_a_socket(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[s]\nimage = "lmsysorg/sglang"\nport = 30000\nexec = ["x"]\n'})
    with pytest.raises(CodexError) as caught:
        units(load(tmp_path), STRICT)
    [problem] = caught.value.problems
    assert (problem.table, problem.field) == ("s", "engine")
    assert "sglang" in problem.message


def test_forge_refuses_what_quadlet_cannot_carry(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[e]\nimage = "x/y"\nport = 1\nexec = ["a", "", "b"]\n'
            '[s]\nimage = "x/y"\nport = 2\nexec = ["a", ";", "b"]\n'
            '[v]\nimage = "x/y"\nport = 3\nvolumes = ["/my models:/m"]\n'
        },
    )
    with pytest.raises(CodexError) as caught:
        units(load(tmp_path))
    where = {(p.table, p.field) for p in caught.value.problems}
    assert where == {("e", "exec"), ("s", "exec"), ("v", "volumes")}


def test_gateway_units(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[a]\nport = 1\nexec = ["x"]\n'})
    found, _ = forge_units(load(tmp_path), OPTIONS)
    by_name: dict[str, UnitFile] = {u.name: u for u in found}
    socket = by_name["soulstone-gateway.socket"].text
    assert settings_of(socket, "ListenStream") == ["%t/soulstone/api.sock"]
    assert settings_of(socket, "SocketMode") == ["0660"]
    assert settings_of(socket, "DirectoryMode") == ["0700"]
    service = by_name["soulstone-gateway.service"].text
    assert settings_of(service, "ExecStart") == ["/usr/bin/soulstone serve"]
    assert settings_of(service, "Requires") == ["soulstone-gateway.socket"]
