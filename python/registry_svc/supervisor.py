"""`registry-svc serve`: checks the port, bootstraps the data dir (admin token, own node),
then runs the Robyn server as a child process group and owns its lifecycle.

Robyn alone ignores SIGTERM/SIGINT in single-process mode and keeps the port; the
supervisor turns either signal into a clean stop of the whole group. Every acknowledged
write is already committed to LMDB, so stopping the workers loses nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from registry_svc import _core, nodes, telemetry
from registry_svc.agent import NodeAgent
from registry_svc.auth import ensure_admin_token
from registry_svc.gpu import GpuSampler
from registry_svc.lifecycle import SUPERVISOR_PID_ENV
from registry_svc.settings import Settings

log = logging.getLogger("registry_svc")

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 2.0


class PortInUse(Exception):
    """The listen address is taken."""


def check_port(host: str, port: int) -> None:
    """Raises PortInUse if host:port has a listener. Robyn itself would start silently
    beside another server (SO_REUSEPORT) or spin asking for another port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR lets the probe past TIME_WAIT leftovers of a previous run while still
        # failing on a live listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(f"cannot listen on {host}:{port}: the address is already in use") from None
            raise


def bootstrap(store: _core.Store, settings: Settings, gpus: GpuSampler) -> bool:
    """Creates the admin token (if needed) and this node's first record.
    Returns True when a new admin token was written."""
    created = ensure_admin_token(store, settings.admin_token_path)
    telemetry.prime_cpu()
    time.sleep(0.2)
    usage = telemetry.usage_sample(settings.data_dir)
    nodes.upsert_self(store, settings, usage, gpus.sample(settings.self_url))
    return created


def _wait_ready(settings: Settings, child: subprocess.Popen[bytes]) -> bool:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else ("[::1]" if settings.host == "::" else settings.host)
    url = f"http://{host}:{settings.port}/health"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    return False


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker group, then SIGKILL for whatever is left after the grace."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The Robyn parent may be gone while forked workers linger in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        return


def serve(settings: Settings) -> int:
    """Runs the server until SIGTERM/SIGINT or until the workers die. Returns the exit code."""
    try:
        check_port(settings.host, settings.port)
    except PortInUse as e:
        log.error("registry-svc: %s (is another registry-svc running?)", e)
        return 1
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    # The supervisor keeps its own store handle for the node agent. The workers are
    # exec'd, not forked from here, so they inherit no LMDB state.
    store = settings.open_store()
    gpus = GpuSampler()
    try:
        created = bootstrap(store, settings, gpus)
        return _supervise(settings, store, gpus, created)
    finally:
        gpus.close()
        store.close()


def _supervise(settings: Settings, store: _core.Store, gpus: GpuSampler, created: bool) -> int:
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    argv = [
        sys.executable, "-m", "registry_svc.server",
        "--processes", str(settings.processes), "--workers", str(settings.workers),
        "--log-level", "WARN", "--disable-openapi",
    ]  # fmt: skip
    env = {**os.environ, **settings.to_env(), SUPERVISOR_PID_ENV: str(os.getpid())}
    child = subprocess.Popen(argv, env=env, start_new_session=True)
    agent = NodeAgent(store, settings, gpus)
    try:
        if not _wait_ready(settings, child) and not stopping:
            log.error("registry-svc: the server did not become ready (exit code %s)", child.poll())
            return 1
        agent.start()
        if not stopping:
            token_note = "new" if created else "existing"
            log.warning(
                "registry-svc listening on http://%s:%d (%d process(es) x %d worker(s)); data in %s; admin token (%s) in %s",
                settings.host, settings.port, settings.processes, settings.workers,
                settings.store_path, token_note, settings.admin_token_path,
            )  # fmt: skip
        while not stopping:
            code = child.poll()
            if code is not None:
                log.error("registry-svc: the server exited with code %d", code)
                return code or 1
            time.sleep(0.1)
        log.warning("registry-svc: stopping (signal %d)", stopping[0])
        return 0
    finally:
        _stop(child)
        agent.stop()
