"""The keeper: a small process per engine (like Podman's conmon) that waits for it.

`python -m soulstone.runtimes.keeper --record FILE --log FILE [--grace S]
[--cwd DIR] [--after JSON] -- COMMAND...` starts COMMAND in its own process group with its
output appended to the log, prints one JSON line (the pids, or an error) and
returns while the keeper goes on alone. The keeper records how the engine
ended in the record file, so `soulstone status` can say "failed (exit 7)"
when nobody was watching. SIGTERM to the keeper stops the engine: SIGTERM to
its group, SIGKILL after the grace period. Whatever the engine leaves behind
(its group, and any descendant, which the keeper adopts as a subreaper) is
killed and reaped: no orphans, no zombies. Before that sweep, the commands
given with `--after` (a JSON list of argv lists, such as a container
runtime's `podman rm -f --cidfile=…`) run in order, so that what the engine
left outside its process tree is removed too.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from soulstone.runtimes import procfs
from soulstone.runtimes.state import write_json

PR_SET_CHILD_SUBREAPER = 36
LEFTOVER_GRACE_S = 2.0
AFTER_TIMEOUT_S = 60.0


def _now() -> float:
    return time.time()


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        return


class Keeper:
    """Owns one engine process from spawn to the last reaped descendant."""

    def __init__(
        self, record: Path, log: Path, grace: float, after: list[list[str]] | None = None
    ) -> None:
        self.record = record
        self.log = log
        self.grace = grace
        self.after = after or []
        self.pgid = 0
        self.stop_requested = False
        self.engine_ended = False
        self.document: dict[str, Any] = {}

    def spawn(self, command: list[str], cwd: str | None) -> dict[str, Any]:
        """Start the engine in its own group, logging; record and return its pids."""
        log = self.log.open("ab", buffering=0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.write(f"--- soulstone: starting {command!r} at {stamp} ---\n".encode())
        engine = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cwd, close_fds=True,
        )  # fmt: skip
        log.close()
        self.pgid = engine.pid
        self.document = {
            "keeper_pid": os.getpid(),
            "keeper_ticks": procfs.start_ticks(os.getpid()),
            "pid": engine.pid,
            "ticks": procfs.start_ticks(engine.pid),
            "pgid": engine.pid,
            "started_at": _now(),
            "state": "running",
            "exit_code": None,
            "ended_at": None,
            "stop_requested": False,
        }
        write_json(self.record, self.document)
        return self.document

    def request_stop(self, _signum: int, _frame: FrameType | None) -> None:
        """Signal handler: SIGTERM the engine's group now, SIGKILL after the grace."""
        if self.engine_ended:
            # Too late to stop: the engine ended on its own. Only speed up the sweep.
            procfs.signal_group(self.pgid, signal.SIGKILL)
            return
        if self.stop_requested:
            return
        self.stop_requested = True
        self.document["stop_requested"] = True
        write_json(self.record, self.document)
        procfs.signal_group(self.pgid, signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, max(self.grace, 0.01))

    def kill_now(self, _signum: int, _frame: FrameType | None) -> None:
        """Signal handler (the grace timer): SIGKILL the engine's group."""
        procfs.signal_group(self.pgid, signal.SIGKILL)

    def wait(self) -> int | None:
        """Reap children until the engine itself ends; return its exit code."""
        engine = self.document["pid"]
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return None
            if pid == engine:
                code = os.waitstatus_to_exitcode(status)
                self.engine_ended = True
                self.document["exit_code"] = code
                write_json(self.record, self.document)
                return code

    def run_after(self) -> None:
        """Run the `--after` commands in order (their output goes to the log)."""
        for command in self.after:
            with self.log.open("ab", buffering=0) as log:
                try:
                    subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, timeout=AFTER_TIMEOUT_S,
                                   check=False, close_fds=True)  # fmt: skip
                except (OSError, subprocess.TimeoutExpired) as error:
                    log.write(f"--- soulstone: {command[0]!r} failed: {error} ---\n".encode())

    def sweep(self) -> None:
        """Stop what the engine left: its group, then every adopted descendant."""
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        procfs.signal_group(self.pgid, signal.SIGTERM)
        while procfs.group_members(self.pgid) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        procfs.signal_group(self.pgid, signal.SIGKILL)
        for _ in range(200):
            self._reap()
            left = procfs.descendants(os.getpid())
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            time.sleep(0.02)
        self._reap()

    @staticmethod
    def _reap() -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def finish(self, exit_code: int | None) -> None:
        """Record how the engine ended: stopped on request, else failed."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        stopped = self.stop_requested
        self.document |= {
            "state": "stopped" if stopped else "failed",
            "exit_code": exit_code,
            "ended_at": _now(),
            "stop_requested": stopped,
        }
        write_json(self.record, self.document)
        with self.log.open("ab") as log:
            log.write(f"--- soulstone: engine ended, exit code {exit_code} ---\n".encode())


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="soulstone-keeper")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--cwd")
    parser.add_argument("--after", type=orjson.loads, default=[])
    parser.add_argument("command", nargs="+")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run a keeper; the calling process gets one JSON line and exit code 0 (1: not started)."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        # The launcher's child: relay the keeper's report, then leave it orphaned.
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            line = report.read()
        sys.stdout.write(line.decode() or '{"error": "the keeper died before reporting"}\n')
        return 0 if line and b'"error"' not in line else 1
    os.close(read_end)
    os.setsid()
    _become_subreaper()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    keeper = Keeper(args.record, args.log, args.grace, args.after)
    with os.fdopen(write_end, "wb") as report:
        try:
            document = keeper.spawn(args.command, args.cwd)
        except OSError as error:
            report.write(orjson.dumps({"error": f"cannot start {args.command[0]!r}: "
                                       f"{error.strerror or error}"}) + b"\n")  # fmt: skip
            return 1
        signal.signal(signal.SIGTERM, keeper.request_stop)
        signal.signal(signal.SIGINT, keeper.request_stop)
        signal.signal(signal.SIGHUP, keeper.request_stop)
        signal.signal(signal.SIGALRM, keeper.kill_now)
        report.write(orjson.dumps(document) + b"\n")
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    exit_code = keeper.wait()
    keeper.run_after()
    keeper.sweep()
    keeper.finish(exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
