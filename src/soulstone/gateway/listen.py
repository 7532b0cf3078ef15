"""Where the gateway listens: its Unix socket (0700 folder, 0660 socket), TCP, activation."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from soulstone.errors import SoulstoneError, UsageError

SD_LISTEN_FDS_START = 3
BACKLOG = 1024


class ListenError(SoulstoneError):
    """The gateway cannot listen where it was asked to."""


def prepare_socket(path: Path, own_folder: bool) -> list[str]:
    """Make the socket's folder ready and clear a stale socket; return warnings.

    The default folder is soulstone's own: created (or tightened) to 0700. A
    folder given with --socket is created 0700 when missing and left as it is
    otherwise, with a warning when others may write to it. A socket file
    nobody answers on is removed; one a live gateway answers on is refused.
    """
    warnings = []
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)
    elif own_folder and stat.S_IMODE(folder.stat().st_mode) != 0o700:
        folder.chmod(0o700)
        warnings.append(f"tightened {folder} to 0700")
    elif not own_folder and folder.stat().st_mode & 0o022:
        warnings.append(f"{folder} is writable by others: they could replace the socket")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return warnings
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{path} exists and is not a socket: refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)
            warnings.append(f"removed a stale socket at {path}")
            return warnings
    raise ListenError(f"another gateway already answers on {path}")


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at path, mode 0660 from the start."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(previous)
    os.chmod(path, 0o660)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def parse_tcp(value: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[V6]:PORT`) as (host, port)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--tcp {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether a --tcp host is this machine only: `localhost` or a loopback address.

    Any other name counts as public, whatever it resolves to today.
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def tcp_refusal(tcp: str | None, public: bool, tcp_keys: int, clients: Path) -> str | None:
    """Why `--tcp`/`--tcp-public` may not start the gateway; None when they may.

    A non-loopback --tcp needs --tcp-public, and --tcp-public needs a clients
    file with at least one API key usable over TCP (TCP callers need keys).
    """
    if tcp is None:
        return "--tcp-public needs --tcp HOST:PORT" if public else None
    host, _ = parse_tcp(tcp)
    if is_loopback(host):
        return None
    if not public:
        return (f"--tcp {tcp}: {host} is not a loopback address; pass --tcp-public to listen "
                "beyond this machine (callers there need API keys)")  # fmt: skip
    if tcp_keys == 0:
        return (f"--tcp-public: {clients} has no API key usable over TCP, so nobody could call; "
                "add one with `soulstone clients add NAME --key`")  # fmt: skip
    return None


def activation_sockets(env: dict[str, str] | None = None) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_PID/LISTEN_FDS), if any."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(environ.get("LISTEN_FDS") or 0)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    if env is None:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)  # engines we start must not think they were activated
    return sockets


def describe(sock: socket.socket) -> str:
    """A listening socket as a human reads it."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    return f"tcp:{name[0]}:{name[1]}"
