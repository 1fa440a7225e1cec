"""GPU telemetry from NVML (package `nvidia-ml-py`, module `pynvml`).

NVML is initialised once per process. Without an NVIDIA driver or library the sampler logs
one line and reports `[]` from then on: no retry storm. A field a GPU does not support is
null, never a reason to drop the GPU. Units: MiB, W, degrees C, percent.

Memory comes from NVML's v2 memory call where the driver has it: its `used` is what
`nvidia-smi` shows, while v1's `used` also counts memory the driver reserves for itself
(615 MiB on an idle H200 that nvidia-smi showed at 0 MiB). The reserved amount is
reported beside it as `memoryReserved` (null where only v1 exists).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger("registry_svc")

COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}
MIB = 1024 * 1024


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuSampler:
    """Samples every NVIDIA GPU of this machine. Call `sample` from a timer, not per request."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml: ModuleType | None = None
        self._cuda_version: str | None = None
        try:
            module = nvml if nvml is not None else importlib.import_module("pynvml")
            module.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
            log.info("no NVIDIA GPU telemetry (%s); nodes report gpus: []", e)
            return
        self._nvml = module
        version = self._field(module.nvmlSystemGetCudaDriverVersion)
        if isinstance(version, int):
            self._cuda_version = f"{version // 1000}.{(version % 1000) // 10}"

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def _field(self, read: Callable[..., Any], *args: Any) -> Any:
        """The value `read(*args)` returns, or None if NVML cannot give it for this GPU."""
        assert self._nvml is not None
        try:
            return read(*args)
        except self._nvml.NVMLError:
            return None

    def sample(self, node_url: str) -> list[dict[str, Any]]:
        """One record per GPU, as the node's `gpus` array wants them."""
        nvml = self._nvml
        if nvml is None:
            return []
        count = self._field(nvml.nvmlDeviceGetCount)
        gpus = []
        for index in range(count or 0):
            handle = self._field(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            memory, reserved = self._memory(handle)
            utilization = self._field(nvml.nvmlDeviceGetUtilizationRates, handle)
            pci = self._field(nvml.nvmlDeviceGetPciInfo, handle)
            pstate = self._field(nvml.nvmlDeviceGetPerformanceState, handle)
            power = self._field(nvml.nvmlDeviceGetPowerUsage, handle)
            power_cap = self._field(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            mode = self._field(nvml.nvmlDeviceGetComputeMode, handle)
            name = self._field(nvml.nvmlDeviceGetName, handle)
            uuid = self._field(nvml.nvmlDeviceGetUUID, handle)
            gpus.append(
                {
                    "id": f"{node_url}:{index}",
                    "intraNodeId": index,
                    "name": None if name is None else _text(name),
                    "uuid": None if uuid is None else _text(uuid),
                    "busId": None if pci is None else _text(pci.busId),
                    "temperature": self._field(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
                    "performanceState": None if pstate is None else f"P{pstate}",
                    "powerUsage": None if power is None else round(power / 1000, 1),
                    "powerCap": None if power_cap is None else round(power_cap / 1000, 1),
                    "memoryUsage": None if memory is None else int(memory.used // MIB),
                    "memoryTotal": None if memory is None else int(memory.total // MIB),
                    "memoryReserved": None if reserved is None else int(reserved // MIB),
                    "gpuUtilization": None if utilization is None else utilization.gpu,
                    "computeMode": None if mode is None else COMPUTE_MODES.get(mode, str(mode)),
                    "cudaVersion": self._cuda_version,
                }
            )
        return gpus

    def _memory(self, handle: Any) -> tuple[Any, int | None]:
        """(memory info, reserved bytes): v2 where the driver has it, else v1 and None."""
        nvml = self._nvml
        assert nvml is not None
        v2 = getattr(nvml, "nvmlMemory_v2", None)
        if v2 is not None:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=v2)
                return info, getattr(info, "reserved", None)
            except (nvml.NVMLError, TypeError):  # an older driver, or a binding without `version`
                pass
        return self._field(nvml.nvmlDeviceGetMemoryInfo, handle), None

    def close(self) -> None:
        if self._nvml is not None:
            self._field(self._nvml.nvmlShutdown)
            self._nvml = None
