"""XDG locations soulstone reads and writes, resolved once from an environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _xdg(env: Mapping[str, str], name: str, fallback: Path) -> Path:
    value = env.get(name, "")
    # The XDG spec says relative values are invalid and must be ignored.
    return Path(value) if value and os.path.isabs(value) else fallback


@dataclass(frozen=True)
class Paths:
    """Resolved folders: config (codex, clients), data, cache, state and runtime."""

    config: Path
    data: Path
    cache: Path
    state: Path
    runtime: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Paths:
        """Resolve the soulstone folders from XDG variables (default: os.environ)."""
        env = os.environ if env is None else env
        home = Path(env.get("HOME") or Path.home())
        runtime_root = _xdg(env, "XDG_RUNTIME_DIR", Path(f"/run/user/{os.getuid()}"))
        return cls(
            config=_xdg(env, "XDG_CONFIG_HOME", home / ".config") / "soulstone",
            data=_xdg(env, "XDG_DATA_HOME", home / ".local" / "share") / "soulstone",
            cache=_xdg(env, "XDG_CACHE_HOME", home / ".cache") / "soulstone",
            state=_xdg(env, "XDG_STATE_HOME", home / ".local" / "state") / "soulstone",
            runtime=runtime_root / "soulstone",
        )

    @property
    def codex(self) -> Path:
        """The default codex folder: `$XDG_CONFIG_HOME/soulstone/soulstones/`."""
        return self.config / "soulstones"

    @property
    def councils(self) -> Path:
        """The default council folder: `$XDG_CONFIG_HOME/soulstone/councils/`."""
        return self.config / "councils"

    @property
    def memory(self) -> Path:
        """The councils' resonance memory (embedded Qdrant): `$XDG_DATA_HOME/soulstone/memory/`."""
        return self.data / "memory"

    @property
    def kube_manifests(self) -> Path:
        """Where `forge --kube` writes by default: `$XDG_CONFIG_HOME/soulstone/kube/`."""
        return self.config / "kube"

    @property
    def quadlet_units(self) -> Path:
        """The user's Quadlet folder: `$XDG_CONFIG_HOME/containers/systemd/`."""
        return self.config.parent / "containers" / "systemd"

    @property
    def systemd_units(self) -> Path:
        """The user's systemd unit folder: `$XDG_CONFIG_HOME/systemd/user/`."""
        return self.config.parent / "systemd" / "user"
