"""The process runtime: engines as plain processes, each under a keeper process."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket as sockets
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from soulstone.codex.engines import engine_env, served_argv
from soulstone.codex.models import RuntimeName, Soulstone
from soulstone.files import tail_lines
from soulstone.runtimes import procfs
from soulstone.runtimes.base import EngineState, EngineStatus, StartError
from soulstone.runtimes.keeper import LOG_KEEP, LOG_MAX_BYTES
from soulstone.runtimes.state import StateFolder, read_json, write_json

DEFAULT_GRACE_S = 10.0
KEEPER_SLACK_S = 5.0
LOG_MAX_BYTES_ENV = "SOULSTONE_ENGINE_LOG_MAX_BYTES"
LOG_KEEP_ENV = "SOULSTONE_ENGINE_LOG_KEEP"
LOG_SETTLE_S = 5.0  # how long a failed engine's keeper gets to finish its log before a tail
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
_SIZE_RE = re.compile(r"(\d+)\s*([KMG]?)(?:i?B)?", re.IGNORECASE)


@dataclass(frozen=True)
class LogLimits:
    """How large an engine log grows before it is rotated, and how many old ones are kept."""

    max_bytes: int = LOG_MAX_BYTES
    keep: int = LOG_KEEP


def log_limits(environ: Mapping[str, str]) -> LogLimits:
    """The engine log limits from `SOULSTONE_ENGINE_LOG_MAX_BYTES` (bytes, or 50M, 1G …)
    and `SOULSTONE_ENGINE_LOG_KEEP`; ValueError names the variable of a bad value."""
    limits = LogLimits()
    size = environ.get(LOG_MAX_BYTES_ENV, "").strip()
    if size:
        found = _SIZE_RE.fullmatch(size)
        if found is None or int(found[1]) < 1:
            raise ValueError(f"{LOG_MAX_BYTES_ENV}={size!r}: expected a size in bytes, "
                             "such as 52428800 or 50M")  # fmt: skip
        limits = replace(limits, max_bytes=int(found[1]) * _SIZE_UNITS[found[2].upper()])
    keep = environ.get(LOG_KEEP_ENV, "").strip()
    if keep:
        if not keep.isdigit() or int(keep) < 1:
            raise ValueError(f"{LOG_KEEP_ENV}={keep!r}: expected a number of files, 1 or more")
        limits = replace(limits, keep=int(keep))
    return limits


def engine_environment(soulstone: Soulstone, base: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment: ours, models offline (SPEC C10), the codex's `env`, derived.

    The derived variables (`VLLM_ALLOW_RUNTIME_LORA_UPDATING` for a `lora` table) win.
    """
    return {**base, "HF_HUB_OFFLINE": "1", **dict(engine_env(soulstone))}


def port_in_use(port: int) -> bool:
    """True when a process listens on the port (TIME_WAIT leftovers do not count)."""
    with sockets.socket(sockets.AF_INET, sockets.SOCK_STREAM) as probe:
        probe.setsockopt(sockets.SOL_SOCKET, sockets.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def _prepare_socket(path: Path) -> None:
    """Create the socket's folder (0700); remove a stale socket, refuse a live one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartError(f"{path} exists and is not a socket")
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # stale: nobody listens
            return
    raise StartError(f"another process already serves on {path}")


KEEPER_MODULE = "soulstone.runtimes.keeper"
LAUNCH_TIMEOUT_S = 60.0


class ProcessRuntime:
    """Spawns engines itself (each in its own process group, under a keeper).

    With `spare_keeper` (the gateway's), a keeper process waits ready
    (`keeper --standby`) for the next start, and a new one is started once
    an engine is healthy: a start (a swap) does not wait for Python to start
    and import the keeper. A spare ends when its owner does (its stdin closes).
    """

    name: RuntimeName = "process"

    def __init__(
        self,
        state: StateFolder,
        grace: float = DEFAULT_GRACE_S,
        environ: Mapping[str, str] | None = None,
        python: str = sys.executable,
        spare_keeper: bool = False,
    ) -> None:
        self.state = state
        self.grace = grace
        self.environ = dict(os.environ if environ is None else environ)
        self.python = python
        self.log_limits: LogLimits | None = None
        self._log_problem = ""
        try:
            self.log_limits = log_limits(self.environ)
        except ValueError as error:  # refused at the next start, which names the variable
            self._log_problem = str(error)
        self.spare_keeper = spare_keeper
        self._spare: subprocess.Popen[bytes] | None = None
        self._spare_lock = threading.Lock()
        if spare_keeper:
            self.keep_spare()

    def keep_spare(self) -> None:
        """Start a spare keeper unless one waits already (only with `spare_keeper`)."""
        if not self.spare_keeper:
            return
        with self._spare_lock:
            if self._spare is not None and self._spare.poll() is None:
                return
            try:
                self._spare = subprocess.Popen(
                    [self.python, "-m", KEEPER_MODULE, "--standby"], env=self.environ,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
            except OSError:
                self._spare = None  # the next start runs its keeper itself

    @property
    def spare_pid(self) -> int | None:
        """The pid of the spare keeper that waits for the next start, or None."""
        spare = self._spare
        return spare.pid if spare is not None and spare.poll() is None else None

    def close(self) -> None:
        """End the spare keeper, if one waits (it exits at the end of its input)."""
        spare = self._take_spare()
        if spare is not None:
            spare.communicate(timeout=LAUNCH_TIMEOUT_S)

    def _take_spare(self) -> subprocess.Popen[bytes] | None:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        return spare if spare is not None and spare.poll() is None else None

    def _run_keeper(self, arguments: list[str], env: Mapping[str, str]) -> tuple[bytes, bytes]:
        """Run a keeper with these arguments (a spare's, when one waits): its stdout and stderr."""
        spare = self._take_spare()
        if spare is not None:
            order = orjson.dumps({"argv": arguments, "env": dict(env)}) + b"\n"
            try:
                stdout, stderr = spare.communicate(order, timeout=LAUNCH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                spare.kill()
                spare.communicate()
                raise
            if stdout.strip():
                return stdout, stderr
            # It ended before it took the order: run a keeper of our own.
        command = [self.python, "-m", KEEPER_MODULE, *arguments]
        launched = subprocess.run(command, env=dict(env), capture_output=True,
                                  timeout=LAUNCH_TIMEOUT_S, check=False)  # fmt: skip
        return launched.stdout, launched.stderr

    def start(self, soulstone: Soulstone) -> None:
        """Launch the engine under a keeper; raise StartError if it cannot be launched."""
        if self.status(soulstone).active:
            return
        if self.log_limits is None:
            raise StartError(self._log_problem)
        self.state.ensure()
        self._await_last_keeper(soulstone)
        if soulstone.port is not None and port_in_use(soulstone.port):
            raise StartError(f"port {soulstone.port} is already in use by another process")
        if soulstone.socket is not None:
            _prepare_socket(Path(soulstone.socket))
        self._launch(soulstone, served_argv(soulstone),
                     engine_environment(soulstone, self.environ))  # fmt: skip

    def _launch(
        self, soulstone: Soulstone, argv: tuple[str, ...], env: Mapping[str, str],
        after: Sequence[Sequence[str]] = (), **record: object,
    ) -> None:  # fmt: skip
        """Record the start and run argv under a keeper (`after`: its clean-up commands)."""
        write_json(self.state.record(soulstone.id), {
            "id": soulstone.id, "runtime": self.name, "argv": list(argv),
            "port": soulstone.port, "socket": soulstone.socket, "started_at": time.time(),
            "healthy_at": None, "log": str(self.state.log(soulstone.id)), **record,
        })  # fmt: skip
        self.state.keeper(soulstone.id).unlink(missing_ok=True)
        arguments = [
            "--record", str(self.state.keeper(soulstone.id)),
            "--log", str(self.state.log(soulstone.id)),
            "--grace", str(self.grace), "--cwd", str(Path(soulstone.file).resolve().parent),
            *self._log_options(),
            *(["--after", orjson.dumps([list(c) for c in after]).decode()] if after else []),
            "--", *argv,
        ]  # fmt: skip
        try:
            stdout, stderr = self._run_keeper(arguments, env)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StartError(f"cannot run the keeper for {soulstone.id}: {error}") from None
        try:
            report = orjson.loads(stdout.splitlines()[-1])
        except (IndexError, orjson.JSONDecodeError):
            detail = stderr.decode(errors="replace").strip()[-2000:]
            raise StartError(f"the keeper for {soulstone.id} failed: {detail}") from None
        if "error" in report:
            raise StartError(str(report["error"]))

    def _log_options(self) -> list[str]:
        limits = self.log_limits
        if limits is None:
            raise StartError(self._log_problem)
        return ["--log-max-bytes", str(limits.max_bytes), "--log-keep", str(limits.keep)]

    def _await_last_keeper(self, soulstone: Soulstone) -> None:
        """Let the keeper of an engine that just ended finish its sweep (else stop it).

        Only then is its record final: a restart must not race it for the file.
        """
        kept = read_json(self.state.keeper(soulstone.id)) or {}
        keeper, ticks = kept.get("keeper_pid"), kept.get("keeper_ticks")
        if isinstance(keeper, int) and not procfs.wait_gone(keeper, ticks, self.grace):
            self.stop(soulstone)

    def stop(self, soulstone: Soulstone) -> None:
        """SIGTERM the engine's group through its keeper, SIGKILL after the grace period."""
        kept = read_json(self.state.keeper(soulstone.id))
        if kept is None:
            return
        keeper_pid, keeper_ticks = kept.get("keeper_pid"), kept.get("keeper_ticks")
        pgid = kept.get("pgid")
        if procfs.alive(keeper_pid, keeper_ticks):
            assert isinstance(keeper_pid, int)
            os.kill(keeper_pid, signal.SIGTERM)
            procfs.wait_gone(keeper_pid, keeper_ticks, self.grace + KEEPER_SLACK_S)
        if isinstance(pgid, int) and procfs.group_members(pgid):
            # The keeper is gone (or stuck): stop the group ourselves.
            procfs.signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            while procfs.group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            procfs.signal_group(pgid, signal.SIGKILL)
            while procfs.group_members(pgid):
                time.sleep(0.02)
        if procfs.alive(keeper_pid, keeper_ticks):
            assert isinstance(keeper_pid, int)
            os.kill(keeper_pid, signal.SIGKILL)
        kept = read_json(self.state.keeper(soulstone.id)) or kept
        if kept.get("state") == "running":
            kept |= {"state": "stopped", "stop_requested": True, "ended_at": time.time()}
            write_json(self.state.keeper(soulstone.id), kept)

    def status(self, soulstone: Soulstone) -> EngineStatus:
        """State from the records and /proc: running, starting, stopped or failed."""
        base = EngineStatus(soulstone.id, "stopped", port=soulstone.port, socket=soulstone.socket)
        record = read_json(self.state.record(soulstone.id))
        kept = read_json(self.state.keeper(soulstone.id))
        if record is None or kept is None:
            return base
        pid, ticks = kept.get("pid"), kept.get("ticks")
        state: EngineState
        if kept.get("state") == "running":
            if procfs.alive(pid, ticks):
                state = "running" if record.get("healthy_at") else "starting"
                since = record.get("healthy_at") or kept.get("started_at")
                return EngineStatus(soulstone.id, state, pid=pid, since=since,
                                    port=soulstone.port, socket=soulstone.socket)  # fmt: skip
            # The engine ended; its keeper is still sweeping up, or was killed.
            return EngineStatus(soulstone.id, "failed", since=kept.get("started_at"),
                                port=soulstone.port, socket=soulstone.socket,
                                exit_code=kept.get("exit_code"))  # fmt: skip
        state = "stopped" if kept.get("state") == "stopped" else "failed"
        return EngineStatus(
            soulstone.id, state, since=kept.get("ended_at"), port=soulstone.port,
            socket=soulstone.socket, exit_code=kept.get("exit_code"),
        )  # fmt: skip

    def mark_healthy(self, soulstone: Soulstone) -> None:
        """Record the moment the engine first passed its health check (and ready a spare keeper)."""
        path = self.state.record(soulstone.id)
        record = read_json(path)
        if record is not None and not record.get("healthy_at"):
            write_json(path, record | {"healthy_at": time.time()})
        self.keep_spare()

    def details(self, found: EngineStatus) -> EngineStatus:
        """Nothing to add: the records say it all."""
        return found

    def log_tail(self, soulstone: Soulstone, lines: int = 20) -> str:
        """The last lines of the engine's log file.

        When the engine has ended but its keeper still runs, the keeper gets
        up to LOG_SETTLE_S to write the engine's last words first.
        """
        deadline = time.monotonic() + LOG_SETTLE_S
        while time.monotonic() < deadline:
            kept = read_json(self.state.keeper(soulstone.id)) or {}
            if kept.get("state") != "running" or procfs.alive(kept.get("pid"), kept.get("ticks")):
                break
            if not procfs.alive(kept.get("keeper_pid"), kept.get("keeper_ticks")):
                break
            time.sleep(0.02)
        return tail_lines(self.state.log(soulstone.id), lines)

    def log_command(self, soulstone: Soulstone, follow: bool) -> list[str] | None:
        """None: the CLI reads the log file itself."""
        return None
