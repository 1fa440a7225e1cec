"""Cluster test harness: real etcd members on loopback, a fault-injecting TCP proxy per
registry server, and the suite's own reader of etcd (independent of the server's code).

etcd comes from Debian's `etcd-server` (installed by `make test`). Members run with
`--unsafe-no-fsync`, since the tests kill processes, not machines.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from conftest import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def etcd_call(endpoint: str, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One JSON-gateway call to `endpoint` (`127.0.0.1:port`)."""
    host, _, port = endpoint.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, orjson.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer: dict[str, Any] = orjson.loads(resp.read() or b"{}")
        if resp.status != 200:
            raise RuntimeError(f"{endpoint}{path}: HTTP {resp.status}: {answer}")
        return answer
    finally:
        conn.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Member:
    name: str
    directory: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def command(self, initial_cluster: str, state: str) -> list[str]:
        return [
            ETCD, "--name", self.name, "--data-dir", str(self.directory / self.name),
            "--listen-client-urls", f"http://{self.endpoint}", "--advertise-client-urls", f"http://{self.endpoint}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", "registry-svc-tests",
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            "--unsafe-no-fsync", "--experimental-watch-progress-notify-interval", "2s",
            "--logger", "zap", "--log-level", "error",
        ]  # fmt: skip

    def start(self, initial_cluster: str, state: str = "new") -> None:
        log = (self.directory / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(self.command(initial_cluster, state), stdout=log, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def status(self) -> dict[str, Any]:
        return etcd_call(self.endpoint, "/v3/maintenance/status", {}, timeout=2)


class EtcdCluster:
    """`size` etcd members on loopback ports, in `directory`."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.members = [Member(f"m{i}", directory) for i in range(1, size + 1)]
        self.initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for member in self.members:
            member.start(self.initial)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, RuntimeError):
                if self.leader() is not None:
                    etcd_call(self.endpoints[0], "/v3/kv/put", {"key": b64(b"/probe"), "value": ""})
                    return self
            time.sleep(0.1)
        raise RuntimeError("etcd cluster did not elect a leader")

    def leader(self) -> Member | None:
        for member in self.members:
            with contextlib.suppress(OSError, RuntimeError):
                status = member.status()
                if status.get("leader") == status["header"]["member_id"]:
                    return member
        return None

    def restart(self, member: Member) -> None:
        member.start(self.initial, state="existing")

    def stop(self) -> None:
        for member in self.members:
            member.kill9()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A call to the first member that answers."""
        errors = []
        for endpoint in self.endpoints:
            try:
                return etcd_call(endpoint, path, body)
            except (OSError, RuntimeError) as e:
                errors.append(str(e))
        raise RuntimeError("; ".join(errors))

    def records(self, prefix: str = "/registry-svc/") -> tuple[int, dict[tuple[str, str], tuple[int, bytes]]]:
        """The suite's own read of every record under `prefix` in etcd, at one revision:
        (revision, {(collection, id): (mod_revision, value)})."""
        start = f"{prefix}v1/rec/".encode()
        answer = self.call("/v3/kv/range", {"key": b64(start), "range_end": b64(start[:-1] + b"0")})
        out = {}
        for kv in answer.get("kvs") or []:
            collection, _, record_id = base64.b64decode(kv["key"])[len(start) :].decode().partition("/")
            out[(collection, record_id)] = (int(kv["mod_revision"]), base64.b64decode(kv.get("value", "")))
        return int(answer["header"]["revision"]), out

    def compact(self) -> int:
        revision = int(self.call("/v3/kv/range", {"key": b64(b"/probe")})["header"]["revision"])
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision


COLLECTION_TAGS = {1: "instances", 2: "definitions", 3: "nodes", 4: "tokens"}


def replica_records(data_dir: Path) -> tuple[int, dict[tuple[str, str], tuple[int, bytes]]]:
    """A replica's records read straight from its LMDB files with py-lmdb (not the server's
    code): (applied revision, {(collection, id): (version, json)})."""
    import lmdb

    env = lmdb.open(str(data_dir / "store"), readonly=True, lock=False, max_dbs=4, subdir=True)
    try:
        records_db = env.open_db(b"records", create=False)
        meta_db = env.open_db(b"meta", create=False)
        out = {}
        with env.begin() as txn:
            applied = int.from_bytes(txn.get(b"index", db=meta_db) or b"\0" * 8, "big")
            for key, value in txn.cursor(db=records_db):
                out[(COLLECTION_TAGS[key[0]], key[1:].decode())] = (int.from_bytes(value[:8], "big"), bytes(value[8:]))
        return applied, out
    finally:
        env.close()


class FaultProxy:
    """A TCP proxy from a loopback port to `target`, with modes: `pass` (forward), `blackhole`
    (a silent partition: connections stay open and new ones are accepted, but no byte moves
    either way until healed, as when a network drops every packet and TCP keeps
    retransmitting) and `reset` (close every connection, refuse new ones)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.mode = "pass"
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        assert mode in ("pass", "blackhole", "reset")
        with self._lock:
            previous, self.mode = self.mode, mode
            if mode == "reset":
                for sock in list(self._pairs):
                    self._close(sock)
            elif mode == "blackhole" and previous != "blackhole":
                for sock in self._pairs:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(sock)
            elif mode == "pass" and previous == "blackhole":
                for sock in self._pairs:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.register(sock, selectors.EVENT_READ)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        with self._lock:
            for sock in list(self._pairs):
                self._close(sock)
        self.listener.close()

    def _close(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with self._lock:
                    if sock is self.listener:
                        self._accept()
                    elif sock in self._pairs:
                        self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.mode == "reset":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.mode == "pass":
                self._selector.register(s, selectors.EVENT_READ)
        self._pairs[client] = upstream
        self._pairs[upstream] = client

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        peer = self._pairs[sock]
        try:
            peer.setblocking(True)
            peer.settimeout(2)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close(sock)
