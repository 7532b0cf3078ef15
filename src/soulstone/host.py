"""Detect what this machine offers: Podman, a user systemd, GPUs and their memory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from soulstone.codex.facts import HostFacts
from soulstone.codex.models import DeclaredRuntime
from soulstone.errors import UsageError

RUNTIME_ENV = "SOULSTONE_DEFAULT_RUNTIME"
GENERATOR_ENV = "SOULSTONE_QUADLET"
GENERATOR_PATHS = ("/usr/libexec/podman/quadlet", "/usr/lib/podman/quadlet")
_AMD_VENDOR = "0x1002"
_RUNTIMES: tuple[DeclaredRuntime, ...] = ("quadlet", "podman", "process")


def _nvidia_memory() -> int | None:
    try:
        import pynvml  # type: ignore[import-not-found]  # optional: nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            return sum(int(pynvml.nvmlDeviceGetMemoryInfo(h).total) for h in handles) or None
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def _amd_memory(drm: Path) -> int | None:
    total = 0
    for card in sorted(drm.glob("card[0-9]*")):
        try:
            if (card / "device" / "vendor").read_text().strip() == _AMD_VENDOR:
                total += int((card / "device" / "mem_info_vram_total").read_text())
        except (OSError, ValueError):
            continue
    return total or None


def find_generator(env: Mapping[str, str] | None = None) -> Path | None:
    """Podman's quadlet generator: `$SOULSTONE_QUADLET`, else where Podman installs it."""
    env = os.environ if env is None else env
    for candidate in (env.get(GENERATOR_ENV, ""), *GENERATOR_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def detect_host(env: Mapping[str, str] | None = None) -> HostFacts:
    """Look at this machine once; `SOULSTONE_DEFAULT_RUNTIME` overrides the container default."""
    env = os.environ if env is None else env
    wanted = env.get(RUNTIME_ENV) or None
    override = next((name for name in _RUNTIMES if name == wanted), None)
    if wanted is not None and override is None:
        raise UsageError(f"{RUNTIME_ENV}={wanted!r}: expected 'quadlet', 'podman' or 'process'")
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    has_user_systemd = bool(runtime_dir) and Path(runtime_dir, "systemd", "private").exists()
    vendor: str | None = None
    memory = _nvidia_memory()
    if memory is not None or Path("/proc/driver/nvidia/gpus").is_dir():
        vendor = "nvidia"
    elif (amd := _amd_memory(Path("/sys/class/drm"))) is not None:
        vendor, memory = "amd", amd
    return HostFacts(
        has_podman=shutil.which("podman", path=env.get("PATH")) is not None,
        has_quadlet_generator=find_generator(env) is not None,
        has_user_systemd=has_user_systemd and shutil.which("systemctl") is not None,
        gpu_vendor=vendor,
        gpu_memory_bytes=memory,
        runtime_override=override,
    )


def gpu_memory_by_pid() -> dict[int, int]:
    """GPU memory used per process (bytes) through NVML; empty without NVML or a GPU."""
    try:
        import pynvml
    except ImportError:
        return {}
    used: dict[int, int] = {}
    try:
        pynvml.nvmlInit()
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    memory = int(process.usedGpuMemory or 0)
                    used[process.pid] = used.get(process.pid, 0) + memory
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return {}
    return used
