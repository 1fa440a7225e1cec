"""Node usage sampling with psutil: CPU in cores, memory and disk in bytes."""

from __future__ import annotations

from typing import Any

import psutil


def prime_cpu() -> None:
    """psutil's first `cpu_percent(None)` is always 0.0; call this once at start."""
    psutil.cpu_percent(interval=None)


def usage_sample(disk_path: str) -> dict[str, Any]:
    """`{cpu, memory, disk}`, each `{used, total, percent}`.

    CPU percent is since the previous call (prime it first); disk is the filesystem that
    holds `disk_path` (the data dir).
    """
    cores = psutil.cpu_count(logical=True) or 1
    cpu_percent = float(psutil.cpu_percent(interval=None))
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    return {
        "cpu": {"used": round(cores * cpu_percent / 100, 3), "total": cores, "percent": cpu_percent},
        "memory": {
            "used": int(memory.total - memory.available),
            "total": int(memory.total),
            "percent": float(memory.percent),
        },
        "disk": {"used": int(disk.used), "total": int(disk.total), "percent": float(disk.percent)},
    }
