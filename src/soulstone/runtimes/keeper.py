"""The keeper: a small process per engine (like Podman's conmon) that waits for it.

`python -m soulstone.runtimes.keeper --record FILE --log FILE [--grace S]
[--cwd DIR] [--after JSON] [--log-max-bytes N] [--log-keep K] -- COMMAND...`
(or `python -m soulstone.runtimes.keeper --standby`, given those arguments
later on stdin: see `standby`) starts COMMAND in its own process group with
its output appended to the log, prints one JSON line (the pids, or an
error) and returns while the keeper goes on alone. The keeper records how
the engine
ended in the record file, so `soulstone status` can say "failed (exit 7)"
when nobody was watching. SIGTERM to the keeper stops the engine: SIGTERM to
its group, SIGKILL after the grace period. Whatever the engine leaves behind
(its group, and any descendant, which the keeper adopts as a subreaper) is
killed and reaped: no orphans, no zombies. Before that sweep, the commands
given with `--after` (a JSON list of argv lists, such as a container
runtime's `podman rm -f --cidfile=…`) run in order, so that what the engine
left outside its process tree is removed too.

The log is size-bounded (`--log-max-bytes`, rotated to `LOG.1` …
`LOG.K`): the engine writes into a pipe, and a thread of the keeper copies
what comes out into the rotating files (see `pump`). The other way,
letting the engine append to the file itself and copying then truncating
it when it grows too big (logrotate's copytruncate), costs no thread, and
the engine would outlive a killed keeper however much it prints; but lines
written between the copy and the truncation are lost, and a rotation can
cut a line anywhere. Through the pipe no line is lost and rotations fall
between lines. Its costs: the engine's output goes through one more copy,
and an engine whose keeper was killed gets EPIPE (or SIGPIPE) when it next
prints, so it does not run on unseen for long.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from soulstone.files import RotatingLog, replace_file
from soulstone.runtimes import procfs

PR_SET_CHILD_SUBREAPER = 36
LEFTOVER_GRACE_S = 2.0
AFTER_TIMEOUT_S = 60.0
LOG_MAX_BYTES = 50 * 2**20  # an engine log's size before it is rotated
LOG_KEEP = 3  # rotated engine logs kept (LOG.1 … LOG.3)
READ_SIZE = 64 * 1024
LINGER_S = 0.2  # how long the end of an unfinished line waits for the rest of it
PUMP_JOIN_S = 5.0  # at the end, how long the pump gets to write what is left
KEEPER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD}


def pump(source: int, log: RotatingLog) -> None:
    """Copy what the engine prints (the pipe's read end) into the log, until end of file.

    Whole lines (ended by a newline, or a carriage return as progress bars
    print) go on at once; the start of an unfinished line is held back for
    up to LINGER_S (or until it is as long as the log's limit), so that a
    rotation falls between lines while a slow line still shows soon.
    Runs in its own thread, started with the keeper's signals blocked (see
    `Keeper.start_pump`): they must reach the main thread, waiting in `waitpid`.
    """
    pending, deadline = b"", 0.0
    poller = select.poll()
    poller.register(source, select.POLLIN)
    while True:
        if pending:
            wait = deadline - time.monotonic()
            if wait <= 0 or not poller.poll(wait * 1000):
                log.write(pending)
                pending = b""
                continue
        data = os.read(source, READ_SIZE)
        if not data:
            break
        data = pending + data if pending else data
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if len(data) - cut >= log.limit:
            cut = len(data)
        if cut:
            log.write(data[:cut])
        if cut or not pending:  # a new unfinished line is held from now
            deadline = time.monotonic() + LINGER_S
        pending = data[cut:]
    if pending:
        log.write(pending)
    os.close(source)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Replace the record atomically, without fsync, as `runtimes.state.write_json` does.

    With the standard library's json: the keeper starts on every engine
    start, and importing orjson would cost it more than all its other imports.
    """
    replace_file(path, json.dumps(document, indent=2).encode(), mode=0o644, durable=False)


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


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
        self, record: Path, log: RotatingLog, grace: float, after: list[list[str]] | None = None
    ) -> None:
        self.record = record
        self.log = log
        self.grace = grace
        self.after = after or []
        self.pgid = 0
        self.stop_requested = False
        self.engine_ended = False
        self.document: dict[str, Any] = {}
        self.pump: threading.Thread | None = None
        self._output = -1  # the read end of the engine's output pipe, until the pump takes it

    def spawn(self, command: list[str], cwd: str | None, spare: bool = False) -> dict[str, Any]:
        """Start the engine in its own group, its output into a pipe; record its pids.

        `start_pump` then copies the output to the log (until then it waits in the pipe).
        """
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.log.write(f"--- soulstone: starting {command!r} at {stamp} ---\n".encode())
        read_end, write_end = os.pipe()
        try:
            engine = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=cwd, close_fds=True,
            )  # fmt: skip
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._output = read_end
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
            "spare": spare,
        }
        write_json(self.record, self.document)
        return self.document

    def start_pump(self) -> None:
        """Start copying the engine's output to the log, in a thread of its own.

        Once the start is reported: a thread that copies a talkative engine's
        output holds the GIL so often that the main thread waits up to the
        switch interval (5 ms) for it at each step of the report.
        """
        self.pump = threading.Thread(target=pump, args=(self._output, self.log), daemon=True)
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, KEEPER_SIGNALS)
        try:  # the thread keeps the mask it starts with: the signals go to this thread
            self.pump.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)

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
            try:
                done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, timeout=AFTER_TIMEOUT_S,
                                      check=False, close_fds=True)  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as error:
                self.log.write(f"--- soulstone: {command[0]!r} failed: {error} ---\n".encode())
            else:
                self.log.write(done.stdout)
        if self.after:
            self.document["after_done"] = True  # recorded by `finish`: nobody runs them again

    def sweep(self) -> None:
        """Stop what the engine left: its group, then every adopted descendant."""
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        procfs.signal_group(self.pgid, signal.SIGTERM)
        while procfs.group_members(self.pgid) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        procfs.signal_group(self.pgid, signal.SIGKILL)
        for _ in range(200):
            if not self._reap():
                break  # no child left: as a subreaper, no descendant either
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
    def _reap() -> bool:
        """Reap the children that ended; True while some child (alive) is left."""
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True

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
        if self.pump is not None:  # the sweep closed the pipe's last write end
            self.pump.join(PUMP_JOIN_S)
        self.log.write(f"--- soulstone: engine ended, exit code {exit_code} ---\n".encode())
        write_json(self.record, self.document)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="soulstone-keeper")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--cwd")
    parser.add_argument("--after", type=json.loads, default=[])
    parser.add_argument("--log-max-bytes", type=int, default=LOG_MAX_BYTES)
    parser.add_argument("--log-keep", type=int, default=LOG_KEEP)
    parser.add_argument("command", nargs="+")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, spare: bool = False) -> int:
    """Run a keeper; the calling process gets one JSON line and exit code 0 (1: not started).

    `spare`: it was started ahead, as a spare (noted in its record).
    """
    args = _arguments(sys.argv[1:] if argv is None else argv)
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        # The launcher's child: relay the keeper's report, then leave it orphaned.
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            line = report.read()
        sys.stdout.write(line.decode() or '{"error": "the keeper died before reporting"}\n')
        sys.stdout.flush()
        # Leave at once: the caller waits for this exit, and Python's own shutdown is slow.
        os._exit(0 if line and b'"error"' not in line else 1)
    os.close(read_end)
    os.setsid()
    _become_subreaper()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    with os.fdopen(write_end, "wb") as report:
        try:
            log = RotatingLog(args.log, args.log_max_bytes, args.log_keep)
        except (OSError, ValueError) as error:
            report.write(_dumps({"error": f"cannot write the log {args.log}: "
                                       f"{getattr(error, 'strerror', None) or error}"})
                         + b"\n")  # fmt: skip
            return 1
        keeper = Keeper(args.record, log, args.grace, args.after)
        try:
            document = keeper.spawn(args.command, args.cwd, spare)
        except OSError as error:
            report.write(_dumps({"error": f"cannot start {args.command[0]!r}: "
                                       f"{error.strerror or error}"}) + b"\n")  # fmt: skip
            return 1
        signal.signal(signal.SIGTERM, keeper.request_stop)
        signal.signal(signal.SIGINT, keeper.request_stop)
        signal.signal(signal.SIGHUP, keeper.request_stop)
        signal.signal(signal.SIGALRM, keeper.kill_now)
        report.write(_dumps(document) + b"\n")
    os.dup2(devnull, 1)  # the start waits for the end of the launcher's output: ours too
    os.dup2(devnull, 2)
    keeper.start_pump()
    exit_code = keeper.wait()
    keeper.run_after()
    keeper.sweep()
    keeper.finish(exit_code)
    # Leave at once: a stop waits for this exit, and Python's own shutdown takes
    # 10-20 ms. The record is written, and the log is unbuffered.
    os._exit(0)


def standby() -> int:
    """A spare keeper: wait for one order on stdin, then run as `main(argv)` would.

    The order is one JSON line, `{"argv": [...], "env": {...}}`: the keeper's
    arguments, and the environment it would have been started with (the
    engine inherits it). A spare is started before it is needed, so that an
    engine start does not wait for Python to start and import the keeper.
    End of input before an order (its owner went away): exit 0.
    """
    _arguments(["--record", "-", "--log", "-", "--", "-"])  # argparse's first use is slow
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 0
    order = json.loads(line)
    os.environ.clear()
    os.environ.update(order["env"])
    return main(list(order["argv"]), spare=True)


if __name__ == "__main__":
    sys.exit(standby() if sys.argv[1:] == ["--standby"] else main())
