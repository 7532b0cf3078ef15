"""Guard rails in isolation: keys, clients file, identities, limits, budgets, audit checks."""

from __future__ import annotations

import asyncio
import base64
import grp
import hashlib
import os
import pwd
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import load, write
from soulstone.guard.audit import audit_caches, audit_clients, audit_codex, audit_socket
from soulstone.guard.budget import Budget, BudgetExceeded, OutputAsk, budget_for, fit
from soulstone.guard.clients import (
    OWNER,
    ClientDecl,
    ClientsDecl,
    ClientsFileError,
    GatewayDecl,
    KeyDecl,
    LimitsDecl,
    client_of,
    parse_clients,
)
from soulstone.guard.identity import Identities, Peer, Unknown, peer_of
from soulstone.guard.keys import hash_key, is_slow, key_id, new_key, verify_key
from soulstone.guard.limits import ClientLimiter, Refused, Slots
from soulstone.guard.store import check_file, load_clients, save_clients


def legacy_entry(key: str, n: int = 2**10) -> str:
    """A key stored the way earlier versions did: `scrypt:N:r:p:salt:digest`."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=n, r=8, p=1, dklen=32)
    salt_text, digest_text = (base64.urlsafe_b64encode(b).decode().rstrip("=")
                              for b in (salt, digest))  # fmt: skip
    return f"scrypt:{n}:8:1:{salt_text}:{digest_text}"


def test_keys_hash_and_verify() -> None:
    key, ident = new_key()
    assert key.startswith(f"ss-{ident}-") and key_id(key) == ident
    stored = hash_key(key)
    assert stored.startswith("hmac-sha256:") and key not in stored and not is_slow(stored)
    assert stored != hash_key(key)  # a fresh salt each time
    assert verify_key(key, stored)
    assert not verify_key(key + "x", stored)
    assert not verify_key(key, stored[:-4] + "AAAA")
    assert not verify_key("ss-\udcff", stored)  # undecodable header text is just wrong
    for broken in ("md5:whatever", "hmac-sha256:", "hmac-sha256:a:b:c", "hmac-sha256:!:?",
                   "scrypt:x:8:1:a:b", "scrypt:3:8:1:AAAA:AAAA", ""):  # fmt: skip
        assert not verify_key(key, broken)
    old = legacy_entry(key)
    assert is_slow(old) and verify_key(key, old)  # files written before keep working
    assert not verify_key(key + "x", old)
    assert key_id("sk-something") is None


def test_clients_file_errors_name_the_field() -> None:
    with pytest.raises(ClientsFileError, match=r"c\.yaml: clients\.a\.limits\.concurrent"):
        parse_clients({"clients": {"a": {"limits": {"concurrent": 0}}}}, "c.yaml")
    with pytest.raises(ClientsFileError, match=r"clients\.a\.colour"):
        parse_clients({"clients": {"a": {"colour": "red"}}}, "c.yaml")
    assert parse_clients(None, "c.yaml") == ClientsDecl()


def test_clients_file_must_be_ours_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    save_clients(path, ClientsDecl(clients={"a": ClientDecl(admin=True)}))
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = load_clients(path)
    assert loaded is not None and loaded.clients["a"].admin
    path.chmod(0o640)
    check_file(path)
    path.chmod(0o644)
    with pytest.raises(ClientsFileError, match="0644, wider than 0640"):
        load_clients(path)
    path.chmod(0o600)
    os.chown(path, 65534, -1)
    with pytest.raises(ClientsFileError, match="owned by uid 65534"):
        check_file(path)
    os.chown(path, os.getuid(), -1)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    inside = repo / "conf" / "clients.yaml"
    save_clients(inside, ClientsDecl())
    with pytest.raises(ClientsFileError, match="inside the repository"):
        check_file(inside)
    assert load_clients(tmp_path / "missing.yaml") is None


async def test_identities_map_peers_and_keys() -> None:
    key, ident = new_key()
    revoked, revoked_id = new_key()
    unix_only, unix_id = new_key()
    clients = ClientsDecl(clients={
        "alice": ClientDecl(users=[4001], models=["m"]),
        "team": ClientDecl(groups=[5001]),
        "robot": ClientDecl(keys=[KeyDecl(id=ident, hash=hash_key(key)),
                                  KeyDecl(id=revoked_id, hash=hash_key(revoked), revoked=True),
                                  KeyDecl(id=unix_id, hash=hash_key(unix_only),
                                          transports=["unix"])]),
    })  # fmt: skip
    identities = Identities(clients, own_uid=1000)
    assert identities.of_peer(Peer(os.getpid(), 4001, 4001)).name == "alice"
    assert identities.of_peer(Peer(-1, 4002, 5001)).name == "team"  # primary group
    assert identities.of_peer(Peer(-1, 1000, 1000)) is OWNER
    with pytest.raises(Unknown):
        identities.of_peer(Peer(-1, 4003, 4003))
    assert (await identities.of_key(key, "tcp")).name == "robot"
    assert (await identities.of_key(key, "tcp")).name == "robot"  # remembered
    for bad in (revoked, key + "x", "ss-00000000-" + "a" * 30):
        with pytest.raises(Unknown):
            await identities.of_key(bad, "tcp")
    assert (await identities.of_key(unix_only, "unix")).name == "robot"
    with pytest.raises(Unknown, match="over tcp"):
        await identities.of_key(unix_only, "tcp")
    headers = {"Authorization": "Bearer none"}
    with pytest.raises(Unknown, match="TCP"):
        await identities.identify({}, None)
    with pytest.raises(Unknown):
        await identities.identify(headers, None)  # on TCP any key is checked
    left, right = socket.socketpair()
    with left, right:  # on the socket, an SDK's placeholder falls back to the peer
        assert (await Identities(None).identify(headers, peer_of(left))) is OWNER


async def test_every_refusal_does_the_same_work() -> None:
    key, ident = new_key()
    revoked, revoked_id = new_key()
    old_key, old_id = new_key()
    clients = ClientsDecl(clients={"robot": ClientDecl(keys=[
        KeyDecl(id=ident, hash=hash_key(key)),
        KeyDecl(id=revoked_id, hash=hash_key(revoked), revoked=True),
        KeyDecl(id=old_id, hash=legacy_entry(old_key)),
    ])})  # fmt: skip
    calls: list[tuple[str, bool]] = []

    def counting(given: str, stored: str) -> bool:
        calls.append((stored.split(":")[0], threading.current_thread() is threading.main_thread()))
        return verify_key(given, stored)

    identities = Identities(clients, own_uid=1000, verify=counting)
    wrong_secret = f"ss-{ident}-" + "a" * 43
    unknown_id = "ss-00000000-" + "a" * 43
    for refused in (wrong_secret, unknown_id, revoked, "not-a-key", key + "x"):
        calls.clear()
        with pytest.raises(Unknown, match="unknown or revoked"):
            await identities.of_key(refused, "tcp")
        assert calls == [("hmac-sha256", True)], refused  # one check, same scheme, each time
    calls.clear()
    assert (await identities.of_key(key, "tcp")).name == "robot"
    assert (await identities.of_key(key, "unix")).name == "robot"
    assert calls == [("hmac-sha256", True)]  # a verified key is remembered
    calls.clear()
    with pytest.raises(Unknown):
        await identities.of_key(f"ss-{old_id}-" + "b" * 43, "tcp")
    assert (await identities.of_key(old_key, "tcp")).name == "robot"
    await identities.of_key(old_key, "tcp")
    assert calls == [("scrypt", False), ("scrypt", False)]  # off the event loop, once per key


def test_identities_follow_users_and_groups_made_after_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: set[str] = set()

    def getpwnam(name: str) -> SimpleNamespace:
        if name in made:
            return SimpleNamespace(pw_uid=4100)
        raise KeyError(name)

    def getgrnam(name: str) -> SimpleNamespace:
        if name in made:
            return SimpleNamespace(gr_gid=4200)
        raise KeyError(name)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(grp, "getgrnam", getgrnam)
    clients = ClientsDecl(clients={"newbie": ClientDecl(users=["newbie"]),
                                   "crew": ClientDecl(groups=["crew"])})  # fmt: skip
    before = Identities(clients, own_uid=1000)
    for peer in (Peer(-1, 4100, 4100), Peer(-1, 4300, 4200)):
        with pytest.raises(Unknown):
            before.of_peer(peer)
    made.update({"newbie", "crew"})  # `useradd` and `groupadd` happen; then a reload
    after = Identities(clients, own_uid=1000)
    assert after.of_peer(Peer(-1, 4100, 4100)).name == "newbie"
    assert after.of_peer(Peer(-1, 4300, 4200)).name == "crew"
    monkeypatch.undo()  # names no system accepts map to nobody, without an error
    assert Identities(ClientsDecl(clients={"odd": ClientDecl(users=["a\0b", "²"])})).by_uid == {}


def test_the_gateway_user_stays_owner_when_its_group_is_a_client() -> None:
    own = Peer(-1, 1000, 5001)  # primary group 5001
    team = ClientsDecl(clients={"team": ClientDecl(groups=[5001])})
    assert Identities(team, own_uid=1000).of_peer(own) is OWNER
    assert Identities(team, own_uid=1000).of_peer(Peer(-1, 4001, 5001)).name == "team"
    named = ClientsDecl(clients={"me": ClientDecl(users=[1000]), "team": ClientDecl(groups=[5001])})
    assert Identities(named, own_uid=1000).of_peer(own).name == "me"  # an explicit entry wins


def test_client_limits_refuse_with_retry_after() -> None:
    now = [0.0]
    limiter = ClientLimiter(clock=lambda: now[0])
    limits = LimitsDecl(requests_per_minute=3, tokens_per_minute=100, concurrent=2)
    client = client_of("c", ClientDecl(limits=limits))
    first = limiter.admit(client)
    second = limiter.admit(client)
    with pytest.raises(Refused) as caught:
        limiter.admit(client)
    assert (caught.value.status, caught.value.code) == (429, "CONCURRENCY_LIMITED")
    limiter.settle(client, first, 60)
    limiter.settle(client, second, 50)
    with pytest.raises(Refused) as caught:
        limiter.admit(client)
    assert caught.value.code == "TOKEN_RATE_LIMITED" and caught.value.retry_after == 60
    now[0] = 61.0  # the window moved on
    for _ in range(3):
        limiter.settle(client, limiter.admit(client), 0)
    with pytest.raises(Refused) as caught:
        limiter.admit(client)
    assert caught.value.code == "RATE_LIMITED"


async def test_slots_queue_then_refuse() -> None:
    slots = Slots(limit=1, queue=1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert slots.waiting == 1
    with pytest.raises(Refused) as caught:
        await slots.acquire()
    assert (caught.value.status, caught.value.code) == (503, "GATEWAY_BUSY")
    slots.release()
    await waiter  # the queued one got the slot
    slots.release()
    assert slots.in_flight == 0


def test_budget_boundaries() -> None:
    budget = Budget(max_context_tokens=100, max_output_tokens=40)
    assert fit(60, OutputAsk(40), budget) == 40  # fits exactly
    with pytest.raises(BudgetExceeded) as caught:
        fit(61, OutputAsk(40), budget)
    assert (caught.value.prompt_tokens, caught.value.max_tokens, caught.value.limit) == (
        61,
        40,
        100,
    )
    with pytest.raises(BudgetExceeded) as caught:
        fit(1, OutputAsk(41), budget)
    assert caught.value.limit == 40
    assert fit(90, OutputAsk(None), budget) == 10  # a missing max_tokens gets what remains
    assert fit(10, OutputAsk(None), budget) == 40
    with pytest.raises(BudgetExceeded):
        fit(100, OutputAsk(None), budget)
    assert fit(None, OutputAsk(5), budget) == 5
    tight = budget_for(GatewayDecl(), LimitsDecl(max_context_tokens=512), None,
                       LimitsDecl(max_output_tokens=64))  # fmt: skip
    assert tight == Budget(512, 64)


def test_audit_checks(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "api.sock"))
    os.chmod(folder / "api.sock", 0o666)
    found = [str(f) for f in audit_socket(folder / "api.sock")]
    assert any("socket folder has mode 0755" in f for f in found)
    assert any("socket has mode 0666" in f for f in found)
    folder.chmod(0o700)
    os.chmod(folder / "api.sock", 0o660)
    assert audit_socket(folder / "api.sock") == []
    sock.close()
    cache = tmp_path / "hub"
    cache.mkdir()
    cache.chmod(0o755)
    assert "0755, not 0700" in str(audit_caches([cache])[0])
    cache.chmod(0o700)
    assert audit_caches([cache, tmp_path / "absent"]) == []
    clients = tmp_path / "clients.yaml"
    clients.write_text("clients: {}\n")
    clients.chmod(0o644)
    assert "wider than 0640" in str(audit_clients(clients)[0])
    codex = write(tmp_path / "codex", {"a.toml": (
        '[a]\nport = 1\nexec = ["vllm", "serve", "m", "--api-key", "abc"]\n'
        'env = { HF_TOKEN = "hf_abcdefghijklmnopqrstuvwxyz0123456789", OK = "1", '
        'MY_SECRET = "hunter2", KEY_FILE = "/run/secrets/key" }\n'
    )})  # fmt: skip
    findings = [str(f) for f in audit_codex(load(codex))]
    assert any("env.HF_TOKEN" in f for f in findings)
    assert any("env.MY_SECRET" in f for f in findings)
    assert any("exec" in f and "argument 5" in f for f in findings)
    assert not any("env.OK" in f or "KEY_FILE" in f for f in findings)
