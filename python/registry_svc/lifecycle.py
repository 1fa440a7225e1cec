"""Process lifetime: the server processes must not outlive the supervisor.

The supervisor starts the Robyn server in its own process group so that it can stop it
as a whole; if the supervisor itself is killed (SIGKILL, OOM), nothing would stop the
server, which would keep the port. On Linux each server process therefore asks the kernel
for SIGKILL when its parent dies (PR_SET_PDEATHSIG): the Robyn parent when the supervisor
dies, each forked Robyn worker when the Robyn parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
SUPERVISOR_PID_ENV = "REGISTRY_SVC_SUPERVISOR_PID"


def die_with_parent(expected_parent: int | None = None) -> None:
    """Asks for SIGKILL when this process's parent exits (Linux; elsewhere a no-op).

    `expected_parent` closes the race where the parent died before the request: then this
    process already has another parent, and it exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = expected_parent or os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:
        os._exit(1)
