"""A fake `pynvml` for tests: two GPUs; the second cannot report power (NotSupported).

Memory as a real driver reports it: the first GPU knows the v2 memory call, whose `used`
leaves out the driver-reserved memory that v1's `used` counts (615 MiB, as measured on an
H200 where nvidia-smi showed 0 MiB used); the second has only v1 (FunctionNotFound).

Put this directory first on PYTHONPATH of a server process to give it these GPUs.
"""

from __future__ import annotations

from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_FUNCTION_NOT_FOUND = 13
nvmlMemory_v2 = 0x02000028


class NVMLError(Exception):
    def __init__(self, value: int = 999) -> None:
        super().__init__(value)
        self.value = value


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


_GPUS = [
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa", "bus": "00000000:04:00.0", "temp": 48, "pstate": 0,
     "power": 71200, "cap": 700000, "used": 2592, "reserved": 615, "total": 81559, "util": 35, "mode": 0},
    {"name": "NVIDIA A10", "uuid": "GPU-bbbb", "bus": "00000000:05:00.0", "temp": 61, "pstate": 2,
     "power": None, "cap": None, "used": 20000, "reserved": None, "total": 23028, "util": 90, "mode": 3},
]  # fmt: skip
MIB = 1024 * 1024


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlSystemGetCudaDriverVersion() -> int:
    return 12020


def nvmlDeviceGetCount() -> int:
    return len(_GPUS)


def nvmlDeviceGetHandleByIndex(index: int) -> dict[str, object]:
    return _GPUS[index]


def nvmlDeviceGetName(h: dict[str, object]) -> object:
    return h["name"]


def nvmlDeviceGetUUID(h: dict[str, object]) -> object:
    return h["uuid"]


def nvmlDeviceGetPciInfo(h: dict[str, object]) -> SimpleNamespace:
    return SimpleNamespace(busId=h["bus"])


def nvmlDeviceGetTemperature(h: dict[str, object], sensor: int) -> object:
    return h["temp"]


def nvmlDeviceGetPerformanceState(h: dict[str, object]) -> object:
    return h["pstate"]


def _power(value: object) -> object:
    if value is None:
        raise NVMLError_NotSupported()
    return value


def nvmlDeviceGetPowerUsage(h: dict[str, object]) -> object:
    return _power(h["power"])


def nvmlDeviceGetEnforcedPowerLimit(h: dict[str, object]) -> object:
    return _power(h["cap"])


def nvmlDeviceGetMemoryInfo(h: dict[str, object], version: int | None = None) -> SimpleNamespace:
    used, total = int(h["used"]), int(h["total"])  # type: ignore[call-overload]
    reserved = h["reserved"]
    if version is None:  # v1: `used` includes what the driver reserves
        used += int(reserved or 0)  # type: ignore[call-overload]
        return SimpleNamespace(used=used * MIB, total=total * MIB, free=(total - used) * MIB)
    if version != nvmlMemory_v2 or reserved is None:
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
    free = total - used - int(reserved)  # type: ignore[call-overload]
    return SimpleNamespace(
        version=version,
        used=used * MIB,
        reserved=int(reserved) * MIB,
        total=total * MIB,
        free=free * MIB,  # type: ignore[call-overload]
    )


def nvmlDeviceGetUtilizationRates(h: dict[str, object]) -> SimpleNamespace:
    return SimpleNamespace(gpu=h["util"], memory=10)


def nvmlDeviceGetComputeMode(h: dict[str, object]) -> object:
    return h["mode"]
