"""Facts about the host and the model files that validation and advice depend on."""

from __future__ import annotations

from dataclasses import dataclass

from soulstone.codex.models import DeclaredRuntime


@dataclass(frozen=True)
class HostFacts:
    """What the machine offers: container tooling, a user systemd, GPUs."""

    has_podman: bool = False
    has_quadlet_generator: bool = False
    has_user_systemd: bool = False
    gpu_vendor: str | None = None
    gpu_memory_bytes: int | None = None
    runtime_override: DeclaredRuntime | None = None

    @property
    def container_runtime(self) -> DeclaredRuntime:
        """The runtime for a soulstone with an image and no explicit `runtime`.

        `quadlet` where Podman and a user systemd exist, `podman` where Podman
        (with its quadlet generator) exists alone, `process` otherwise.
        """
        if self.runtime_override is not None:
            return self.runtime_override
        if self.has_podman and self.has_user_systemd:
            return "quadlet"
        return "podman" if self.has_podman and self.has_quadlet_generator else "process"


@dataclass(frozen=True)
class ModelFiles:
    """What the local model files say: weight bytes and quantization method."""

    weight_bytes: int
    quant_method: str | None = None
