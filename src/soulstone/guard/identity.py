"""Who is calling: the Unix peer (SO_PEERCRED) or an API key, mapped to a client."""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
import secrets
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from soulstone.errors import Refusal
from soulstone.guard.clients import OWNER, Client, ClientsDecl, client_of
from soulstone.guard.keys import hash_key, is_slow, key_id, verify_key

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


class Unknown(Refusal):
    """The caller maps to no client (401 UNAUTHORIZED)."""

    def __init__(self, message: str) -> None:
        super().__init__(401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": "Bearer"})


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


def _uid(user: str | int) -> int | None:
    """The uid of a user name or number, asked of the system now (never cached)."""
    if isinstance(user, int) or (user.isascii() and user.isdigit()):
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):  # ValueError: a name no system accepts (a NUL in it)
        return None


def _gid(group: str | int) -> int | None:
    """The gid of a group name or number, asked of the system now (never cached)."""
    if isinstance(group, int) or (group.isascii() and group.isdigit()):
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class KeyEntry:
    """One usable (not revoked) key: whose it is, its stored hash, where it may be used."""

    client: Client
    stored: str
    transports: frozenset[str]


class Identities:
    """Maps peers and keys to clients, per one clients file (or none).

    Users and groups are resolved when it is built, so a rebuild (every reload)
    sees users and groups created since. `verify` checks a key against its stored
    form (keys.verify_key; a test passes a wrapped one).
    """

    def __init__(
        self,
        clients: ClientsDecl | None,
        own_uid: int | None = None,
        verify: Callable[[str, str], bool] = verify_key,
    ) -> None:
        self.clients = clients
        self.own_uid = os.getuid() if own_uid is None else own_uid
        self.by_uid: dict[int, Client] = {}
        self.by_gid: dict[int, Client] = {}
        self.keys: dict[str, KeyEntry] = {}
        self._verify = verify
        self._decoy = hash_key(secrets.token_urlsafe(32))  # checked for unknown/revoked ids
        self._verified: OrderedDict[bytes, KeyEntry] = OrderedDict()
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
                    self.keys[key.id] = KeyEntry(client, key.hash, transports)

    def of_peer(self, peer: Peer) -> Client:
        """The client a Unix peer maps to: its user's entry, else the owner, else a group."""
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
        if peer.uid == self.own_uid:
            return OWNER  # a group entry never takes admin away from the gateway's own user
        if self.by_gid:
            for gid in sorted(peer_groups(peer)):
                if (client := self.by_gid.get(gid)) is not None:
                    return client
        raise Unknown(f"uid {peer.uid} is not a client of this gateway")

    async def of_key(self, key: str, transport: str) -> Client:
        """The client an API key belongs to; Unknown for a wrong, unknown or revoked key.

        Unknown and revoked ids are checked against a decoy entry, so every refusal
        costs the same work as a wrong secret for a known id. Keys that verified are
        remembered (bounded); old scrypt entries are checked off the event loop.
        """
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        entry = self._verified.get(digest)
        if entry is None:
            known = self.keys.get(key_id(key) or "")
            stored = known.stored if known is not None else self._decoy
            if is_slow(stored):
                ok = await asyncio.to_thread(self._verify, key, stored)
            else:
                ok = self._verify(key, stored)
            if not ok or known is None:
                raise Unknown("unknown or revoked API key")
            entry = self._remember(digest, known)
        if transport not in entry.transports:
            raise Unknown(f"this key may not be used over {transport}")
        return entry.client

    def _remember(self, digest: bytes, entry: KeyEntry) -> KeyEntry:
        self._verified[digest] = entry
        while len(self._verified) > _MAX_REMEMBERED:
            self._verified.popitem(last=False)
        return entry

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
