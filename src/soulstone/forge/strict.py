"""The codex as a strict gateway runs it: container engines offline, on Unix sockets.

`soulstone forge --strict` writes units whose containers have no network and
serve on `%t/soulstone/engines/<unit>.sock`. A strict gateway must reach
them there, and the podman runtime must run them the same way, so a strict
gateway works on this view of the codex: each container soulstone (podman or
quadlet runtime) without a declared socket serves on that socket instead of
its port. Process-runtime soulstones run as declared (`audit --strict` flags
one on TCP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from soulstone.codex.engines import serve_on_socket
from soulstone.codex.fields import SOCKET_PATH_MAX
from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import CodexError, Problem
from soulstone.forge.units import strict_socket_name

CONTAINER_RUNTIMES = frozenset({"podman", "quadlet"})


def engine_sockets(runtime_folder: Path) -> Path:
    """Where strict engines' sockets are on the host: `$XDG_RUNTIME_DIR/soulstone/engines`."""
    return runtime_folder / "engines"


def _offline(soulstone: Soulstone, folder: Path) -> Soulstone | Problem:
    if soulstone.runtime not in CONTAINER_RUNTIMES or soulstone.socket is not None:
        return soulstone
    path = str(folder / strict_socket_name(soulstone))
    argv = serve_on_socket(soulstone.engine, soulstone.argv, path)
    if argv is None:
        return Problem(soulstone.file, soulstone.id, "engine",
                       f"strict mode serves engines on Unix sockets only, and soulstone cannot "
                       f"make {soulstone.engine} serve on one: declare `socket` with an exec that "
                       "serves on it")  # fmt: skip
    if len(path.encode()) > SOCKET_PATH_MAX:
        return Problem(soulstone.file, soulstone.id, "socket",
                       f"the strict engine socket {path} is longer than {SOCKET_PATH_MAX} "
                       "bytes: use a shorter XDG_RUNTIME_DIR or declare `socket`")  # fmt: skip
    return replace(soulstone, socket=path, port=None, port_expose=False, argv=argv)


def strict_codex(codex: Codex, runtime_folder: Path) -> Codex:
    """The strict view of a codex; CodexError names each soulstone that cannot go offline."""
    folder = engine_sockets(runtime_folder)
    results = [_offline(s, folder) for s in codex.soulstones]
    problems = tuple(r for r in results if isinstance(r, Problem))
    if problems:
        raise CodexError(problems, codex.warnings)
    soulstones = tuple(r for r in results if isinstance(r, Soulstone))
    return replace(codex, soulstones=soulstones)


def strict_loader(load: Callable[[], Codex], runtime_folder: Path) -> Callable[[], Codex]:
    """A codex loader that returns the strict view (for `serve --strict` and its reloads)."""
    return lambda: strict_codex(load(), runtime_folder)
