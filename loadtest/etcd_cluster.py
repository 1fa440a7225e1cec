"""Real etcd members on loopback for the cluster tests and benchmarks: a 3-member cluster
started from Debian's `etcd-server` (installed by `make test` and `make bench`), and the
suite's own reader of etcd through its JSON gateway, independent of the server's code.

Test members run with `--unsafe-no-fsync` (the tests kill processes, not machines); the
benchmark's members sync as in production.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    fsync: bool = False

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
            "--experimental-watch-progress-notify-interval", "2s",
            "--logger", "zap", "--log-level", "error",
            *([] if self.fsync else ["--unsafe-no-fsync"]),
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

    def __init__(self, directory: Path, size: int = 3, fsync: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.members = [Member(f"m{i}", directory, fsync=fsync) for i in range(1, size + 1)]
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
