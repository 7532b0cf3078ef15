"""`soulstone audit`: the checks that keep a strict installation strict."""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from soulstone.artifacts.cache import hub_cache
from soulstone.codex.models import Codex
from soulstone.guard.clients import ClientsFileError
from soulstone.guard.store import check_file
from soulstone.runtimes import procfs
from soulstone.runtimes.podman import inspect_container
from soulstone.runtimes.state import StateFolder, read_json

LISTEN = "0A"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY", re.I)
SECRET_VALUE = re.compile(
    r"hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{30,}|github_pat_\w{20,}"
    r"|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
SECRET_OPTIONS = ("--api-key", "--hf-token", "--token", "--api-keys", "--admin-api-key")


@dataclass(frozen=True)
class Finding:
    """One problem: what is wrong and where."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def tcp_listeners(proc: Path = Path("/proc")) -> dict[int, str]:
    """Inodes of listening TCP sockets, with their address (from /proc/net/tcp and tcp6)."""
    found: dict[int, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN:
                port = fields[1].rsplit(":", 1)[1]
                found[int(fields[9])] = f"{table} port {int(port, 16)}"
    return found


def unix_listeners(proc: Path = Path("/proc")) -> dict[int, str]:
    """Inodes of listening Unix sockets with their paths (from /proc/net/unix)."""
    found: dict[int, str] = {}
    try:
        lines = (proc / "net" / "unix").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) >= 7 and fields[5] == "01":  # SS_UNCONNECTED: a listening socket
            found[int(fields[6])] = fields[7] if len(fields) > 7 else ""
    return found


def socket_inodes(pid: int) -> set[int]:
    """The socket inodes a process holds open."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        return inodes
    return inodes


def _container_pid(name: str) -> int | None:
    """The host pid of a running container's first process, through `podman inspect`."""
    if shutil.which("podman") is None:
        return None
    pid = inspect_container(name, "{{.State.Pid}}") or ""
    return int(pid) if pid.isdigit() and int(pid) > 0 else None


def _ours(state: StateFolder) -> dict[int, str]:
    """Pids of the gateway and every engine this state folder knows of (containers too)."""
    pids: dict[int, str] = {}
    gateway = read_json(state.root / "gateway.json")
    if gateway and procfs.alive(gateway.get("pid")):
        pids[int(gateway["pid"])] = "the gateway"
    for record in sorted((state.root / "engines").glob("*.keeper.json")):
        kept = read_json(record) or {}
        name = record.name.removesuffix(".keeper.json")
        if kept.get("state") == "running" and isinstance(kept.get("pgid"), int):
            for pid in procfs.group_members(kept["pgid"]):
                pids[pid] = f"engine {name}"
            if procfs.alive(kept.get("keeper_pid"), kept.get("keeper_ticks")):
                for pid in procfs.descendants(int(kept["keeper_pid"])):  # conmon, containers
                    pids[pid] = f"engine {name}"
    for record in sorted((state.root / "engines").glob("*.json")):
        started = read_json(record) or {}
        container = started.get("container") or str(started.get("unit") or "").removesuffix(
            ".service") or None  # fmt: skip
        if record.name.endswith(".keeper.json") or not container:
            continue
        root = _container_pid(str(container))
        if root is not None:
            for pid in (root, *procfs.descendants(root)):
                pids[pid] = f"engine {started.get('id')} (container {container})"
    return pids


def _namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def interfaces(pid: int) -> list[str]:
    """The network interfaces of a process's network namespace (from /proc/PID/net/dev)."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return []
    return [line.split(":", 1)[0].strip() for line in lines if ":" in line]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def audit_listeners(state: StateFolder) -> list[Finding]:
    """In strict mode nothing of ours listens on TCP, in any network namespace.

    Each process is looked at in its own namespace (/proc/PID/net/tcp*), so
    an engine in a container is checked where it runs; a container engine
    must also have no interface but `lo` (Network=none).
    """
    findings = []
    host = _namespace(os.getpid())
    tables: dict[str | None, dict[int, str]] = {}
    for pid, what in sorted(_ours(state).items()):
        namespace = _namespace(pid)
        if namespace not in tables:
            tables[namespace] = tcp_listeners(Path(f"/proc/{pid}"))
            others = [name for name in interfaces(pid) if name != "lo"]
            if namespace != host and others:
                findings.append(Finding(f"pid {pid}", f"{what} has the network interfaces "
                                        f"{', '.join(others)}; strict mode runs containers "
                                        "with Network=none"))  # fmt: skip
        listening = tables[namespace]
        for inode in sorted(socket_inodes(pid) & set(listening)):
            findings.append(Finding(f"pid {pid}", f"{what} listens on TCP ({listening[inode]}); "
                                    "strict mode allows Unix sockets only"))  # fmt: skip
    return findings


def audit_engine_sockets(state: StateFolder) -> list[Finding]:
    """Each running engine's socket folder is 0700 (C4/C5: only the gateway's user reaches it)."""
    findings = []
    for record in sorted((state.root / "engines").glob("*.json")):
        started = read_json(record) or {}
        socket = started.get("socket")
        if record.name.endswith(".keeper.json") or not isinstance(socket, str):
            continue
        folder = Path(socket).parent
        if folder.is_dir() and _mode(folder) != 0o700:
            findings.append(Finding(str(folder), f"the socket folder of engine {started.get('id')} "
                                    f"has mode {_mode(folder):04o}, not 0700"))  # fmt: skip
    return findings


def audit_dashboard(state: StateFolder) -> list[Finding]:
    """A strict gateway keeps its dashboard closed (`soulstone ui --allow-strict` opens TCP)."""
    gateway = read_json(state.root / "gateway.json")
    if not gateway or not procfs.alive(gateway.get("pid")) or not gateway.get("dashboard"):
        return []
    if not gateway.get("strict") and not gateway.get("dashboard_strict_override"):
        return []
    return [
        Finding(
            f"pid {gateway['pid']}",
            f"the strict gateway serves its dashboard on "
            f"{gateway['dashboard']} (opened with `soulstone ui --allow-strict`); "
            "strict mode allows Unix sockets only: restart the gateway to close it",
        )
    ]


def audit_socket(socket: Path) -> list[Finding]:
    """The gateway's socket folder is 0700 and the socket 0660."""
    findings = []
    if socket.parent.exists() and _mode(socket.parent) != 0o700:
        findings.append(
            Finding(
                str(socket.parent),
                f"the socket folder has mode {_mode(socket.parent):04o}, not 0700",
            )
        )
    if socket.exists() and _mode(socket) != 0o660:
        findings.append(Finding(str(socket), f"the socket has mode {_mode(socket):04o}, not 0660"))
    return findings


def audit_caches(caches: Iterable[Path]) -> list[Finding]:
    """Model caches are 0700: nobody else reads the weights or adapters."""
    return [
        Finding(str(cache), f"the model cache has mode {_mode(cache):04o}, not 0700")
        for cache in caches
        if cache.is_dir() and _mode(cache) != 0o700
    ]


def audit_clients(path: Path) -> list[Finding]:
    """clients.yaml is ours and no wider than 0640."""
    if not path.exists():
        return []
    try:
        check_file(path)
    except ClientsFileError as error:
        return [Finding(str(path), str(error).removeprefix(f"{path} "))]
    return []


def audit_codex(codex: Codex) -> list[Finding]:
    """Nothing in the codex looks like a secret (API keys, tokens in `env` or `exec`)."""
    findings = []
    for soulstone in codex.soulstones:
        where = f"{soulstone.file}: [{soulstone.id}]"
        for name, value in soulstone.env:
            if SECRET_VALUE.search(value) or (
                SECRET_NAME.search(name) and value and not value.startswith(("/", "$"))
            ):
                findings.append(Finding(f"{where} env.{name}", "looks like a secret: keep it in "
                                        "a file the engine reads, not in the codex"))  # fmt: skip
        for index, word in enumerate(soulstone.argv):
            follows_option = index > 0 and soulstone.argv[index - 1] in SECRET_OPTIONS
            inline = any(word.startswith(o + "=") for o in SECRET_OPTIONS)
            if SECRET_VALUE.search(word) or follows_option or inline:
                findings.append(Finding(f"{where} exec", f"argument {index + 1} looks like a "
                                        "secret: engines should read it from a file"))  # fmt: skip
    return findings


def model_caches(env: Mapping[str, str], cache_home: Path) -> list[Path]:
    """The Hugging Face cache and soulstone's own cache."""
    return [hub_cache(env), cache_home]
