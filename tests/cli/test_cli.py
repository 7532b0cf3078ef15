"""The real `soulstone` console script, run as a subprocess: output and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import kill_recorded
from helpers import EXAMPLES, FAKE_ENGINE, free_port, write
from real_engines import llama_server
from soulstone.runtimes import procfs
from soulstone.runtimes.state import StateFolder

SCRIPT = Path(sys.executable).parent / "soulstone"
SOULSTONE_KEYS = {
    "id", "unit", "file", "groups", "engine", "runtime", "uri", "port", "socket", "models",
    "capabilities",
}  # fmt: skip
PROBLEM_KEYS = {"file", "table", "field", "message"}

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    """Run the console script in a private HOME/XDG environment; kill what it left."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOULSTONE_", "XDG_"))}
    env |= {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "SOULSTONE_DEFAULT_RUNTIME": "process",
        "COLUMNS": "200",
    }

    def invoke(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args],
            env=env | extra_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    yield invoke
    kill_recorded(StateFolder(tmp_path / "state" / "soulstone"))


def test_check_json_prints_the_contract_shape(run: Run) -> None:
    result = run("--codex", str(EXAMPLES), "check", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"soulstones", "conflicts", "warnings"}
    assert [s["id"] for s in document["soulstones"]] == [
        "eye", "flash", "logic.alpha", "logic.beta", "scribe",
    ]  # fmt: skip
    for soulstone in document["soulstones"]:
        assert set(soulstone) == SOULSTONE_KEYS
    alpha = document["soulstones"][2]
    assert alpha == {
        "id": "logic.alpha",
        "unit": "soulstone-logic-alpha",
        "file": str(EXAMPLES / "logic_cluster.toml"),
        "groups": ["logic"],
        "engine": "vllm",
        "runtime": "process",
        "uri": "http://localhost:8000/v1",
        "port": 8000,
        "socket": None,
        "models": ["alpha"],
        "capabilities": [],
    }
    assert document["conflicts"] == [
        ["eye", "flash"], ["eye", "logic.alpha"], ["eye", "logic.beta"],
        ["flash", "logic.alpha"], ["flash", "logic.beta"], ["flash", "scribe"],
        ["logic.alpha", "scribe"], ["logic.beta", "scribe"],
    ]  # fmt: skip
    for warning in document["warnings"]:
        assert set(warning) == PROBLEM_KEYS


def test_check_prints_a_table_and_the_conflict_pairs(run: Run) -> None:
    result = run("--codex", str(EXAMPLES), "check")
    assert result.returncode == 0, result.stderr
    for word in (
        "logic.alpha",
        "soulstone-logic-beta",
        "vision-ritual",
        "http://localhost:8781/v1",
    ):
        assert word in result.stdout
    assert "conflicts (8 pairs" in result.stdout
    assert "flash ⟷ logic.alpha" in result.stdout
    assert "warning:" in result.stderr


def test_invalid_codex_lists_every_error_on_stderr_with_exit_1(run: Run, tmp_path: Path) -> None:
    codex = write(
        tmp_path / "bad",
        {"a.toml": '[a]\nexec = ["x"]\nport = 70000\nprot = 1\n', "b.toml": "[b]\nport = \n"},
    )
    result = run("--codex", str(codex), "check")
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{codex / 'a.toml'}: [a] port:" in result.stderr
    assert f"{codex / 'a.toml'}: [a] prot: unknown key 'prot' (did you mean 'port'?)" in (
        result.stderr
    )
    assert f"{codex / 'b.toml'}: invalid TOML" in result.stderr
    assert "3 errors in the codex" in result.stderr


def test_check_shows_a_remote_as_remote(run: Run, tmp_path: Path) -> None:
    codex = write(tmp_path / "remote", {"r.toml": (
        '[far]\nremote = "https://gpu.example:8443/v1"\nkey_env = "FAR_KEY"\n'
        'models = "discover"\n'
        '[peer]\nremote = "http+unix://%2Frun%2Fb.sock/v1"\nmodels = ["big"]\ngroups = ["g"]\n'
    )})  # fmt: skip
    result = run("--codex", str(codex), "check", FAR_KEY="sk-never-shown")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines()
            if line.startswith("│ ")}  # fmt: skip
    far = rows["far"].split("│")
    assert [c.strip() for c in far[2:8]] == [
        "-", "remote", "generic", "remote", "https://gpu.example:8443/v1", "discovered at run time",
    ]  # fmt: skip
    peer = [c.strip() for c in rows["peer"].split("│")[2:8]]
    assert peer == ["-", "g", "generic", "remote", "http+unix://%2Frun%2Fb.sock/v1", "big"]
    assert "solitary" not in result.stdout
    assert "sk-never-shown" not in result.stdout + result.stderr
    document = json.loads(run("--codex", str(codex), "check", "--json").stdout)
    first = document["soulstones"][0]
    assert (first["remote"], first["discover"], first["tokenizer"]) == (
        "https://gpu.example:8443/v1", True, None)  # fmt: skip


def test_invalid_codex_json(run: Run, tmp_path: Path) -> None:
    codex = write(tmp_path / "bad", {"a.toml": '[a]\nexec = ["x"]\nport = 0\n'})
    result = run("--codex", str(codex), "check", "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert set(document) == {"errors", "warnings"}
    [error] = document["errors"]
    assert set(error) == PROBLEM_KEYS
    assert (error["file"], error["table"], error["field"]) == (str(codex / "a.toml"), "a", "port")


@pytest.mark.parametrize(
    "args",
    [["check", "--no-such-flag"], ["--codex", "/no/such/path", "check"], ["frobnicate"]],
)
def test_usage_errors_exit_2(run: Run, args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr


def test_codex_sources_in_order_flag_env_default(run: Run, tmp_path: Path) -> None:
    default = write(
        tmp_path / "config" / "soulstone" / "soulstones",
        {"d.toml": '[d]\nexec = ["x"]\nport = 1\n'},
    )
    from_env = write(tmp_path / "env", {"e.toml": '[e]\nexec = ["x"]\nport = 2\n'})
    from_flag = write(tmp_path / "flag", {"f.toml": '[f]\nexec = ["x"]\nport = 3\n'})
    extra = write(tmp_path / "extra", {"g.toml": '[g]\nexec = ["x"]\nport = 4\n'})

    def ids(*args: str, **env: str) -> list[str]:
        result = run(*args, "check", "--json", **env)
        assert result.returncode == 0, result.stderr
        return [s["id"] for s in json.loads(result.stdout)["soulstones"]]

    assert ids() == ["d"]
    assert ids(SOULSTONE_CODEX=str(from_env)) == ["e"]
    assert ids("--codex", str(from_flag), SOULSTONE_CODEX=str(from_env)) == ["f"]
    assert ids("--codex", str(from_flag), "--codex", str(extra / "g.toml")) == ["f", "g"]
    assert default.is_dir()


def test_no_codex_yet_points_to_init(run: Run) -> None:
    result = run("check")
    assert result.returncode == 1
    assert "soulstone init" in result.stderr


def test_init_writes_the_starter_codex_and_refuses_to_overwrite(run: Run, tmp_path: Path) -> None:
    first = run("init")
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "config" / "soulstone" / "soulstones"
    written = sorted(p.name for p in folder.glob("*.toml"))
    assert written == ["flash.toml", "logic_cluster.toml", "vision_eye.toml", "vision_scribe.toml"]
    assert all(p.read_text().lstrip().startswith("#") for p in folder.glob("*.toml"))
    before = {p: p.read_text() for p in folder.glob("*.toml")}
    second = run("init")
    assert second.returncode == 1
    assert "refusing to overwrite" in second.stderr
    assert {p: p.read_text() for p in folder.glob("*.toml")} == before
    assert run("check").returncode == 0


@pytest.mark.engine
def test_demo_runs_real_engines_through_the_gateway(run: Run, tmp_path: Path) -> None:
    binary = llama_server()  # built by scripts/build-llama-server (the demo would build it)
    cache = str(binary.parents[2])
    result = run("demo", SOULSTONE_BUILD_CACHE=cache)
    assert result.returncode == 0, result.stderr
    assert "tiny-north answered" in result.stdout
    assert "tiny-south answered" in result.stdout and "swapping the other out" in result.stdout
    assert "completion tokens" in result.stdout
    engines = tmp_path / "state" / "soulstone" / "demo" / "engines"
    for soulstone in ("north.tiny-north", "south.tiny-south"):
        kept = json.loads((engines / f"{soulstone}.keeper.json").read_text())
        assert kept["state"] == "stopped"
        assert procfs.group_members(kept["pgid"]) == []
    log = (tmp_path / "state" / "soulstone" / "demo" / "gateway.log").read_text()
    assert '"event": "listening"' in log and '"event": "stopped"' in log


def test_version(run: Run) -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("soulstone ")


def test_forge_dry_run_prints_each_unit_under_a_header(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "units"
    result = run("--codex", str(EXAMPLES), "forge", "--output", str(out), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not out.exists()
    for unit in ("soulstone-flash.container", "soulstone-gateway.socket"):
        assert f"# ==> {out / unit} (new) <==" in result.stdout
    assert "Conflicts=soulstone-eye.service" in result.stdout


def test_forge_writes_then_changes_nothing(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "units"
    first = run("--codex", str(EXAMPLES), "forge", "--output", str(out))
    assert first.returncode == 0, first.stderr
    assert "7 written, 0 unchanged, 0 removed" in first.stdout
    assert "skipped `systemctl --user daemon-reload`" in first.stderr
    second = run("--codex", str(EXAMPLES), "forge", "--output", str(out), "--no-reload")
    assert second.returncode == 0, second.stderr
    assert "0 written, 7 unchanged, 0 removed" in second.stdout
    service = (out / "soulstone-gateway.service").read_text()
    assert f"ExecStart={SCRIPT} serve" in service


def test_forge_defaults_to_the_user_quadlet_and_systemd_folders(run: Run, tmp_path: Path) -> None:
    result = run("--codex", str(EXAMPLES), "forge", "--no-reload")
    assert result.returncode == 0, result.stderr
    config = tmp_path / "config"
    assert (config / "containers" / "systemd" / "soulstone-flash.container").is_file()
    assert (config / "systemd" / "user" / "soulstone-gateway.socket").is_file()
    assert not (config / "containers" / "systemd" / "soulstone-gateway.socket").exists()


def test_forge_strict_refusal_names_file_table_and_field(run: Run, tmp_path: Path) -> None:
    codex = write(tmp_path / "codex", {"a.toml": '[s]\nimage = "lmsysorg/sglang"\nport = 30000\n'})
    result = run("--codex", str(codex), "forge", "--strict", "--output", str(tmp_path / "u"))
    assert result.returncode == 1
    assert f"{codex / 'a.toml'}: [s] engine: strict mode" in result.stderr
    assert not (tmp_path / "u").exists()


def test_forge_reloads_a_reachable_user_systemd(run: Run, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl-calls"
    stand_in = bin_dir / "systemctl"
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    stand_in.chmod(0o755)
    (tmp_path / "run" / "systemd").mkdir(parents=True)
    (tmp_path / "run" / "systemd" / "private").touch()
    path = f"{bin_dir}:{os.environ['PATH']}"
    result = run("--codex", str(EXAMPLES), "forge", "--output", str(tmp_path / "u"), PATH=path)
    assert result.returncode == 0, result.stderr
    assert calls.read_text() == "--user daemon-reload\n"
    again = run("--codex", str(EXAMPLES), "forge", "--output", str(tmp_path / "u"), PATH=path)
    assert again.returncode == 0
    assert calls.read_text() == "--user daemon-reload\n"  # nothing changed: no reload
    stand_in.write_text("#!/bin/sh\necho 'Failed to connect to bus' >&2\nexit 1\n")
    (tmp_path / "u" / "soulstone-flash.container").unlink()
    failed = run("--codex", str(EXAMPLES), "forge", "--output", str(tmp_path / "u"), PATH=path)
    assert failed.returncode == 1
    assert "Failed to connect to bus" in failed.stderr


def fake_codex(folder: Path) -> Path:
    engine = json.dumps([sys.executable, str(FAKE_ENGINE)])[1:-1]
    a, b, c = free_port(), free_port(), free_port()
    health = 'health = { path = "/health", start_timeout = 15, interval = 0.1 }'
    return write(
        folder,
        {
            "fake.toml": f"""
[pair.a]
exec = [{engine}, "--port", "{a}"]
port = {a}
{health}
[pair.b]
exec = [{engine}, "--port", "{b}"]
port = {b}
capabilities = ["ocr"]
{health}
[solo]
exec = [{engine}, "--port", "{c}"]
port = {c}
{health}
[broken]
exec = [{engine}, "--exit-at-once", "7"]
port = {free_port()}
{health}
"""
        },
    )


def test_up_status_logs_down_through_the_console_script(run: Run, tmp_path: Path) -> None:
    codex = str(fake_codex(tmp_path / "codex"))
    up = run("--codex", codex, "up", "pair")
    assert up.returncode == 0, up.stderr
    assert "pair.a is healthy" in up.stderr and "pair.b is up at" in up.stdout
    status = run("--codex", codex, "status", "--json")
    assert status.returncode == 0, status.stderr
    records = {r["id"]: r for r in json.loads(status.stdout)["soulstones"]}
    assert set(records["pair.a"]) == {
        "id", "state", "pid", "unit", "since", "port", "socket", "health", "exit_code",
    }  # fmt: skip
    assert (records["pair.a"]["state"], records["pair.a"]["health"]) == ("running", "healthy")
    assert records["solo"]["state"] == "stopped"
    table = run("--codex", codex, "status")
    assert "running" in table.stdout and "pair.b" in table.stdout
    dry = run("--codex", codex, "up", "solo", "--dry-run")
    assert dry.returncode == 0
    assert "would stop pair.a: solo conflicts with pair.a: solo is solitary" in dry.stdout
    assert "would start solo" in dry.stdout
    again = run("--codex", codex, "up", "--capability", "ocr")
    assert again.returncode == 0 and "already running" in again.stdout
    logs = run("--codex", codex, "logs", "pair.a")
    assert logs.returncode == 0 and "fake engine listening" in logs.stdout
    follow = subprocess.Popen(
        [str(SCRIPT), "--codex", codex, "logs", "pair.a", "-f"], env=os.environ | {
            "XDG_STATE_HOME": str(tmp_path / "state"), "SOULSTONE_DEFAULT_RUNTIME": "process"},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follow.stdout is not None
    try:
        assert "fake engine listening" in "".join(follow.stdout.readline() for _ in range(3))
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 0
    one = run("--codex", codex, "down", "pair.b")
    assert one.returncode == 0 and "stopped pair.b" in one.stdout
    down = run("--codex", codex, "down")
    assert down.returncode == 0 and "stopped pair.a" in down.stdout
    after = json.loads(run("--codex", codex, "status", "--json").stdout)
    assert {r["state"] for r in after["soulstones"]} == {"stopped"}


def test_up_failure_exits_1_with_the_log_tail(run: Run, tmp_path: Path) -> None:
    codex = str(fake_codex(tmp_path / "codex"))
    result = run("--codex", codex, "up", "broken")
    assert result.returncode == 1
    assert "broken: exited before it was healthy (exit 7)" in result.stderr
    assert "exiting at once" in result.stderr
    status = json.loads(run("--codex", codex, "status", "--json").stdout)
    broken = next(r for r in status["soulstones"] if r["id"] == "broken")
    assert (broken["state"], broken["exit_code"]) == ("failed", 7)


@pytest.mark.parametrize(
    "args", [["up", "nope"], ["up"], ["up", "solo", "--capability", "x"], ["logs", "pair"]]
)
def test_engine_command_usage_errors_exit_2(run: Run, tmp_path: Path, args: list[str]) -> None:
    result = run("--codex", str(fake_codex(tmp_path / "codex")), *args)
    assert result.returncode == 2, result.stderr
