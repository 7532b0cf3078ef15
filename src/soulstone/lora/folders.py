"""Folders soulstone owns (the adapter registry and cache): made 0700 whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FOLDER = 0o700


def private_folder(path: Path) -> Path:
    """Make `path` and each missing parent 0700 (`mkdir -p` would leave parents 0755).

    A folder that exists already keeps its mode (`soulstone audit` reports a
    wide one); a file in the way raises FileExistsError or NotADirectoryError.
    """
    missing: list[Path] = []
    folder = path
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_FOLDER)
        except FileExistsError:
            continue  # made by someone else meanwhile: theirs to set
        os.chmod(folder, PRIVATE_FOLDER)  # mkdir's mode went through the umask
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a folder")
    return path
