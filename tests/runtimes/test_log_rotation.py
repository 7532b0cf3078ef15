"""Engine logs are size-bounded: rotated while the engine runs, no line lost, newest kept."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import kill_recorded
from helpers import free_port, write
from soulstone.files import RotatingLog, rotated_name, tail_lines
from soulstone.runtimes.process import LogLimits, log_limits
from soulstone.runtimes.state import StateFolder

SCRIPT = Path(sys.executable).parent / "soulstone"
LINES = 1500
LINE = re.compile(r"line (\d{6}) x+")

# An engine that prints a lot, each line in two writes (reads of the pipe end mid-line),
# then serves its health check.
CHATTY = f"""
import http.server, sys
for number in range({LINES}):
    sys.stdout.write(f"line {{number:06d}} ")
    sys.stdout.flush()
    sys.stdout.write("x" * (number % 300 + 1) + "\\n")
    sys.stdout.flush()

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def files_of(path: Path, keep: int) -> list[Path]:
    """The log's files that exist, oldest first."""
    found = [rotated_name(path, n) for n in range(keep + 2, 0, -1)] + [path]
    return [p for p in found if p.exists()]


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.binary(max_size=90), max_size=40),
       limit=st.integers(1, 120), keep=st.integers(1, 4))  # fmt: skip
def test_a_rotating_log_keeps_the_newest_bytes_within_its_bounds(
    tmp_path_factory: pytest.TempPathFactory, pieces: list[bytes], limit: int, keep: int
) -> None:
    path = tmp_path_factory.mktemp("log") / "e.log"
    log = RotatingLog(path, limit, keep)
    for piece in pieces:
        log.write(piece)
    log.close()
    written = b"".join(pieces)
    found = files_of(path, keep)
    assert len(found) <= keep + 1 and not rotated_name(path, keep + 1).exists()
    kept = [p.read_bytes() for p in found]
    assert all(len(data) <= limit for data in kept)
    assert written.endswith(b"".join(kept))  # the newest bytes, in order, none lost between
    if not rotated_name(path, keep).exists():  # nothing dropped yet: every byte is there
        assert b"".join(kept) == written
    assert path.stat().st_mode & 0o777 == 0o600


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 29), max_size=60), keep=st.integers(1, 3))
def test_whole_lines_are_never_cut_by_a_rotation(
    tmp_path_factory: pytest.TempPathFactory, lengths: list[int], keep: int
) -> None:
    path = tmp_path_factory.mktemp("log") / "e.log"
    log = RotatingLog(path, 30, keep)
    for number, length in enumerate(lengths):
        log.write(b"%d" % (number % 10) * length + b"\n")
    log.close()
    for data in (p.read_bytes() for p in files_of(path, keep)):
        assert data.endswith(b"\n") or not data


def test_tail_lines_reaches_into_the_last_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "e.log"
    rotated_name(path, 1).write_text("one\ntwo\nthree\n")
    path.write_text("four\n")
    assert tail_lines(path, 3) == "two\nthree\nfour"
    assert tail_lines(path, 1) == "four"


def test_log_limits_come_from_the_environment_and_name_a_bad_variable() -> None:
    assert log_limits({}) == LogLimits(50 * 2**20, 3)
    found = log_limits({"SOULSTONE_ENGINE_LOG_MAX_BYTES": "8K", "SOULSTONE_ENGINE_LOG_KEEP": "5"})
    assert found == LogLimits(8192, 5)
    assert log_limits({"SOULSTONE_ENGINE_LOG_MAX_BYTES": "2MiB"}).max_bytes == 2 * 2**20
    for name, value in (("SOULSTONE_ENGINE_LOG_MAX_BYTES", "lots"),
                        ("SOULSTONE_ENGINE_LOG_MAX_BYTES", "0"),
                        ("SOULSTONE_ENGINE_LOG_KEEP", "0")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name}='{value}'"):
            log_limits({name: value})


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private XDG environment for the console script, engine logs rotated at 8 KiB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOULSTONE_", "XDG_"))}
    env |= {
        "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_STATE_HOME": str(tmp_path / "state"),
        "SOULSTONE_DEFAULT_RUNTIME": "process",
        "SOULSTONE_ENGINE_LOG_MAX_BYTES": "8K", "SOULSTONE_ENGINE_LOG_KEEP": "3",
    }  # fmt: skip
    yield env
    kill_recorded(StateFolder(tmp_path / "state" / "soulstone"))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


@pytest.mark.parametrize("keep", [3, 60])
def test_a_chatty_engine_leaves_bounded_files_and_every_newest_line(
    tmp_path: Path, cli_env: dict[str, str], keep: int
) -> None:
    """With 3 files kept the oldest are dropped; with 60, all (about 20) show every boundary."""
    cli_env = cli_env | {"SOULSTONE_ENGINE_LOG_KEEP": str(keep)}
    engine = tmp_path / "chatty.py"
    engine.write_text(CHATTY)
    port = free_port()
    codex = str(write(tmp_path / "codex", {"chatty.toml": f"""
[chatty]
exec = {json.dumps([sys.executable, str(engine), str(port)])}
port = {port}
health = {{ path = "/", start_timeout = 30, interval = 0.05 }}
"""}))  # fmt: skip
    up = cli(cli_env, "--codex", codex, "up", "chatty")
    assert up.returncode == 0, up.stderr
    down = cli(cli_env, "--codex", codex, "down", "chatty")
    assert down.returncode == 0, down.stderr  # the keeper wrote every line before it ended
    path = tmp_path / "state" / "soulstone" / "logs" / "chatty.log"
    found = files_of(path, keep)
    assert found[-1] == path and not rotated_name(path, keep + 1).exists()
    assert len(found) == 4 if keep == 3 else len(found) > 15, found  # .4 dropped; or all kept
    contents = [p.read_text() for p in found]
    assert all(len(p.read_bytes()) <= 8192 for p in found)
    assert all(text.endswith("\n") for text in contents)  # rotations fall between lines
    lines = "".join(contents).splitlines()
    numbers = [int(m[1]) for line in lines if (m := LINE.fullmatch(line))]
    assert numbers[-1] == LINES - 1 and numbers == list(range(numbers[0], LINES))  # no gap
    assert len(numbers) > 90 and (keep == 3 or numbers[0] == 0)  # 4 files of 8 KiB; or all
    assert "engine ended" in lines[-1]
    logs = cli(cli_env, "--codex", codex, "logs", "chatty", "-n", "2")
    assert logs.returncode == 0, logs.stderr
    newest = logs.stdout.splitlines()
    assert LINE.fullmatch(newest[0]) and newest[0].startswith(f"line {LINES - 1:06d}")
    assert "engine ended" in newest[1]


def test_a_bad_limit_refuses_the_start_and_names_the_variable(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    port = free_port()
    codex = str(write(tmp_path / "codex", {"a.toml": f"""
[a]
exec = ["{sys.executable}", "-c", "pass"]
port = {port}
"""}))  # fmt: skip
    up = cli(cli_env | {"SOULSTONE_ENGINE_LOG_KEEP": "none"}, "--codex", codex, "up", "a")
    assert up.returncode == 1
    assert "SOULSTONE_ENGINE_LOG_KEEP='none'" in up.stderr
