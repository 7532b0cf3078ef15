"""Who is calling: the Unix peer (SO_PEERCRED) or an API key, mapped to a client."""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from soulstone.guard.clients import OWNER, Client, ClientsDecl, client_of
from soulstone.guard.keys import key_id, verify_key

_PEERCRED = struct.Struct("3i")
_MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class Peer:
    """The process on the other end of a Unix socket.

    `groups` is the process's groups when they were read at accept (None: not read yet).
    """

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] | None = None


class Unknown(Exception):
    """The caller maps to no client (HTTP 401)."""


def peer_of(sock: socket.socket | None) -> Peer | None:
    """SO_PEERCRED of a Unix socket; None for other sockets."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    pid, uid, gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return Peer(pid, uid, gid)


def _proc_groups(pid: int) -> list[int] | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except (OSError, ValueError):
        return None
    return None


def peer_groups(peer: Peer) -> frozenset[int]:
    """The peer process's groups (primary and supplementary); those read at accept when set."""
    if peer.groups is not None:
        return peer.groups
    groups = _proc_groups(peer.pid)
    if groups is not None:
        return frozenset([peer.gid, *groups])
    try:
        return frozenset(os.getgrouplist(pwd.getpwuid(peer.uid).pw_name, peer.gid))
    except KeyError:
        return frozenset([peer.gid])


@lru_cache(maxsize=256)
def _uid(user: str | int) -> int | None:
    if isinstance(user, int) or user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


@lru_cache(maxsize=256)
def _gid(group: str | int) -> int | None:
    if isinstance(group, int) or group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


class Identities:
    """Maps peers and keys to clients, per one clients file (or none)."""

    def __init__(self, clients: ClientsDecl | None, own_uid: int | None = None) -> None:
        self.clients = clients
        self.own_uid = os.getuid() if own_uid is None else own_uid
        self.by_uid: dict[int, Client] = {}
        self.by_gid: dict[int, Client] = {}
        self.keys: dict[str, tuple[Client, str, frozenset[str]]] = {}
        self._remembered: dict[bytes, tuple[Client, frozenset[str]] | None] = {}
        self._peers: dict[Peer, Client] = {}
        for name, declaration in (clients.clients if clients else {}).items():
            client = client_of(name, declaration)
            for user in declaration.users:
                if (uid := _uid(user)) is not None:
                    self.by_uid.setdefault(uid, client)
            for group in declaration.groups:
                if (gid := _gid(group)) is not None:
                    self.by_gid.setdefault(gid, client)
            for key in declaration.keys:
                if not key.revoked:
                    transports = frozenset(key.transports or ("unix", "tcp"))
                    self.keys[key.id] = (client, key.hash, transports)

    def of_peer(self, peer: Peer) -> Client:
        """The client a Unix peer maps to: by user, then by group, then the owner."""
        found = self._peers.get(peer)
        if found is None:
            found = self._resolve_peer(peer)
            if len(self._peers) >= _MAX_REMEMBERED:
                self._peers.clear()
            self._peers[peer] = found
        return found

    def _resolve_peer(self, peer: Peer) -> Client:
        client = self.by_uid.get(peer.uid)
        if client is not None:
            return client
        if self.by_gid:
            for gid in sorted(peer_groups(peer)):
                if (client := self.by_gid.get(gid)) is not None:
                    return client
        if peer.uid == self.own_uid:
            return OWNER
        raise Unknown(f"uid {peer.uid} is not a client of this gateway")

    async def of_key(self, key: str, transport: str) -> Client:
        """The client an API key belongs to (a slow hash, checked once per key and process)."""
        digest = hashlib.sha256(key.encode()).digest()
        if digest in self._remembered:
            found = self._remembered[digest]
        else:
            entry = self.keys.get(key_id(key) or "")
            ok = entry is not None and await asyncio.to_thread(verify_key, key, entry[1])
            found = (entry[0], entry[2]) if ok and entry is not None else None
            if len(self._remembered) >= _MAX_REMEMBERED:
                self._remembered.clear()
            self._remembered[digest] = found
        if found is None:
            raise Unknown("unknown or revoked API key")
        if transport not in found[1]:
            raise Unknown(f"this key may not be used over {transport}")
        return found[0]

    async def identify(self, headers: Mapping[str, str], peer: Peer | None) -> Client:
        """A key, when sent, wins; else the Unix peer; TCP callers need a key.

        On the Unix socket, a bearer value not shaped like a soulstone key (the
        placeholder an SDK insists on sending) is ignored in favour of the peer.
        """
        authorization = headers.get("Authorization")
        if authorization:
            scheme, _, key = authorization.partition(" ")
            key = key.strip()
            if peer is None or key_id(key) is not None:
                if scheme.lower() != "bearer" or not key:
                    raise Unknown("Authorization must be `Bearer <key>`")
                return await self.of_key(key, "tcp" if peer is None else "unix")
        if peer is None:
            raise Unknown("on TCP, send an API key (Authorization: Bearer ...)")
        return self.of_peer(peer)
