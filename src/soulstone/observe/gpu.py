"""GPU memory through NVML (`nvidia-ml-py`), when there is an NVIDIA GPU and a driver.

Without the package, the library or a GPU, there is nothing to read: the
metrics are then absent rather than zero. NVML is opened once, on first use.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class GpuReading(NamedTuple):
    """One GPU's memory, in bytes."""

    gpu: int
    name: str
    used: int
    total: int


class GpuMemory:
    """Reads every GPU's memory; an empty list when NVML is not there."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False

    def _open(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                pynvml = importlib.import_module("pynvml")  # the optional extra `soulstone[gpu]`
                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # no package, no library, no driver, no GPU: none to read
                self._nvml = None
        return self._nvml

    def read(self) -> list[GpuReading]:
        """Each GPU's memory now ([] without NVML or when a reading fails)."""
        nvml = self._open()
        if nvml is None:
            return []
        try:
            found = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                found.append(GpuReading(index, name, int(memory.used), int(memory.total)))
            return found
        except Exception:
            return []
