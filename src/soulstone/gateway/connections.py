"""Connection defences: the peer read at accept, per-peer caps, header and idle timeouts."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import resource
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from soulstone.dispatch.call import REQUEST_ID
from soulstone.dispatch.refusals import error_bytes
from soulstone.errors import Refusal
from soulstone.gateway.listen import BACKLOG, ListenError
from soulstone.guard.identity import Peer, peer_groups, peer_of

# Whom a connection counts against: ("uid", 1000), ("ip", "192.0.2.7"), ("net", "2001:db8::/64").
PeerKey = tuple[str, int | str]

NR_OPEN = Path("/proc/sys/fs/nr_open")
_MAX_REPORTED = 4096


@dataclass(frozen=True)
class ConnectionOptions:
    """How long a connection may wait for its headers or its next request, and how many
    connections one peer (and everyone but the gateway's own user) may hold."""

    header_timeout: float = 10.0  # seconds from connect, or from an idle connection's next byte
    idle_timeout: float = 30.0  # seconds a keep-alive connection may sit idle
    max_per_peer: int = 256  # per Unix uid on the socket, per IP (IPv6: per /64) on TCP
    max_total: int = 4096  # beyond this only the gateway's own uid gets in


def peer_key(peer: Peer | None, peername: Any) -> PeerKey | None:
    """Whom a connection counts against: its Unix uid, else its IPv4 address or IPv6 /64.

    None when neither is known (the connection is then refused).
    """
    if peer is not None:
        return ("uid", peer.uid)
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return None
    try:
        address = ipaddress.ip_address(peername[0].partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return ("ip", str(address.ipv4_mapped))
        return ("net", str(ipaddress.ip_network(f"{address}/64", strict=False)))
    return ("ip", str(address))


def refusal(held: int, total: int, owner: bool, options: ConnectionOptions) -> str | None:
    """Why one more connection from a peer holding `held` (of `total` open) is refused; None: admit.

    The gateway's own user is exempt from the total (so it gets in while others
    fill the gateway), never from the per-peer cap.
    """
    if held >= options.max_per_peer:
        return f"this peer already holds {held} connections (--max-connections-per-peer)"
    if total >= options.max_total and not owner:
        return f"the gateway holds {total} connections, its limit for other users"
    return None


class ConnectionCounts:
    """Open connections per peer and in all; owned by the event loop.

    `on_refused(key, reason)` is called once per peer until one of its
    connections closes (a flood is reported, not logged line by line).
    """

    def __init__(
        self,
        options: ConnectionOptions,
        on_refused: Callable[[PeerKey, str], None],
        own_uid: int | None = None,
    ) -> None:
        self.options = options
        self.on_refused = on_refused
        self.owner: PeerKey = ("uid", os.getuid() if own_uid is None else own_uid)
        self.held: dict[PeerKey, int] = {}
        self.total = 0
        self._reported: set[PeerKey] = set()

    def admit(self, key: PeerKey) -> bool:
        """Count one more connection for key; False (and nothing counted) when refused."""
        reason = refusal(self.held.get(key, 0), self.total, key == self.owner, self.options)
        if reason is not None:
            if key not in self._reported:
                if len(self._reported) >= _MAX_REPORTED:
                    self._reported.clear()
                self._reported.add(key)
                self.on_refused(key, reason)
            return False
        self.held[key] = self.held.get(key, 0) + 1
        self.total += 1
        return True

    def release(self, key: PeerKey) -> None:
        """One connection admitted for key has closed."""
        left = self.held.get(key, 0) - 1
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)
        self.total = max(0, self.total - 1)
        self._reported.discard(key)


def read_peer(transport: asyncio.BaseTransport) -> Peer | None:
    """The Unix peer of a connection (SO_PEERCRED) with its groups; None on TCP.

    OSError when the socket can no longer say (the peer is gone).
    """
    peer = peer_of(transport.get_extra_info("socket"))
    if peer is None:
        return None
    return dataclasses.replace(peer, groups=peer_groups(peer))


class GuardedConnection(RequestHandler):
    """aiohttp's HTTP protocol for one connection, with its peer read once at accept.

    Refused at accept (over its peer's cap, or no peer known): closed before any
    byte is read. Admitted: a request whose headers are not complete within the
    header timeout (counted from the accept, or from the first byte after an idle
    spell) is closed, and so is a connection idle past the idle timeout.
    """

    def __init__(self, gate: ConnectionGate) -> None:
        no_access_log: dict[str, Any] = {"access_log": None}  # aiohttp's hint omits None
        super().__init__(gate.server, loop=gate.loop, keepalive_timeout=gate.options.idle_timeout,
                         **no_access_log)  # fmt: skip
        self.peer: Peer | None = None
        self._gate = gate
        self._peer_key: PeerKey | None = None
        self._headers_seen = 0
        self._headers_due: asyncio.TimerHandle | None = None
        self._last_body: StreamReader | None = None  # the newest request's body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Read the peer, count it, and start the clock for the first request's headers."""
        admitted = self._gate.accept(transport)
        if admitted is None:
            return
        self.peer, self._peer_key = admitted
        super().connection_made(transport)
        self._expect_headers()

    def adopt(self, transport: asyncio.BaseTransport, peer: Peer | None, key: PeerKey,
              data: bytes) -> None:  # fmt: skip
        """Take over a connection admitted already (the hot path's), with its unread bytes."""
        self.peer, self._peer_key = peer, key
        super().connection_made(transport)
        self._expect_headers()
        transport.set_protocol(self)
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does; stop the header clock once a request's headers are in."""
        if self._peer_key is None:
            return  # refused at accept
        super().data_received(data)
        if self._request_count != self._headers_seen:
            self._headers_seen = self._request_count
            self._last_body = self._messages[-1][1] if self._messages else None
            self._stop_clock()
        elif self._headers_due is None and self._between_requests():
            self._expect_headers()  # the first bytes of the next request's head

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        """A request aiohttp could not parse, or whose handler failed: a JSON error, closed.

        aiohttp's own answer and log quote the bytes it choked on (a broken
        chunked body is a prompt); here both name only the error's kind.
        """
        kind = type(exc).__name__ if exc is not None else "unknown"
        frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        self.logger.warning("could not serve a request (HTTP %d): %s%s", status, kind, where)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was started: no error response can follow")
        if status >= 500:
            refusal = Refusal(status, "INTERNAL_ERROR", f"the gateway failed on this request "
                              f"({kind}); see its log")  # fmt: skip
        else:
            refusal = Refusal(status, "BAD_REQUEST", f"the request is not valid HTTP ({kind}): "
                              "its framing, chunked encoding or headers are broken")  # fmt: skip
        request_id = request.headers.get(REQUEST_ID) or os.urandom(8).hex()
        response = web.Response(status=status, body=error_bytes(refusal),
                                content_type="application/json",
                                headers={REQUEST_ID: request_id})  # fmt: skip
        response.force_close()
        return response

    def connection_lost(self, exc: BaseException | None) -> None:
        """Uncount the connection (only one that was admitted)."""
        key, self._peer_key = self._peer_key, None
        if key is None:
            return
        self._stop_clock()
        self._gate.counts.release(key)
        super().connection_lost(exc)

    def _expect_headers(self) -> None:
        self._headers_due = self._loop.call_later(
            self._gate.options.header_timeout, self._headers_late
        )

    def _between_requests(self) -> bool:
        """Whether bytes now are a next request's head: the newest request's body is all
        in (its handler may still be answering) and the connection is still HTTP."""
        if self._upgraded or self._payload_parser is not None:
            return False  # a WebSocket's frames, never a head
        return self._last_body is None or self._last_body.is_eof()

    def _stop_clock(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _headers_late(self) -> None:
        self._headers_due = None
        if self._request_count != self._headers_seen:
            return
        if self._current_request is not None:
            self._expect_headers()  # a pipelined head waits while an answer is still sent
            return
        self.force_close()


class ConnectionGate:
    """The protocol factory of every listener: one GuardedConnection per accepted connection."""

    def __init__(
        self,
        server: web.Server,
        options: ConnectionOptions,
        on_refused: Callable[[PeerKey, str], None],
        own_uid: int | None = None,
    ) -> None:
        self.server = server
        self.options = options
        self.counts = ConnectionCounts(options, on_refused, own_uid)
        self.loop = asyncio.get_running_loop()

    def __call__(self) -> asyncio.Protocol:
        """A protocol for one new connection."""
        return GuardedConnection(self)

    def accept(self, transport: asyncio.BaseTransport) -> tuple[Peer | None, PeerKey] | None:
        """Read a new connection's peer and count it; None (and closed) when refused."""
        try:
            peer = read_peer(transport)
        except OSError:
            peer, key = None, None
        else:
            key = peer_key(peer, transport.get_extra_info("peername"))
        if key is None or not self.counts.admit(key):
            transport.close()
            return None
        return peer, key

    async def listen(
        self, sockets: list[socket.socket], tcp: tuple[str, int] | None
    ) -> list[asyncio.AbstractServer]:
        """Serve on these listening sockets (and TCP host, port); ListenError if TCP is taken.

        TCP first: once the Unix socket answers (what callers and tests wait
        for), the TCP listener is there too.
        """
        servers: list[asyncio.AbstractServer] = []
        if tcp is not None:
            try:
                servers.append(await self.loop.create_server(self, tcp[0], tcp[1],
                                                             backlog=BACKLOG))  # fmt: skip
            except OSError as error:
                raise ListenError(f"cannot listen on --tcp {tcp[0]}:{tcp[1]}: {error}") from None
        try:
            for sock in sockets:
                servers.append(await self.loop.create_server(self, sock=sock, backlog=BACKLOG))
        except BaseException:
            for server in servers:
                server.close()
            raise
        return servers


def peer_of_request(request: web.BaseRequest) -> Peer | None:
    """The Unix peer (uid, gid, pid, groups) of the request's connection; None on TCP.

    Read once at accept by GuardedConnection; on connections some other server
    accepted (test clients), read now.
    """
    protocol = request.protocol
    if isinstance(protocol, GuardedConnection):
        return protocol.peer
    transport = request.transport
    if transport is None:
        return None
    try:
        return read_peer(transport)
    except OSError:
        return None


def open_files_target(soft: int, hard: int | None, ceiling: int) -> int:
    """The soft RLIMIT_NOFILE to ask for: the hard limit (None: unlimited, then the
    kernel's `ceiling`), never lower than the current soft one."""
    wanted = ceiling if hard is None else hard
    return max(soft, wanted)


def connection_ceiling(open_files: int) -> int:
    """Connections others may hold: half the open-files limit, the rest kept for engines."""
    return max(1, open_files // 2)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE of this process to its hard limit; (before, after).

    When the kernel refuses, the limit stays as it was (after == before).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        ceiling = int(NR_OPEN.read_text())
    except (OSError, ValueError):
        ceiling = 1 << 20
    if soft == resource.RLIM_INFINITY:
        return ceiling, ceiling
    unlimited = hard == resource.RLIM_INFINITY
    target = open_files_target(soft, None if unlimited else hard, ceiling)
    if target == soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, target
