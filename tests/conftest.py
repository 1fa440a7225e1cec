"""Test harness: real `registry-svc serve` processes on free loopback ports, temp data dirs,
and a small HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

ADMIN = object()  # sentinel: use the server's admin token
NETSPY = str(Path(__file__).parent / "netspy")
LOOPBACK_ONLY = ["--probe-networks", "127.0.0.0/8,::1/128"]
# Made-up hosts and private addresses may be registered only with this check: nothing
# probes them (the probe fence would refuse anyway; this keeps tests honest about it).
NO_CHECK = {"type": "none"}


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Polls `condition` until it returns something truthy (returned), or fails after
    `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LoopbackHTTP:
    """A threaded HTTP server on a free loopback port, answering with `handler`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Backend(LoopbackHTTP):
    """A local HTTP server (loopback) answering every GET with its name, and `/metrics`
    with one Prometheus counter."""

    def __init__(self, name: str = "ok") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                metrics = f'up_test_total{{backend="{name}"}} 1\n'
                body = (metrics if self.path == "/metrics" else name).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.name = name
        super().__init__(Handler)


@contextlib.contextmanager
def prometheus(workdir: Path, scrape_configs: str) -> Iterator[int]:
    """A real Prometheus (Debian's) on a loopback port with the given `scrape_configs:`
    YAML (scraping every second); yields its web port."""
    web = free_port()
    config = workdir / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n" + scrape_configs)
    with (workdir / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{web}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield web
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def prometheus_query(web: int, path: str) -> Any:
    """The JSON answer of Prometheus's API at `path`, or None while it does not answer."""
    conn = http.client.HTTPConnection("127.0.0.1", web, timeout=2)
    try:
        conn.request("GET", path)
        return orjson.loads(conn.getresponse().read())
    except (OSError, orjson.JSONDecodeError):  # not up yet, or still starting ("Service Unavailable")
        return None
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_dns_port() -> int:
    """A loopback port free over both TCP and UDP."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def is_loopback_target(body: dict[str, Any]) -> bool:
    """Whether a registration body addresses this machine."""
    target = str(body.get("url") or body.get("ip") or body.get("host") or "").lower()
    return any(local in target for local in ("127.0.0.1", "localhost", "::1"))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def index(self) -> int:
        return int(self.headers["x-registry-index"])


@dataclass
class Server:
    """One `registry-svc serve` process tree."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    # Explicit, so that no test server takes another's port + 1 by default.
    data_port: int = field(default_factory=free_port)
    processes: int = 1
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        # Two free_port() calls may return the same port (each socket closes before the
        # next bind): the server would refuse --data-port equal to --port.
        while self.data_port == self.port:
            self.data_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_url(self) -> str:
        return f"http://127.0.0.1:{self.data_port}"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr (a file, so a chatty server never blocks)."""
        return self.data_dir.parent / f"server-{self.port}.log"

    @property
    def netspy_path(self) -> Path:
        return self.data_dir.parent / f"netspy-{self.port}.log"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "registry_svc", "serve", "--port", str(self.port),
            "--data-port", str(self.data_port), "--data-dir", str(self.data_dir), "--processes", str(self.processes), *LOOPBACK_ONLY, *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> Server:
        self._workers_port = None  # each start picks its own
        env = {**os.environ, "OB_SELF_URL": "", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (NETSPY, env.get("PYTHONPATH", "")) if p)
        env["REGISTRY_SVC_NETSPY"] = str(self.netspy_path)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-4000:]}")
            try:
                if self.call("GET", "/health", token=None, timeout=1).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            self.kill9()

    def kill9(self) -> None:
        """SIGKILL the supervisor and every process under it at once."""
        if self.proc is None:
            return
        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=10)
        self.assert_no_traffic_left_the_machine()

    def worker_processes(self) -> list[psutil.Process]:
        """The Robyn worker processes (and their forking parent) under the supervisor."""
        assert self.proc is not None
        tree = psutil.Process(self.proc.pid).children(recursive=True)
        return [p for p in tree if "registry_svc.server" in " ".join(p.cmdline())]

    def workers_port(self) -> int:
        """The loopback port the Robyn workers listen on behind the gate (asked directly,
        an answer is the workers' own, whatever the gate would do)."""
        known = getattr(self, "_workers_port", None)
        if known is not None:
            return int(known)
        for proc in self.worker_processes():
            for c in proc.net_connections("tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port not in (self.port, self.data_port):
                    self._workers_port = int(c.laddr.port)
                    return self._workers_port
        raise AssertionError("no worker listens")

    def workers_holding_connections(self) -> set[int]:
        """Worker processes with an open connection on their own port (the gate's pooled
        ones, or a test's own to `workers_port`)."""
        holding = set()
        for proc in self.worker_processes():
            sockets = proc.net_connections("tcp")
            listening = {c.laddr.port for c in sockets if c.status == psutil.CONN_LISTEN}
            if any(c.status == psutil.CONN_ESTABLISHED and c.laddr.port in listening for c in sockets):
                holding.add(proc.pid)
        return holding

    def assert_no_traffic_left_the_machine(self) -> None:
        """Fails if any server process resolved or connected to anything but loopback."""
        if self.netspy_path.exists() and self.netspy_path.read_text():
            raise AssertionError(f"the server touched the network beyond loopback:\n{self.netspy_path.read_text()}")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: Any = ADMIN,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        data_port: bool = False,
    ) -> Reply:
        """One request on the API port (or on the data port)."""
        port = self.data_port if data_port else self.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if token is ADMIN:
                token = self.admin_token
            if token is not None:
                hdrs["Authorization"] = f"Bearer {token}"
            payload = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
            if payload is not None:
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def token(self, role: str, slug: str | None = None) -> str:
        """A new token of `role` (and `slug`), created through the API."""
        body: dict[str, Any] = {"role": role, "description": "test"}
        if slug is not None:
            body["slug"] = slug
        reply = self.call("POST", "/registry-svc/tokens", body)
        assert reply.status == 201, reply.body
        return str(reply.json["token"])

    def register(self, body: dict[str, Any], token: Any = ADMIN) -> Reply:
        """Registers an instance. Tests probe only what listens on this machine: a made-up
        host or private address gets `NO_CHECK` when the test gives no check, and a test
        that asks for a tcp or http check of one is a mistake."""
        if not is_loopback_target(body):
            check = body.get("healthCheck")
            if check is None and "healthCheck" not in body:
                body = {**body, "healthCheck": NO_CHECK}
            elif isinstance(check, dict):
                assert check.get("type") not in ("tcp", "http"), (
                    f"{body.get('url') or body}: tests may probe only loopback; use healthCheck NO_CHECK"
                )
        return self.call("PUT", "/registry-svc/instance", body, token=token)

    def snapshot(self) -> Any:
        """Everything a client request could have written, minus what the node agent
        changes on its own (instance health fields, node usage), for "nothing was written"
        checks. The registry index is no good for that: heartbeats move it all the time."""
        agent_owned = {"status", "statusReason", "lastHeartbeat"}
        instances = [
            {k: v for k, v in i.items() if k not in agent_owned}
            for i in self.call("GET", "/registry-svc/instances").json["instances"]
        ]
        return (
            instances,
            self.call("GET", "/registry-svc/definitions").json,
            self.call("GET", "/registry-svc/tokens").json,
            sorted((n["id"], n["url"]) for n in self.call("POST", "/registry-svc/nodes").json["nodes"]),
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server shared by the tests of one module."""
    srv = Server(tmp_path_factory.mktemp("data")).start()
    yield srv
    srv.kill9()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, on an empty data dir."""
    srv = Server(tmp_path / "data").start()
    yield srv
    srv.kill9()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def probes_run(server: Server, kind: str, result: str) -> float:
    """`registry_health_probes_total{type=kind,result=result}` of the server's /metrics:
    something observable to wait for instead of sleeping "long enough"."""
    text = server.call("GET", "/metrics", token=None).body.decode()
    return sample(text, "registry_health_probes_total", type=kind, result=result)
