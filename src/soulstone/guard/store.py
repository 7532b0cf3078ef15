"""Read and write `clients.yaml` safely: our own file, never wider than 0640, never in a repo.

Edits (`add_client`, `revoke_keys`) keep the user's comments and key order: ruamel.yaml
edits the file's tree with every scalar kept as text, and PyYAML, the gateway's own
reader, alone decides what the result means; an edit that would not read back as
intended writes nothing. Edits hold an exclusive lock on `<file>.lock` beside the
file, re-read the file inside it and replace it atomically (mode 0600).
"""

from __future__ import annotations

import fcntl
import io
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelError
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from soulstone.files import looseness, replace_file
from soulstone.guard.clients import (
    ClientDecl,
    ClientsDecl,
    ClientsFileError,
    KeyDecl,
    parse_clients,
)

MAX_MODE = 0o640
HEADER = "soulstone clients (SPEC C5). Keys are stored as salted keyed hashes."
T = TypeVar("T")
Change = Callable[[ClientsDecl, CommentedMap], tuple[ClientsDecl, T]]


def _inside_checkout(path: Path) -> Path | None:
    for folder in path.resolve().parents:
        if (folder / ".git").exists():
            return folder
    return None


def check_file(path: Path) -> None:
    """Refuse a clients file that others may read or change, or that lives in a checkout."""
    loose = looseness(path, MAX_MODE)
    if loose is not None:
        raise ClientsFileError(f"{path} {loose}: others could read its key hashes or change "
                               f"it; refusing it (chmod 600 {path})")  # fmt: skip
    checkout = _inside_checkout(path)
    if checkout is not None:
        raise ClientsFileError(
            f"{path} lies inside the repository {checkout}: keep it out of version control "
            "(the default is $XDG_CONFIG_HOME/soulstone/)"
        )


def parse_text(text: str, where: str) -> ClientsDecl:
    """The clients file's text, read as the gateway reads it; ClientsFileError naming `where`."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ClientsFileError(f"{where}: cannot read it: {error}") from None
    return parse_clients(document, where)


def _read(path: Path) -> str | None:
    if not path.exists():
        return None
    check_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ClientsFileError(f"{path}: cannot read it: {error}") from None


def load_clients(path: Path) -> ClientsDecl | None:
    """The clients file, checked and validated; None when it does not exist."""
    text = _read(path)
    return None if text is None else parse_text(text, str(path))


def save_clients(path: Path, clients: ClientsDecl) -> None:
    """Write a whole clients file from a declaration, atomically with mode 0600."""
    text = f"# {HEADER}\n" + yaml.safe_dump(
        clients.model_dump(mode="json", exclude_defaults=True), sort_keys=False
    )
    with locked(path):
        replace_file(path, text.encode("utf-8"))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive edit lock of a clients file: `<name>.lock` beside it, made 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise ClientsFileError(f"{lock}: cannot open the lock file: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


class _Textual(VersionedResolver):
    """A resolver that types nothing: every scalar stays the text it was written as."""

    @property
    def versioned_resolver(self) -> Any:
        """No implicit types, whatever the YAML version."""
        return {}


def _editor() -> YAML:
    editor = YAML(typ="rt", pure=True)
    editor.Resolver = _Textual
    editor.preserve_quotes = True
    editor.width = 4096  # a key's hash stays on its line
    return editor


def _indents(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) as ruamel counts them, from the text's first blocks."""
    mapping: int | None = None
    sequence: tuple[int, int] | None = None
    opener: int | None = None  # the indentation of a `key:` line that opens a block
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        lead = len(line) - len(stripped)
        if opener is not None and stripped.startswith("- ") and lead >= opener:
            if sequence is None:  # a list under `key:`, its dash indented by `offset`
                rest = stripped[1:]
                offset = lead - opener
                sequence = (offset + 1 + len(rest) - len(rest.lstrip(" ")), offset)
        elif opener is not None and lead > opener and mapping is None:
            mapping = lead - opener
        opener = lead if stripped.rstrip().endswith(":") and not stripped.startswith("-") else None
    mapping = mapping if mapping is not None and 2 <= mapping <= 8 else 2
    seq, offset = sequence if sequence is not None else (mapping + 2, mapping)
    offset = min(max(offset, 0), 8)
    return mapping, max(seq, offset + 2), offset


def text(value: str | int | bool, *, quote: bool = False) -> str:
    """A scalar for the edited tree that PyYAML reads back as `value` (quoted when needed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not quote:
        try:
            quote = yaml.safe_load(value) != value
        except yaml.YAMLError:
            quote = True
    return DoubleQuotedScalarString(value) if quote else value


def _mapping(parent: CommentedMap, key: str, where: str) -> CommentedMap:
    """The block mapping at `parent[key]`, made when absent."""
    if key not in parent or parent[key] is None:
        parent[text(key)] = CommentedMap()
    found = parent[key]
    if not isinstance(found, CommentedMap):
        raise ClientsFileError(f"{where}: {key}: expected a mapping here")
    return found


def _sequence(parent: CommentedMap, key: str, where: str) -> CommentedSeq:
    """The sequence at `parent[key]`, made when absent."""
    if key not in parent or parent[key] is None:
        parent[key] = CommentedSeq()
    found = parent[key]
    if not isinstance(found, CommentedSeq):
        raise ClientsFileError(f"{where}: {key}: expected a list here")
    return found


def edit_clients(path: Path, change: Change[T]) -> T:
    """Change the clients file under its lock, keeping comments and order.

    `change(current, tree)` gets the file as validated and its editable tree (a new
    one, with a header comment, when the file is absent), edits the tree (scalars
    via `text`) and returns the declaration it meant to produce with its own result.
    Nothing is written when that equals the file as it was, or when the edited text
    would not read back as exactly that declaration.
    """
    where = str(path)
    with locked(path):
        before = _read(path)
        current = parse_text(before or "", where)
        editor = _editor()
        try:
            tree = editor.load(before or "")
        except RuamelError as error:
            raise ClientsFileError(f"{where}: cannot edit it: {error}") from None
        if tree is None:
            tree = CommentedMap()
            tree.yaml_set_start_comment(HEADER)
        if not isinstance(tree, CommentedMap):
            raise ClientsFileError(f"{where}: (top): expected a mapping")
        intended, result = change(current, tree)
        editor.indent(*_indents(before or ""))
        stream = io.StringIO()
        editor.dump(tree, stream)
        after = stream.getvalue()
        if parse_text(after, where).model_dump() != intended.model_dump():
            raise ClientsFileError(f"{where}: this edit would not read back as intended "
                                   "(anchors or merge keys?); nothing was written")  # fmt: skip
        if intended.model_dump() != current.model_dump() or before is None:
            replace_file(path, after.encode("utf-8"), mode=0o600)
        return result


def add_client(
    path: Path,
    name: str,
    users: Iterable[str] = (),
    groups: Iterable[str] = (),
    models: list[str] | None = None,
    admin: bool = False,
    key: KeyDecl | None = None,
) -> None:
    """Add a client, or add users, groups, a key to it; set its models; make it admin."""

    def change(current: ClientsDecl, tree: CommentedMap) -> tuple[ClientsDecl, None]:
        old = current.clients.get(name, ClientDecl())
        entry = _mapping(_mapping(tree, "clients", path.name), name, f"{path}: clients")
        field = f"{path}: clients.{name}"
        update: dict[str, Any] = {}
        for kind, have, wanted in (("users", old.users, users), ("groups", old.groups, groups)):
            known = {str(v) for v in have}
            extra = [v for v in dict.fromkeys(wanted) if v not in known]
            if extra:
                _sequence(entry, kind, field).extend(text(v) for v in extra)
                update[kind] = [*have, *extra]
        if key is not None:
            declared = key.model_dump(mode="json", exclude_defaults=True)
            written = CommentedMap((k, v if k == "transports" else text(v, quote=k == "id"))
                                   for k, v in declared.items())  # fmt: skip
            _sequence(entry, "keys", field).append(written)
            update["keys"] = [*old.keys, key]
        if models is not None:
            entry["models"] = CommentedSeq(text(m) for m in models)
            update["models"] = models
        if admin and not old.admin:
            entry["admin"] = text(True)
            update["admin"] = True
        merged = old.model_copy(update=update)
        return current.model_copy(update={"clients": {**current.clients, name: merged}}), None

    edit_clients(path, change)


def revoke_keys(path: Path, name: str, key_id: str | None = None) -> int:
    """Revoke a client's keys (all, or the one with `key_id`); how many were not revoked yet."""

    def change(current: ClientsDecl, tree: CommentedMap) -> tuple[ClientsDecl, int]:
        if name not in current.clients:
            raise ClientsFileError(f"{path}: no client named {name!r}")
        declared = current.clients[name]
        hits = [i for i, k in enumerate(declared.keys) if key_id in (None, k.id) and not k.revoked]
        if not hits:
            return current, 0
        entry = _mapping(_mapping(tree, "clients", path.name), name, f"{path}: clients")
        written = _sequence(entry, "keys", f"{path}: clients.{name}")
        keys = list(declared.keys)
        for i in hits:
            if not isinstance(written[i], CommentedMap):
                raise ClientsFileError(f"{path}: clients.{name}.keys.{i}: expected a mapping")
            written[i]["revoked"] = text(True)
            keys[i] = keys[i].model_copy(update={"revoked": True})
        updated = {**current.clients, name: declared.model_copy(update={"keys": keys})}
        return current.model_copy(update={"clients": updated}), len(hits)

    return edit_clients(path, change)
