"""What this installation is: package version, git commit, Python, the Rust extension's
build. Used by `GET /version`, `oo version` and `registry-svc --version` (no Robyn here:
importing Robyn parses the command line)."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from registry_svc import _core


@functools.cache
def version_info() -> dict[str, Any]:
    try:
        version = metadata.version("registry-svc")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "commit": _git_commit(), "python": platform.python_version(), "core": _core.__build__}


def _git_commit() -> str | None:
    """The commit of the checkout the package runs from, if it runs from one."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def describe(info: dict[str, Any]) -> str:
    """`0.1.0 (commit abc123, Python 3.11.7, registry-svc-core 0.1.0 (release))`."""
    commit = info.get("commit") or "unknown"
    return f"{info.get('version')} (commit {commit}, Python {info.get('python')}, {info.get('core')})"
