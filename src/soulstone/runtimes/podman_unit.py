"""A soulstone's container commands, read from the unit Podman's quadlet generator makes.

One source of truth: the podman runtime forges the soulstone's `.container`
unit exactly as `soulstone forge` does, runs Podman's own quadlet generator
on it, and takes the generated service's commands (`ExecStartPre=`,
`ExecStart=`, `ExecStopPost=`, `Environment=`) with systemd's rules. Only
what exists because systemd runs the service changes (`outside_systemd`):
the keeper waits for `podman run` in the foreground instead of systemd
waiting for a notification.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from soulstone.codex.models import Soulstone
from soulstone.forge.units import ForgeOptions, container_unit, qualified_image
from soulstone.runtimes.base import StartError
from soulstone.runtimes.systemd_exec import (
    UnitCommand,
    UnitCommandError,
    exec_command,
    expand_specifiers,
    service_settings,
    specifier_table,
    split_words,
)

GENERATOR_TIMEOUT_S = 30
# `podman run` options that exist for systemd: detach (systemd waits for the
# notification instead), the cgroup split (needs the unit's delegated cgroup),
# the notify mode (no NOTIFY_SOCKET outside systemd) and the health checks
# (Podman runs them from systemd timers; outside systemd soulstone probes health).
DETACH = frozenset({"-d", "--detach"})
HEALTH = "--health-"
CGROUPS_SPLIT = "--cgroups=split"
SDNOTIFY = "--sdnotify"
SDNOTIFY_OUTSIDE = "--sdnotify=ignore"


@dataclass(frozen=True)
class ContainerCommands:
    """What the generated service runs, with specifiers resolved for this user."""

    container: str
    prepare: tuple[UnitCommand, ...]
    generated: tuple[str, ...]
    run: tuple[str, ...]
    cleanup: tuple[UnitCommand, ...]
    environment: dict[str, str]
    cidfile: str | None


def specifiers(soulstone: Soulstone, env: Mapping[str, str]) -> dict[str, str]:
    """The values of the specifiers a user service sees (`%t`, `%N`, `%h` …)."""
    home = env.get("HOME") or str(Path.home())
    uid = os.getuid()
    return {
        "t": env.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}",
        "N": soulstone.unit, "p": soulstone.unit, "n": f"{soulstone.unit}.service",
        "h": home, "U": str(uid), "u": env.get("USER") or getpass.getuser(),
        "T": env.get("TMPDIR") or "/tmp", "V": env.get("TMPDIR") or "/var/tmp",
        "S": env.get("XDG_STATE_HOME") or f"{home}/.local/state",
        "C": env.get("XDG_CACHE_HOME") or f"{home}/.cache",
        "E": env.get("XDG_CONFIG_HOME") or f"{home}/.config",
    }  # fmt: skip


def outside_systemd(argv: tuple[str, ...], image: str) -> tuple[str, ...]:
    """The generated `podman run` as a foreground command that a keeper can wait for.

    Only `podman run`'s own options change (never the engine's): no detach,
    no `--cgroups=split`, no `--health-*` (each takes a value), and
    `--sdnotify=ignore`.
    """
    if len(argv) < 3 or Path(argv[0]).name != "podman" or argv[1] != "run":
        raise StartError(f"the generated service does not run `podman run`: {argv[:2]}")
    try:
        at = argv.index(image, 2)
    except ValueError:
        raise StartError(f"the generated `podman run` does not name the image {image}") from None
    options: list[str] = []
    words = iter(argv[2:at])
    for word in words:
        if word in DETACH or word == CGROUPS_SPLIT:
            continue
        if word.startswith(HEALTH):
            if "=" not in word:
                next(words, None)  # its value
            continue
        options.append(SDNOTIFY_OUTSIDE if word.startswith(SDNOTIFY + "=") else word)
    return (*argv[:2], *options, *argv[at:])


def _cidfile(argv: tuple[str, ...]) -> str | None:
    for i, word in enumerate(argv):
        if word.startswith("--cidfile="):
            return word.removeprefix("--cidfile=")
        if word == "--cidfile" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def generate_service(unit_name: str, unit_text: str, generator: Path, folder: Path) -> str:
    """Run Podman's quadlet generator on one `.container` unit; return the `.service` text."""
    units, generated = folder / "units", folder / "generated"
    shutil.rmtree(folder, ignore_errors=True)
    units.mkdir(parents=True, mode=0o700)
    generated.mkdir(mode=0o700)
    (units / unit_name).write_text(unit_text, encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder),
           "QUADLET_UNIT_DIRS": str(units)}  # fmt: skip
    try:
        result = subprocess.run(
            [str(generator), "-user", "-no-kmsg-log", str(generated)], env=env,
            capture_output=True, text=True, timeout=GENERATOR_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StartError(f"cannot run Podman's quadlet generator {generator}: {error}") from None
    service = generated / (Path(unit_name).stem + ".service")
    if result.returncode != 0 or not service.exists():
        detail = result.stderr.strip() or f"exit {result.returncode}, no service written"
        raise StartError(f"Podman's quadlet generator refused {unit_name}: {detail}")
    return service.read_text(encoding="utf-8")


def container_commands(
    soulstone: Soulstone, strict: bool, generator: Path, folder: Path, env: Mapping[str, str]
) -> ContainerCommands:
    """Forge the soulstone's unit, generate its service, and read back its commands."""
    assert soulstone.image is not None
    unit, problems, _ = container_unit(soulstone, [soulstone], ForgeOptions(strict=strict))
    if unit is None:
        raise StartError("; ".join(f"{p.field}: {p.message}" for p in problems))
    text = generate_service(unit.name, unit.text, generator, folder)
    value = specifier_table(specifiers(soulstone, env))
    prepare: list[UnitCommand] = []
    cleanup: list[UnitCommand] = []
    start: UnitCommand | None = None
    environment: dict[str, str] = {}
    try:
        for key, setting in service_settings(text):
            if key == "ExecStartPre":
                prepare.append(exec_command(setting, value))
            elif key == "ExecStart":
                start = exec_command(setting, value)
            elif key == "ExecStopPost":
                cleanup.append(exec_command(setting, value))
            elif key == "Environment":
                for word in split_words(expand_specifiers(setting, value)):
                    name, _, content = word.partition("=")
                    environment[name] = content
    except UnitCommandError as error:
        raise StartError(f"cannot read the generated service of {soulstone.id}: {error}") from None
    if start is None:
        raise StartError(f"the generated service of {soulstone.id} has no ExecStart=")
    return ContainerCommands(
        container=soulstone.unit, prepare=tuple(prepare), generated=start.argv,
        run=outside_systemd(start.argv, qualified_image(soulstone.image)),
        cleanup=tuple(cleanup), environment=environment, cidfile=_cidfile(start.argv),
    )  # fmt: skip
