"""Connection defences, the pure parts: whom a connection counts against, caps, limits, TCP."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from soulstone.errors import UsageError
from soulstone.gateway.connections import (
    ConnectionCounts,
    ConnectionOptions,
    PeerKey,
    connection_ceiling,
    open_files_target,
    peer_key,
    refusal,
)
from soulstone.gateway.listen import is_loopback, tcp_refusal
from soulstone.guard.identity import Peer, peer_groups, peer_of

CLIENTS = Path("/home/someone/.config/soulstone/clients.yaml")


def test_a_unix_peer_counts_by_its_uid() -> None:
    assert peer_key(Peer(10, 1000, 1000), "") == ("uid", 1000)


def test_a_tcp_peer_counts_by_its_address_and_ipv6_by_its_64() -> None:
    assert peer_key(None, ("192.0.2.7", 5555)) == ("ip", "192.0.2.7")
    assert peer_key(None, ("::ffff:192.0.2.7", 5555, 0, 0)) == ("ip", "192.0.2.7")
    first = peer_key(None, ("2001:db8:1:2::10", 5555, 0, 0))
    second = peer_key(None, ("2001:db8:1:2:ffff::1", 5555, 0, 0))
    assert first == second == ("net", "2001:db8:1:2::/64")
    assert peer_key(None, ("2001:db8:1:3::10", 5555, 0, 0)) != first
    assert peer_key(None, ("fe80::1%eth0", 5555, 0, 2)) == ("net", "fe80::/64")


def test_an_unknown_peer_counts_as_nobody() -> None:
    assert peer_key(None, "") is None
    assert peer_key(None, None) is None
    assert peer_key(None, ("not an address", 1)) is None


def test_refusal_per_peer_and_in_all() -> None:
    options = ConnectionOptions(max_per_peer=2, max_total=3)
    assert refusal(1, 2, owner=False, options=options) is None
    assert "--max-connections-per-peer" in (refusal(2, 2, owner=False, options=options) or "")
    assert refusal(0, 3, owner=False, options=options) is not None
    assert refusal(0, 3, owner=True, options=options) is None  # the owner gets in when full
    assert refusal(2, 3, owner=True, options=options) is not None  # but has its own cap


def test_counts_admit_release_and_report_a_flood_once() -> None:
    reported: list[tuple[PeerKey, str]] = []
    counts = ConnectionCounts(ConnectionOptions(max_per_peer=2, max_total=3),
                              lambda key, reason: reported.append((key, reason)),
                              own_uid=1000)  # fmt: skip
    stranger, owner = ("uid", 2000), ("uid", 1000)
    assert counts.admit(stranger) and counts.admit(stranger)
    assert not counts.admit(stranger)
    assert not counts.admit(stranger)
    assert [key for key, _ in reported] == [stranger]
    assert counts.admit(("ip", "192.0.2.7"))
    assert not counts.admit(("ip", "192.0.2.8"))  # three held: full for others
    assert counts.admit(owner)  # not for the owner
    assert counts.total == 4
    counts.release(stranger)
    assert counts.held[stranger] == 1 and counts.total == 3
    counts.release(stranger)
    assert stranger not in counts.held and counts.total == 2
    assert counts.admit(stranger)  # released: in again
    assert not counts.admit(stranger)  # under its cap, but the gateway is full for others
    assert [key for key, _ in reported] == [stranger, ("ip", "192.0.2.8"), stranger]
    assert "limit for other users" in reported[-1][1]


def test_open_files_target_is_the_hard_limit() -> None:
    assert open_files_target(1024, 524288, 1 << 20) == 524288
    assert open_files_target(1024, None, 1 << 20) == 1 << 20  # unlimited: the kernel's ceiling
    assert open_files_target(4096, 4096, 1 << 20) == 4096
    assert connection_ceiling(1024) == 512
    assert connection_ceiling(1) == 1


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.com", "::ffff:10.0.0.1"):
        assert not is_loopback(host), host


def test_tcp_beyond_loopback_needs_the_flag_and_a_key() -> None:
    assert tcp_refusal(None, public=False, tcp_keys=0, clients=CLIENTS) is None
    assert tcp_refusal("127.0.0.1:8080", public=False, tcp_keys=0, clients=CLIENTS) is None
    refused = tcp_refusal("0.0.0.0:8080", public=False, tcp_keys=3, clients=CLIENTS)
    assert refused is not None and "--tcp-public" in refused and "0.0.0.0" in refused
    no_keys = tcp_refusal("0.0.0.0:8080", public=True, tcp_keys=0, clients=CLIENTS)
    assert no_keys is not None and "--tcp-public" in no_keys and str(CLIENTS) in no_keys
    assert tcp_refusal("[::]:8080", public=True, tcp_keys=1, clients=CLIENTS) is None
    alone = tcp_refusal(None, public=True, tcp_keys=1, clients=CLIENTS)
    assert alone is not None and "--tcp" in alone
    with pytest.raises(UsageError, match="--tcp"):
        tcp_refusal("nonsense", public=True, tcp_keys=1, clients=CLIENTS)


def test_groups_read_at_accept_win() -> None:
    left, right = socket.socketpair()
    with left, right:
        peer = peer_of(left)
        assert peer is not None and peer.pid == os.getpid()
        assert peer_groups(peer) >= {os.getgid()}
        assert peer_groups(Peer(peer.pid, peer.uid, peer.gid, frozenset({4242}))) == {4242}
