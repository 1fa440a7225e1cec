"""`registry-svc serve`: takes the port, bootstraps the data dir (admin token, own node),
then runs the Robyn server as a child process group and owns its lifecycle.

The public port is held by the gate of the Rust extension (`rust/edge/`), which checks
every request head (body size, framing, method) before reading the body and forwards
what passes to the Robyn workers, which listen on a loopback port of their own.

Robyn alone ignores SIGTERM/SIGINT in single-process mode and keeps the port; the
supervisor turns either signal into a clean stop of the whole group. Every acknowledged
write is already committed to LMDB, so stopping the workers loses nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from registry_svc import _core, cluster_import, metrics, nodes, telemetry
from registry_svc.agent import NodeAgent
from registry_svc.auth import ensure_admin_token
from registry_svc.cluster import replica_state
from registry_svc.etcd import EtcdError, EtcdUnavailable
from registry_svc.gpu import GpuSampler
from registry_svc.lifecycle import SUPERVISOR_PID_ENV
from registry_svc.membership import Membership
from registry_svc.replica import ReplicaError, Replicator
from registry_svc.settings import Settings

log = logging.getLogger("registry_svc")

READY_TIMEOUT_S = 30.0
# How long a cluster server waits at start for its replica's first sync with etcd.
SYNC_TIMEOUT_S = 10.0
STOP_GRACE_S = 2.0
# Workers restarted after one died: more than MAX_RESTARTS in RESTART_WINDOW_S and the
# server exits non-zero instead (something kills them; a supervisor like systemd decides).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60
# Tokio threads of the gate: it only parses heads and copies bytes, so one per two cores
# (on 2 cores a second thread measured slower: it competes with the workers).
FRONT_THREADS = max(1, (os.cpu_count() or 2) // 2)


def _free_loopback_port() -> int:
    """A port for the workers to listen on behind the gate (loopback only)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _raise_open_files_limit() -> None:
    """The gate holds two descriptors per active connection (client and worker) and one
    per idle one: take the hard limit rather than the usual soft 1024."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_front(settings: Settings, store: _core.Store) -> tuple[_core.Front, Settings]:
    """Takes the public port (OSError if it is taken) and picks the workers' port. The gate
    answers instance lookups and picks from `store` itself (rust/reads.rs)."""
    internal = _free_loopback_port()
    front = settings.open_gate(store, settings.port, internal, FRONT_THREADS)
    return front, dataclasses.replace(settings, internal_port=internal)


def claim_data_port(settings: Settings) -> Settings:
    """Resolves the data port: the one asked for, or by default the API port + 1. The
    workers bind it with SO_REUSEPORT, which would let a second server on the same port
    share it silently: it is first bound here without, so a taken port is found. A taken
    default port is skipped with a warning; a taken explicit one is an OSError."""
    explicit = settings.data_port is not None
    port = settings.data_port if settings.data_port is not None else settings.port + 1
    if port == 0 or port > 65535:
        return dataclasses.replace(settings, data_port=0)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # Past the TIME_WAIT leftovers of connections the last run closed (sidecars
            # held many); a live listener still makes the bind fail.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((settings.host, port))
    except OSError as e:
        if explicit:
            raise OSError(e.errno, f"the data port {port}: {e.strerror or e}") from e
        log.warning("registry-svc: the default data port %d is taken (%s); running without a data port", port, e)
        return dataclasses.replace(settings, data_port=0)
    return dataclasses.replace(settings, data_port=port)


def check_dns_port(settings: Settings) -> None:
    """The workers bind the DNS port with SO_REUSEPORT (each answers its share), which
    would let a second server join a taken port silently: it is bound here first without,
    over UDP and TCP, so a taken port is an OSError naming it."""
    if not settings.dns_port:
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    for kind, name in ((socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")):
        try:
            with socket.socket(family, kind) as probe:
                if kind == socket.SOCK_STREAM:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((settings.host, settings.dns_port))
        except OSError as e:
            raise OSError(e.errno, f"the DNS port {settings.dns_port} ({name}): {e.strerror or e}") from e


def bootstrap(store: _core.Store, settings: Settings, gpus: GpuSampler) -> bool:
    """Creates the admin token (if needed) and this node's first record.
    Returns True when a new admin token was written."""
    if settings.clustered:
        try:
            created = cluster_import.ensure_admin_token(
                store, settings.etcd, settings.etcd_layout(), settings.admin_token_path
            )
        except (EtcdUnavailable, EtcdError) as e:
            log.warning("registry-svc: cannot check the cluster's admin token now (%s)", e)
            created = False
    else:
        created = ensure_admin_token(store, settings.admin_token_path)
    telemetry.prime_cpu()
    time.sleep(0.2)
    usage = telemetry.usage_sample(settings.data_dir)
    try:
        nodes.upsert_self(store, settings, usage, gpus.sample(settings.self_url))
    except _core.StoreError as e:
        # Cluster mode with etcd away: the agent writes the node at its next heartbeat.
        log.warning("registry-svc: this node's record is not written yet: %s", e)
    return created


def start_replica(settings: Settings, store: _core.Store) -> Replicator | None:
    """Starts the replicator and waits for its first sync with etcd. None (after logging
    why) when the server cannot start; with etcd away but a replica on disk, the server
    starts and serves it read-only until etcd is back."""
    # A replica worth serving is one that heard from etcd at least once: the replicator
    # writes its state (connected: false) before any contact too.
    had_replica = bool(replica_state(store).get("contact"))
    replicator = Replicator(store, settings.etcd, settings.etcd_layout(), settings.data_dir)
    try:
        replicator.check_data_dir()
        replicator.start()
    except ReplicaError as e:
        log.error("registry-svc: %s", e)
        return None
    if not replicator.wait_synced(SYNC_TIMEOUT_S):
        if not had_replica:
            log.error("registry-svc: cannot reach etcd at %s, and this data dir holds no replica to serve until it is "
                      "back: %s", ",".join(settings.etcd_endpoints), replicator.state.get("lastError"))  # fmt: skip
            replicator.stop()
            return None
        log.warning("registry-svc: etcd is unreachable; serving the replica at revision %d read-only until it is back",
                    store.index())  # fmt: skip
    return replicator


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


class WorkerWatch:
    """The processes of the worker group (Robyn's forks, or the group leader alone), to
    notice one that died while the group leader lives on. Only forks of the leader count
    (the same command line): a short-lived helper a worker runs (`git` for `/version`) is
    not a worker."""

    def __init__(self, child: subprocess.Popen[bytes] | psutil.Popen) -> None:
        self._leader = psutil.Process(child.pid)
        try:
            self._command = self._leader.cmdline()
        except psutil.Error:
            self._command = []
        self._known: dict[int, psutil.Process] = {}
        self._next = 0.0

    def dead(self) -> str | None:
        """The pid of a known worker that is gone (checked once a second), or None."""
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + 1.0
        with contextlib.suppress(psutil.Error):
            for p in self._leader.children(recursive=True):
                if p.pid in self._known:
                    continue
                with contextlib.suppress(psutil.Error):
                    if p.status() != psutil.STATUS_ZOMBIE and p.cmdline() == self._command:
                        self._known[p.pid] = p
        for pid, p in self._known.items():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                pass
            return str(pid)
        return None


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


def unsafe_data_dir(path: Path) -> str | None:
    """Why the data dir cannot be trusted with the admin secret and the store, or None.
    Like sshd and PostgreSQL: it must belong to the user the server runs as and be
    writable by no one else (another user could plant files or links in it)."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        return (
            f"it belongs to uid {info.st_uid}, not to this server's user (uid {os.geteuid()}); chown it or pick another"
        )
    if info.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}); chmod go-w it (700 is usual)"
    return None


def serve(settings: Settings) -> int:
    """Runs the server until SIGTERM/SIGINT or until the workers die. Returns the exit code."""
    _raise_open_files_limit()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    unsafe = unsafe_data_dir(Path(settings.data_dir))
    if unsafe:
        log.error("registry-svc: --data-dir %s: %s", settings.data_dir, unsafe)
        return 1
    metrics.prepare(settings.data_dir, settings.port)  # before any process imports prometheus_client
    # The processes' shared load-balancing state starts empty with each server.
    settings.balancer_state_path.unlink(missing_ok=True)
    settings.balancer_state_path.with_suffix(".load").unlink(missing_ok=True)  # load signals (rust/core/load.rs)
    # The supervisor keeps its own store handle for the node agent and the gate's reads.
    # The workers are exec'd, not forked from here, so they inherit no LMDB state.
    store = settings.open_store()
    if not settings.clustered:
        # The data dir may have been a cluster's replica before: this server answers alone.
        store.forget_replica()
    epp: _core.Epp | None = None
    try:
        settings = claim_data_port(settings)
        check_dns_port(settings)
        if settings.epp_port:
            epp = _core.Epp(settings.host, settings.epp_port, store)
        front, settings = open_front(settings, store)
    except OSError as e:
        if epp is not None:
            epp.close()
        store.close()
        in_use = (
            " (the address is already in use: is another registry-svc running?)" if e.errno == errno.EADDRINUSE else ""
        )
        log.error("registry-svc: %s%s", e.strerror or e, in_use)
        return 1
    replicator = None
    if settings.clustered:
        replicator = start_replica(settings, store)
        if replicator is None:
            front.close()
            store.close()
            return 1
    gpus = GpuSampler()
    metrics.setup(store, front)
    try:
        created = bootstrap(store, settings, gpus)
        return _supervise(settings, store, gpus, created)
    finally:
        front.close()
        if epp is not None:
            epp.close()
        gpus.close()
        if replicator is not None:
            replicator.stop()
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

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, start_new_session=True)

    child = spawn()
    membership = (
        Membership(settings.etcd, settings.etcd_layout(), settings.heartbeat_seconds) if settings.clustered else None
    )
    agent = NodeAgent(store, settings, gpus, membership)
    try:
        if not _wait_ready(settings, child) and not stopping:
            log.error("registry-svc: the server did not become ready (exit code %s)", child.poll())
            return 1
        agent.start()
        if not stopping:
            log.info("registry-svc configuration: %s", settings.describe())
            token_note = "new" if created else "existing"
            log.info(
                "registry-svc listening on http://%s:%d (%d process(es) x %d worker(s)); %s; data in %s; admin token (%s) in %s",
                settings.host, settings.port, settings.processes, settings.workers,
                (f"data plane on port {settings.data_port}" if settings.data_port else "no data port")
                + (f", DNS on port {settings.dns_port} for {settings.dns_domain}" if settings.dns_port else "")
                + (f", Envoy's endpoint picker (ext_proc) on port {settings.epp_port}" if settings.epp_port else ""),
                settings.store_path, token_note, settings.admin_token_path,
            )  # fmt: skip
        workers = WorkerWatch(child)
        restarts: list[float] = []
        while not stopping:
            code = child.poll()
            if code is not None:
                log.error("registry-svc: the server exited with code %d", code)
                return code or 1
            dead = workers.dead()
            if dead:
                # A worker that died took its share of the data port and the requests it
                # held; the group is started again, or the server exits when they keep dying.
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log.error(
                        "registry-svc: worker process %s died, the %d. time in %ds; exiting", dead, len(restarts),
                        RESTART_WINDOW_S,
                    )  # fmt: skip
                    return 1
                log.error("registry-svc: worker process %s died; restarting the workers", dead)
                metrics.worker_restarted()
                _stop(child)
                child = spawn()
                if not _wait_ready(settings, child) and not stopping:
                    log.error("registry-svc: the restarted workers did not become ready (exit code %s)", child.poll())
                    return 1
                log.warning("registry-svc: workers restarted")
                workers = WorkerWatch(child)
            time.sleep(0.1)
        log.warning("registry-svc: stopping (signal %d)", stopping[0])
        return 0
    finally:
        _stop(child)
        agent.stop()
        if membership is not None:
            with contextlib.suppress(EtcdUnavailable, EtcdError):
                membership.leave()
