"""Read and write `clients.yaml` safely: our own file, never wider than 0640, never in a repo."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from soulstone.files import replace_file
from soulstone.guard.clients import ClientsDecl, ClientsFileError, parse_clients

MAX_MODE = 0o640


def _inside_checkout(path: Path) -> Path | None:
    for folder in path.resolve().parents:
        if (folder / ".git").exists():
            return folder
    return None


def check_file(path: Path) -> None:
    """Refuse a clients file that others may read or change, or that lives in a checkout."""
    info = path.stat()
    if info.st_uid != os.getuid():
        raise ClientsFileError(f"{path} is owned by uid {info.st_uid}, not by this user "
                               f"({os.getuid()}): refusing it")  # fmt: skip
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~MAX_MODE:
        raise ClientsFileError(f"{path} has mode {mode:04o}, wider than 0640: others could "
                               f"read its key hashes or change it (chmod 600 {path})")  # fmt: skip
    checkout = _inside_checkout(path)
    if checkout is not None:
        raise ClientsFileError(
            f"{path} lies inside the repository {checkout}: keep it out of version control "
            "(the default is $XDG_CONFIG_HOME/soulstone/)"
        )


def load_clients(path: Path) -> ClientsDecl | None:
    """The clients file, checked and validated; None when it does not exist."""
    if not path.exists():
        return None
    check_file(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ClientsFileError(f"{path}: cannot read it: {error}") from None
    return parse_clients(document, str(path))


def save_clients(path: Path, clients: ClientsDecl) -> None:
    """Write the clients file atomically with mode 0600."""
    text = "# soulstone clients (SPEC C5). Keys are stored as scrypt hashes.\n" + yaml.safe_dump(
        clients.model_dump(mode="json", exclude_defaults=True), sort_keys=False
    )
    replace_file(path, text.encode("utf-8"))
