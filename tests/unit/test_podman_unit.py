"""Reading generated services back (systemd's rules), podman run outside systemd, strict views."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import load, write
from soulstone.codex.facts import HostFacts
from soulstone.errors import CodexError
from soulstone.forge.strict import strict_codex
from soulstone.runtimes.base import StartError
from soulstone.runtimes.podman_unit import outside_systemd
from soulstone.runtimes.systemd_exec import (
    UnitCommandError,
    exec_command,
    service_settings,
    specifier_table,
)

PODMAN_ONLY = HostFacts(has_podman=True, has_quadlet_generator=True)
VALUES = specifier_table({"t": "/run/user/7", "N": "soulstone-a", "n": "soulstone-a.service"})


def test_exec_lines_expand_specifiers_quotes_escapes_and_prefixes() -> None:
    stop = exec_command("-/usr/bin/podman rm -v -f -i --cidfile=%t/%N.cid", VALUES)
    assert stop.argv == ("/usr/bin/podman", "rm", "-v", "-f", "-i",
                         "--cidfile=/run/user/7/soulstone-a.cid")  # fmt: skip
    assert stop.ignore_failure
    start = exec_command('/usr/bin/podman run --health-cmd "curl -fsS x" a\\x20b 100%% $$HOME',
                         VALUES)  # fmt: skip
    assert start.argv == ("/usr/bin/podman", "run", "--health-cmd", "curl -fsS x", "a b",
                          "100%", "$HOME")  # fmt: skip
    assert not start.ignore_failure
    for bad in ("x %Z", "x $HOME", "x 'open", "x \\q"):
        with pytest.raises(UnitCommandError):
            exec_command(bad, VALUES)


def test_service_settings_read_one_section_with_continuations() -> None:
    text = ("[Unit]\nExecStart=no\n[Service]\n# comment\n"
            "ExecStartPre=/bin/a \\\n  b\nExecStart=/bin/c\n")  # fmt: skip
    assert service_settings(text) == [("ExecStartPre", "/bin/a    b"), ("ExecStart", "/bin/c")]


def test_podman_run_outside_systemd_changes_only_podman_options() -> None:
    generated = ("/usr/bin/podman", "run", "--name", "soulstone-a", "--cidfile=/r/a.cid",
                 "--replace", "--rm", "--cgroups=split", "--network", "none",
                 "--sdnotify=healthy", "-d", "--health-cmd", "curl -fsS x",
                 "--health-interval", "2s", "--health-on-failure=kill",
                 "docker.io/x/engine", "serve", "-d", "--health-cmd",
                 "--cgroups=split")  # fmt: skip
    assert outside_systemd(generated, "docker.io/x/engine") == (
        "/usr/bin/podman", "run", "--name", "soulstone-a", "--cidfile=/r/a.cid", "--replace",
        "--rm", "--network", "none", "--sdnotify=ignore",
        "docker.io/x/engine", "serve", "-d", "--health-cmd", "--cgroups=split",
    )  # fmt: skip
    with pytest.raises(StartError, match="does not name the image"):
        outside_systemd(generated, "docker.io/x/other")
    with pytest.raises(StartError, match="does not run `podman run`"):
        outside_systemd(("/usr/bin/docker", "run", "x"), "x")


def test_strict_view_moves_container_engines_onto_sockets(tmp_path: Path) -> None:
    write(tmp_path / "c", {"a.toml": (
        '[llama]\nimage = "x/llama"\nengine = "llamacpp"\nport = 8001\nport_expose = true\n'
        'exec = ["llama-server", "-m", "/m.gguf", "--port", "8001", "--host", "0.0.0.0"]\n'
        '[vllm]\nimage = "x/vllm"\nengine = "vllm"\nport = 8002\nexec = ["--model", "/m"]\n'
        '[plain]\nport = 8003\nexec = ["llama-server", "-m", "/m.gguf"]\n'
    )})  # fmt: skip
    codex = load(tmp_path / "c", PODMAN_ONLY)
    strict = {s.id: s for s in strict_codex(codex, Path("/run/user/7/soulstone")).soulstones}
    engines = "/run/user/7/soulstone/engines"
    assert strict["llama"].socket == f"{engines}/soulstone-llama.sock"
    assert strict["llama"].port is None and not strict["llama"].port_expose
    assert strict["llama"].argv == ("llama-server", "-m", "/m.gguf", "--host",
                                    f"{engines}/soulstone-llama.sock")  # fmt: skip
    assert strict["vllm"].argv == ("--model", "/m", "--uds", f"{engines}/soulstone-vllm.sock")
    assert strict["plain"] == codex.get("plain")  # process runtime: as declared

    write(tmp_path / "d", {"b.toml": '[odd]\nimage = "x/odd"\nport = 9\nexec = ["serve"]\n'})
    with pytest.raises(CodexError) as caught:
        strict_codex(load(tmp_path / "d", PODMAN_ONLY), Path("/run/user/7/soulstone"))
    [problem] = caught.value.problems
    assert (problem.table, problem.field) == ("odd", "engine")
    assert "strict mode serves engines on Unix sockets only" in problem.message
