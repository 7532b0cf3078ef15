"""Derived values: URIs, unit names, defaults, runtime choice, eviction sets, paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import NO_PODMAN, PODMAN_HOST, load, write
from soulstone.codex.facts import HostFacts
from soulstone.codex.models import Warmup
from soulstone.errors import UsageError
from soulstone.host import GENERATOR_PATHS, detect_host, find_generator
from soulstone.paths import Paths


def test_socket_uri_is_percent_encoded_and_defaults_resolve(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[g.a]\nsocket = "/run/user/1000/soul stone/a.sock"\n'
            'exec = "llama-server -m /m.gguf"\nmodels = ["m1", "m2"]\nttl = 300\n'
            '[g.a.env]\nA = "1"\n[g.a.health]\nstart_timeout = 30\n'
        },
    )
    [a] = load(tmp_path).soulstones
    assert a.uri == "http+unix://%2Frun%2Fuser%2F1000%2Fsoul%20stone%2Fa.sock/v1"
    assert a.unit == "soulstone-g-a"
    assert a.name == "a"
    assert a.models == ("m1", "m2")
    assert a.engine == "llamacpp"
    assert a.env == (("A", "1"),)
    assert (a.health.path, a.health.start_timeout, a.health.interval) == ("/health", 30, 2.0)
    assert a.ttl == 300
    assert a.summary()["socket"] == "/run/user/1000/soul stone/a.sock"


def test_runtime_choice(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[img]\nport = 1\nimage = "x/vllm"\nexec = ["--model", "m"]\n'
            '[cmd]\nport = 2\nexec = ["llama-server"]\n'
            '[pinned]\nport = 3\nimage = "x/y"\nexec = ["run"]\nruntime = "process"\n'
        },
    )
    on_podman = {s.id: s.runtime for s in load(tmp_path, PODMAN_HOST).soulstones}
    assert on_podman == {"img": "quadlet", "cmd": "process", "pinned": "process"}
    bare = {s.id: s.runtime for s in load(tmp_path, NO_PODMAN).soulstones}
    assert bare == {"img": "process", "cmd": "process", "pinned": "process"}
    forced = HostFacts(runtime_override="quadlet")
    assert load(tmp_path, forced).get("img").runtime == "quadlet"  # type: ignore[union-attr]
    # Podman (with its quadlet generator) but no user systemd: the podman runtime.
    alone = HostFacts(has_podman=True, has_quadlet_generator=True)
    assert {s.id: s.runtime for s in load(tmp_path, alone).soulstones} == {
        "img": "podman", "cmd": "process", "pinned": "process",
    }  # fmt: skip
    without_generator = HostFacts(has_podman=True)
    assert load(tmp_path, without_generator).get("img").runtime == "process"  # type: ignore[union-attr]
    overridden = HostFacts(has_podman=True, has_user_systemd=True, runtime_override="podman")
    assert load(tmp_path, overridden).get("img").runtime == "podman"  # type: ignore[union-attr]


def test_codex_lookups(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[g.a]\nport = 1\nexec = ["x"]\n[g.b]\nport = 2\nexec = ["x"]\n'})
    codex = load(tmp_path)
    assert codex.serving("b") is codex.get("g.b")
    assert codex.serving("nope") is None
    assert codex.get("nope") is None


def test_detect_host_runtime_override() -> None:
    assert detect_host({"SOULSTONE_DEFAULT_RUNTIME": "quadlet", "PATH": ""}).runtime_override == (
        "quadlet"
    )
    with pytest.raises(UsageError):
        detect_host({"SOULSTONE_DEFAULT_RUNTIME": "docker"})
    facts = detect_host({"PATH": "", "XDG_RUNTIME_DIR": "/nonexistent"})
    assert not facts.has_podman and not facts.has_user_systemd
    assert facts.container_runtime == "process"
    assert detect_host({"SOULSTONE_DEFAULT_RUNTIME": "podman"}).runtime_override == "podman"


def test_the_quadlet_generator_is_found_by_variable_then_where_podman_installs_it(
    tmp_path: Path,
) -> None:
    fake = tmp_path / "quadlet"
    fake.write_text("#!/bin/sh\n")
    if not any(os.access(path, os.X_OK) for path in GENERATOR_PATHS):
        assert find_generator({"SOULSTONE_QUADLET": str(fake)}) is None  # not executable
    fake.chmod(0o755)
    assert find_generator({"SOULSTONE_QUADLET": str(fake)}) == fake
    assert detect_host({"SOULSTONE_QUADLET": str(fake), "PATH": ""}).has_quadlet_generator


def test_paths_follow_xdg_and_ignore_relative_values() -> None:
    paths = Paths.from_env(
        {
            "HOME": "/h",
            "XDG_CONFIG_HOME": "/c",
            "XDG_CACHE_HOME": "relative",
            "XDG_RUNTIME_DIR": "/r",
        }
    )
    assert paths.codex == Path("/c/soulstone/soulstones")
    assert paths.cache == Path("/h/.cache/soulstone")
    assert paths.runtime == Path("/r/soulstone")
    assert paths.state == Path("/h/.local/state/soulstone")


def test_warmup_is_a_switch_or_a_table_with_defaults(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[on]\nport = 1\nexec = ["e"]\nwarmup = true\n'
                               '[off]\nport = 2\nexec = ["e"]\nwarmup = false\n'
                               '[none]\nport = 3\nexec = ["e"]\n'
                               '[told]\nport = 4\nexec = ["e"]\n[told.warmup]\nprompt = "Hi"\n'
                               '[both]\nport = 5\nexec = ["e"]\n'
                               'warmup = { prompt = "Yo", max_tokens = 8 }\n'})  # fmt: skip
    found = {s.id: s.warmup for s in load(tmp_path).soulstones}
    assert found == {"on": Warmup("Hello", 1), "off": None, "none": None,
                     "told": Warmup("Hi", 1), "both": Warmup("Yo", 8)}  # fmt: skip
