"""Editing clients.yaml: comments and order kept, read back as the gateway reads it, locked."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from soulstone.guard.clients import ClientsFileError, KeyDecl
from soulstone.guard.keys import hash_key, new_key
from soulstone.guard.store import add_client, load_clients, locked, revoke_keys, text

COMMENTED = """\
# who may call the gateway
gateway: {max_parallel: 4}   # small box
clients:
    # alice is me
    alice:
        users: [alice]   # my login
        keys:
          - {id: 1234e567, hash: "scrypt:16384:8:1:AAAA:AAAA"}   # the old laptop
    bob:
        admin: yes  # the boss
"""


@pytest.fixture
def commented(tmp_path: Path) -> Path:
    path = tmp_path / "clients.yaml"
    path.write_text(COMMENTED)
    path.chmod(0o640)
    return path


def comment_lines(source: str) -> list[str]:
    return [line.split("#", 1)[1] for line in source.splitlines() if "#" in line]


def test_add_and_revoke_keep_comments_and_order(commented: Path) -> None:
    key, ident = new_key()
    add_client(commented, "alice", users=["4001"], key=KeyDecl(id=ident, hash=hash_key(key)))
    add_client(commented, "yes", groups=["on"], models=["m1", "m2"], admin=True)
    assert revoke_keys(commented, "alice", "1234e567") == 1
    assert revoke_keys(commented, "alice", "1234e567") == 0  # already revoked: no change
    edited = commented.read_text()
    assert comment_lines(edited) == comment_lines(COMMENTED)
    assert edited.startswith("# who may call the gateway\ngateway: {max_parallel: 4}")
    assert edited.index("alice:") < edited.index("bob:") < edited.index('"yes":')
    assert "\n        users: [alice, " in edited  # the file's own 4-space indentation
    assert (commented.stat().st_mode & 0o777) == 0o600
    loaded = load_clients(commented)  # as the gateway reads it
    assert loaded is not None and loaded.gateway.max_parallel == 4
    alice, bob, odd = loaded.clients["alice"], loaded.clients["bob"], loaded.clients["yes"]
    assert alice.users == ["alice", "4001"]
    assert [(k.id, k.revoked) for k in alice.keys] == [("1234e567", True), (ident, False)]
    assert bob.admin and not alice.admin
    assert (odd.groups, odd.models, odd.admin) == (["on"], ["m1", "m2"], True)


def test_a_new_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "clients.yaml"
    key, ident = new_key()
    add_client(path, "bot", key=KeyDecl(id=ident, hash=hash_key(key), transports=["tcp"]))
    assert path.read_text().startswith("# soulstone clients")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    lock = path.with_name("clients.yaml.lock")
    assert (lock.stat().st_mode & 0o777) == 0o600
    loaded = load_clients(path)
    assert loaded is not None and loaded.clients["bot"].keys[0].transports == ["tcp"]


def test_bad_files_and_edits_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text("clients:\n  a: {limits: {concurrent: 0}}\n")
    path.chmod(0o600)
    with pytest.raises(ClientsFileError, match=rf"{path}: clients\.a\.limits\.concurrent"):
        add_client(path, "b")
    path.write_text("clients: {a: {}}\n")
    with pytest.raises(ClientsFileError, match=f"{path}: no client named 'c'"):
        revoke_keys(path, "c")
    shared = "clients:\n  a: &same {users: [u1]}\n  b: *same\n"
    path.write_text(shared)
    with pytest.raises(ClientsFileError, match="would not read back as intended"):
        add_client(path, "b", users=["u2"])  # the edit would change `a` too
    assert path.read_text() == shared
    path.write_text("clients: {a: {}}\nclients: {b: {}}\n")
    with pytest.raises(ClientsFileError, match=f"{path}: cannot edit it"):
        add_client(path, "c")  # duplicate keys: which one would we edit?
    path.chmod(0o644)
    with pytest.raises(ClientsFileError, match="wider than 0640"):
        add_client(path, "c")


def test_scalars_read_back_as_themselves() -> None:
    assert text("alice") == "alice"
    for tricky in ("yes", "on", "4001", "1:20", "a: b", "", " x", "#x", "[x]", "1.5", "~"):
        assert text(tricky) == tricky and type(text(tricky)) is not str, tricky
    assert text(True) == "true" and text(7) == "7"
    assert type(text("3f2a9c1e", quote=True)) is not str


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    fd = None
    try:
        with locked(path):
            fd = os.open(path.with_name("clients.yaml.lock"), os.O_RDWR)
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the edit is done
    finally:
        if fd is not None:
            os.close(fd)
