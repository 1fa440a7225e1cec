"""Hardening of the newer surfaces (the gate on both ports, the Rust proxy, blocking
queries, xDS, start-up): each test here failed on the code before its fix, through real
server processes and loopback backends that misbehave on purpose. Item numbers are the
hardening issue's."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import psutil
import pytest
from test_hardening import raw_http

from conftest import NO_CHECK, Server, free_port, wait_for


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("surfaces")).start()
    yield server
    server.kill9()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Sends raw bytes; what came back, and whether the server closed (False: still open
    after `timeout` without a byte)."""
    out = raw_http(port, data, timeout)
    return out.removesuffix(b"<open>"), not out.endswith(b"<open>")


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> Any:
    return orjson.loads(response.split(b"\r\n\r\n", 1)[1])


class RawBackend:
    """A loopback backend that answers every request with the same raw bytes and keeps
    the heads it received."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            self.heads.append(buf.split(b"\r\n\r\n")[0])
            conn.sendall(self.answer)
            time.sleep(0.5)

    def close(self) -> None:
        self.listener.close()


def route(srv: Server, slug: str, backend: RawBackend) -> None:
    reply = srv.register({"url": backend.url, "slug": slug, "healthCheck": NO_CHECK})
    assert reply.status in (200, 201), reply.body


@contextlib.contextmanager
def routed(srv: Server, slug: str, answer: bytes) -> Iterator[RawBackend]:
    """A `RawBackend` answering `answer`, routed as `slug`, closed afterwards."""
    backend = RawBackend(answer)
    try:
        route(srv, slug, backend)
        yield backend
    finally:
        backend.close()


# --- 3. absolute-form targets ---------------------------------------------------------


@pytest.mark.parametrize("data_port", [False, True])
def test_absolute_form_targets_are_refused_on_both_ports(srv: Server, data_port: bool) -> None:
    port = srv.data_port if data_port else srv.port
    tokens_before = len(srv.call("GET", "/registry-svc/tokens").json["tokens"])
    body = b'{"role":"admin"}'
    for request in (
        b"POST http://x/registry-svc/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (srv.admin_token.encode(), len(body), body),
        b"GET http://x/metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://x/ui HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST http://x/registry-svc/instance HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 4\r\n\r\nxxxx",
    ):
        out, closed = exchange(port, request)
        assert status_of(out) == 400, out
        assert "only a path starting with '/'" in json_body(out)["error"]
        assert closed
    assert len(srv.call("GET", "/registry-svc/tokens").json["tokens"]) == tokens_before


# --- 16. every error is JSON ----------------------------------------------------------


@pytest.mark.parametrize("data_port", [False, True])
@pytest.mark.parametrize("request_line", [b"OPTIONS * HTTP/1.1", b"GET * HTTP/1.1"])
def test_odd_targets_get_a_json_error(srv: Server, data_port: bool, request_line: bytes) -> None:
    port = srv.data_port if data_port else srv.port
    out, _ = exchange(port, request_line + b"\r\nHost: x\r\n\r\n")
    assert status_of(out) == 400, out
    assert b"content-type: application/json" in out.lower()
    assert json_body(out)["error"]


@pytest.mark.parametrize("data_port", [False, True])
def test_a_target_that_is_not_a_uri_is_a_400_and_closes(srv: Server, data_port: bool) -> None:
    """A raw byte outside ASCII in the target: hyper refuses the head itself (a 400 without
    a body, as for every head it cannot parse) and closes."""
    port = srv.data_port if data_port else srv.port
    out, closed = exchange(port, b"GET /registry-svc/instances?slug=\xff HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(out) == 400 and closed, out


# --- 13, 15, 23. framing -------------------------------------------------------------


@pytest.mark.parametrize("data_port", [False, True])
def test_a_bare_lf_ends_a_line_as_rfc_9112_allows(srv: Server, data_port: bool) -> None:
    """RFC 9112 section 2.2: a recipient MAY read a bare LF as a line's end (hyper does).
    A head so written is one request, answered at once; what follows it is the next."""
    port = srv.data_port if data_port else srv.port
    out, closed = exchange(port, b"GET /health HTTP/1.1\nHost: x\nConnection: close\n\n")
    assert status_of(out) == 200 and closed, out
    out, closed = exchange(
        port,
        b"GET /health HTTP/1.1\r\nX: y\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200 ") == 2 and closed, out


@pytest.mark.parametrize("size", [b"+3", b" 3", b"0x3"])
def test_lenient_chunk_sizes_are_a_400(srv: Server, size: bytes) -> None:
    request = (
        b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n" + size + b"\r\n{}\r\n0\r\n\r\n"
    )
    out, closed = exchange(srv.port, request)
    assert status_of(out) == 400 and json_body(out)["error"] == "malformed chunked body" and closed


def test_a_huge_chunk_size_is_a_413_without_reading_the_rest(srv: Server) -> None:
    """The unauthenticated memory growth: a size that wrapped the total past the limit. The
    body is refused once what was decoded passes the limit (1 MiB), and what follows is read
    and dropped for a while (lingering close), never kept."""
    gate = psutil.Process(srv.proc.pid)  # type: ignore[union-attr]
    before = gate.memory_info().rss
    refused = b""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(
            b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\nffffffffffffffff\r\n"
        )
        with contextlib.suppress(OSError):
            for _ in range(200):
                s.sendall(b"x" * (1 << 20))
                readable, _, _ = select.select([s], [], [], 0)
                if readable and not refused:
                    refused = s.recv(65536)
        if not refused:
            refused = s.recv(65536)
    assert status_of(refused) == 413, refused
    assert gate.memory_info().rss - before < 64 << 20


def test_a_head_over_32_kib_is_a_431_however_it_arrives(srv: Server) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (40 << 10) + b"\r\n\r\n"
    out, closed = exchange(srv.port, head)
    assert status_of(out) == 431 and closed


def test_connections_past_the_cap_get_a_503_with_retry_after(tmp_path: Any) -> None:
    server = Server(tmp_path / "data", args=["--max-connections", "20"]).start()
    try:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        out, closed = wait_for(
            lambda: (
                (r := exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 2))
                and status_of(r[0]) == 503
                and r
            ),
            5,
            "the cap's refusal",
        )
        assert b"retry-after: 1\r\n" in out.lower() and "connections" in json_body(out)["error"] and closed
        for s in held:
            s.close()
        wait_for(lambda: server.call("GET", "/health", token=None).status == 200, 5, "a freed slot")
    finally:
        server.kill9()


# --- 21. Connection: close and HTTP/1.0 when the workers answer ------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /registry-svc/definitions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer %s\r\n\r\n",
        b"GET /registry-svc/definitions HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n",
    ],
)
def test_the_connection_closes_after_a_last_request_the_workers_answer(srv: Server, request_bytes: bytes) -> None:
    started = time.monotonic()
    out, closed = exchange(srv.port, request_bytes % srv.admin_token.encode(), timeout=10)
    assert status_of(out) == 200 and closed, out
    assert time.monotonic() - started < 8  # the client waited for the 75 s idle timeout


# --- 24. one answer on both ports ----------------------------------------------------


def test_a_trailing_slash_gets_one_answer_on_both_ports(srv: Server) -> None:
    srv.register({"url": "http://127.0.0.1:9/", "slug": "slash", "healthCheck": NO_CHECK})
    api = srv.call("GET", "/registry-svc/instances/?slug=slash")
    data = srv.call("GET", "/registry-svc/instances/?slug=slash", data_port=True)
    assert api.status == data.status == 200, (api.body, data.body)
    assert api.json == data.json and len(data.json["instances"]) == 1


# --- 5, 6, 17, 22. the proxy -----------------------------------------------------------


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("data_port", [False, True])
def test_an_unsolicited_101_from_an_upstream_is_a_502(srv: Server, data_port: bool) -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    with routed(srv, "switcher", switch):
        port = srv.data_port if data_port else srv.port
        out, _ = exchange(
            port, b"GET /switcher/x HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n", 3
        )
        assert status_of(out) == 502 and "101" in json_body(out.split(b"HTTP/1.1 200")[0])["error"], out
        assert b"HTTP/1.1 101" not in out and b"HTTP/1.1 200 OK" in out  # the connection stays HTTP


@pytest.mark.parametrize("tail", ["..;/admin", "%2e%2e;x=1/admin", ".;/x", "a/..;jsessionid=1"])
def test_dot_segments_with_parameters_are_refused(srv: Server, tail: str) -> None:
    with routed(srv, "servlet", OK) as backend:
        out, _ = exchange(srv.port, f"GET /servlet/{tail} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status_of(out) == 400 and json_body(out)["error"].startswith("path: "), out
        assert backend.heads == []


def test_forwarded_claims_in_any_spelling_do_not_reach_the_upstream(srv: Server) -> None:
    with routed(srv, "claims", OK) as backend:
        out, _ = exchange(
            srv.port,
            b"GET /claims/x HTTP/1.1\r\nHost: x\r\nForwarded: for=1.2.3.4;host=bank.example;proto=https\r\n"
            b"X_Forwarded_Host: bank.example\r\nX-Real-IP: 1.2.3.4\r\nConnection: close\r\n\r\n",
        )
        assert status_of(out) == 200
        head = backend.heads[0].lower()
        assert b"bank.example" not in head and b"1.2.3.4" not in head, head
        assert b"\r\nx-forwarded-host: x\r\n" in head


def test_a_204_is_relayed_without_content_length(srv: Server) -> None:
    with routed(srv, "nocontent", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Kept: 1\r\n\r\n"):
        out, _ = exchange(srv.port, b"GET /nocontent/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 204 and b"x-kept: 1" in out.lower()
        assert b"content-length" not in out.lower(), out


# --- 18. the registry's own address, and metadata, in other spellings -----------------


def test_other_spellings_of_the_registry_s_own_address_are_refused(srv: Server) -> None:
    for url in (
        f"http://[::ffff:127.0.0.1]:{srv.port}",
        f"http://0.0.0.0:{srv.port}",
        f"http://[::]:{srv.data_port}",
    ):
        reply = srv.call("PUT", "/registry-svc/instance", {"url": url, "slug": "loop", "healthCheck": NO_CHECK})
        assert reply.status == 400 and "own address" in reply.json["error"], (url, reply.body)


@pytest.mark.parametrize("ip", ["64:ff9b::a9fe:a9fe", "::169.254.169.254", "2002:a9fe:a9fe::1", "::ffff:a9fe:a9fe"])
def test_metadata_address_spellings_are_refused(tmp_path: Any, ip: str) -> None:
    server = Server(tmp_path / "data", args=["--proxy-networks", "0.0.0.0/0,::/0"]).start()
    try:
        body = {"url": f"http://[{ip}]:80", "slug": "meta", "healthCheck": NO_CHECK}
        reply = server.call("PUT", "/registry-svc/instance", body)
        assert reply.status == 400 and "metadata" in reply.json["error"], (ip, reply.body)
    finally:
        server.kill9()


def test_a_client_that_goes_away_frees_the_gates_descriptors(srv: Server) -> None:
    """1 (the gate's half): an abandoned blocking query holds nothing of the gate's."""
    gate = psutil.Process(srv.proc.pid)  # type: ignore[union-attr]
    index = srv.call("GET", "/registry-svc/definitions").index
    before = gate.num_fds()
    conns = []
    for _ in range(50):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.putrequest("GET", f"/registry-svc/definitions?index={index + 10**9}&wait=60s")
        conn.putheader("Authorization", f"Bearer {srv.admin_token}")
        conn.endheaders()
        conns.append(conn)
    wait_for(lambda: gate.num_fds() >= before + 90, 10, "the gate holding the queries")
    for conn in conns:
        conn.close()
    wait_for(lambda: gate.num_fds() <= before + 5, 10, f"the gate's descriptors back near {before}")
    assert srv.call("GET", "/health", token=None).status == 200
    json.dumps(None)


def hold_past_the_cap(srv: Server, path: str, extra: int) -> tuple[list[socket.socket], dict[int, bytes]]:
    """Opens the per-client cap of blocking queries of `path` plus `extra`, one connection
    each, and waits until the `extra` beyond the cap are answered (so all were counted):
    the connections, and those answers by connection."""
    from registry_svc.watch import MAX_HELD_PER_CLIENT

    conns = []
    for _ in range(MAX_HELD_PER_CLIENT + extra):
        conn = socket.create_connection(("127.0.0.1", srv.port), timeout=0.01)
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv.admin_token}\r\n\r\n".encode())
        conns.append(conn)
    answered: dict[int, bytes] = {}

    def refused() -> bool:
        for n, conn in enumerate(conns):
            if n not in answered:
                with contextlib.suppress(TimeoutError):
                    answered[n] = conn.recv(65536)
        return len(answered) >= extra

    wait_for(refused, 20, f"{extra} queries past the cap answered")
    return conns, answered


def test_held_blocking_queries_are_capped_per_client_with_a_429(fresh_server: Server) -> None:
    """1 (the workers' half): one client cannot hold more than its share of waiters."""
    srv = fresh_server
    extra = 10
    index = srv.call("GET", "/registry-svc/definitions").index
    query = f"/registry-svc/definitions?index={index + 10**9}"
    conns, answered = hold_past_the_cap(srv, f"{query}&wait=8s", extra)
    try:
        assert len(answered) == extra, answered
        for got in answered.values():
            assert status_of(got) == 429 and b"retry-after: 1" in got.lower(), got
            assert "blocking queries" in json_body(got)["error"]
        over = srv.call("GET", f"{query}&wait=1s", timeout=10)
        assert over.status == 429, over.body
        # Plain reads and writes are not held, and go on.
        assert srv.call("GET", "/health", token=None).status == 200
        assert srv.call("GET", "/registry-svc/definitions").status == 200
    finally:
        for conn in conns:
            conn.close()


def test_a_token_revoked_during_a_blocking_query_gets_a_401(srv: Server) -> None:
    """19."""
    created = srv.call("POST", "/registry-svc/tokens", {"role": "proxy", "description": "revoked while waiting"}).json
    token, token_id = created["token"], created["info"]["id"]
    path = "/registry-svc/instances?slug=quiet-slug"
    index = srv.call("GET", path, token=token).index
    result: list[Any] = []
    waiter = threading.Thread(
        target=lambda: result.append(srv.call("GET", f"{path}&index={index}&wait=2s", token=token))
    )
    waiter.start()
    time.sleep(0.3)
    assert srv.call("DELETE", f"/registry-svc/token/{token_id}").status == 204
    waiter.join(10)
    assert result and result[0].status == 401 and "revoked" in result[0].json["error"], result


def test_eds_resource_names_are_deduplicated_and_capped(srv: Server) -> None:
    """2."""
    for n in range(5):
        srv.register({"url": f"http://127.0.0.1:{20000 + n}", "slug": "eds-dup", "healthCheck": NO_CHECK})
    once = srv.call("POST", "/v3/discovery:endpoints", {"resource_names": ["eds-dup"]})
    many = srv.call("POST", "/v3/discovery:endpoints", {"resource_names": ["eds-dup"] * 1000})
    assert many.status == 200 and len(many.json["resources"]) == 1
    assert len(many.body) == len(once.body)
    over = srv.call("POST", "/v3/discovery:endpoints", {"resource_names": ["eds-dup"] * 20000})
    assert over.status == 400 and over.json["error"].startswith("resource_names"), over.body


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_data_dir_others_can_write_is_refused(tmp_path: Any, mode: int) -> None:
    """10."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(mode)
    (data / "admin.tmp").symlink_to(tmp_path / "stolen")
    server = Server(data)
    try:
        with pytest.raises(RuntimeError, match="writable by group or others"):
            server.start(timeout=20)
        assert server.proc is not None and server.proc.returncode == 1
        assert not (tmp_path / "stolen").exists()
    finally:
        server.kill9()


def test_a_planted_tmp_link_is_not_followed(tmp_path: Any) -> None:
    """10: the secret file is created, never written through a link."""
    from registry_svc.auth import write_secret_file

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "admin.tmp").symlink_to(tmp_path / "stolen")
    write_secret_file(data / "admin.token", "rsv_secret")
    assert not (tmp_path / "stolen").exists()
    assert (data / "admin.token").read_text() == "rsv_secret\n"
    assert oct((data / "admin.token").stat().st_mode & 0o777) == oct(0o600)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class DefaultDataPort(Server):
    """A server left to take its default data port (the API port + 1)."""

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("--data-port")
        return cmd[:at] + cmd[at + 2 :]


@pytest.mark.parametrize("explicit", [True, False])
def test_a_restart_succeeds_while_the_last_run_s_data_port_connections_linger(tmp_path: Any, explicit: bool) -> None:
    """9: connections the server closed leave TIME_WAIT on its ports; a restart binds past
    them at once, on an explicit data port and on the default one."""
    server = Server(tmp_path / "data") if explicit else DefaultDataPort(tmp_path / "data")
    if not explicit:
        server.port = next(p for p in iter(free_port, None) if p < 65535 and port_is_free(p + 1))
        server.data_port = server.port + 1
    server.start()
    try:
        for _ in range(20):
            out, _ = exchange(server.data_port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status_of(out) == 200
        lingering = [
            c
            for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == server.data_port and c.status == psutil.CONN_TIME_WAIT
        ]
        assert lingering, "the server closed first: its side waits"
        server.kill9()
        server.start()
        assert server.call("GET", "/health", token=None, data_port=True).status == 200
        assert "running without a data port" not in server.log_path.read_text()
    finally:
        server.kill9()


@pytest.mark.parametrize(
    ("prefix", "store_bytes", "said"),
    [
        ("/registry-svc/", b"not an LMDB file" * 4096, "is not a registry-svc store (LMDB)"),
        ("/", None, "not the root of etcd's key space"),
        ("", None, "must start and end with '/'"),
    ],
)
def test_cluster_import_refuses_what_it_cannot_use_in_one_line(
    tmp_path: Any, prefix: str, store_bytes: bytes | None, said: str
) -> None:
    """20: no traceback, and nothing sent to etcd (none runs here: the refusal comes first)."""
    import subprocess
    import sys

    source = tmp_path / "data"
    (source / "store").mkdir(parents=True)
    (source / "store" / "data.mdb").write_bytes(store_bytes or b"")
    done = subprocess.run(
        [sys.executable, "-m", "registry_svc", "cluster", "import", "--data-dir", str(source),
         "--etcd", "http://127.0.0.1:9", "--etcd-prefix", prefix],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


class HoldingBackend(RawBackend):
    """Answers each request once `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        super().__init__(OK)

    def _one(self, conn: socket.socket) -> None:
        self.release.wait(30)
        super()._one(conn)


def test_a_crashed_worker_s_in_flight_counts_are_forgotten(tmp_path: Any) -> None:
    """7: least_request no longer shuns an instance for requests a dead worker held."""
    server = Server(tmp_path / "data", processes=2, args=["--slug-policy", "lr=least_request"]).start()
    slow, other = HoldingBackend(), RawBackend(OK)
    held: list[socket.socket] = []
    try:
        slow_id = server.register({"url": slow.url, "slug": "lr", "status": "Healthy", "healthCheck": NO_CHECK}).json[
            "instance"
        ]["id"]
        server.register({"url": other.url, "slug": "lr", "status": "Healthy", "healthCheck": NO_CHECK})
        # Requests to the slow instance, spread over both workers' shares of the data port.
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", server.data_port))
            s.sendall(b"GET /lr/x HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(s)

        def holders() -> list[psutil.Process]:
            return [
                p
                for p in server.worker_processes()
                if any(c.raddr and c.raddr.port == slow.port for c in p.net_connections("tcp"))
            ]

        victims = wait_for(holders, 10, "a worker proxying to the slow instance")
        victims[0].kill()
        victims[0].wait(10)
        slow.release.set()  # the live worker's requests end; the dead one's never will

        def picks() -> set[str]:
            return {
                server.call("GET", "/registry-svc/instance/pick?slug=lr&policy=least_request").json["instance"]["id"]
                for _ in range(30)
            }

        wait_for(lambda: slow_id in picks(), 15, "the slow instance picked again once its dead counts are reaped")
        # The counts leave the sums a moment before the supervisor logs how many it forgot.
        wait_for(lambda: "forgot" in server.log_path.read_text(), 10, "the reaper's log line")
    finally:
        for s in held:
            s.close()
        slow.close()
        other.close()
        server.kill9()


def test_a_crashed_worker_is_replaced_and_reported(tmp_path: Any) -> None:
    """8: the workers come back, the log and /metrics say so, and a request the dead
    worker held is answered at once (a 503, retry) instead of hanging."""
    server = Server(tmp_path / "data", processes=2).start()
    try:
        before = {p.pid for p in server.worker_processes()}
        index = server.call("GET", "/registry-svc/definitions").index
        held = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        held.sendall(
            f"GET /registry-svc/definitions?index={index + 10**9}&wait=5m HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.admin_token}\r\n\r\n".encode()
        )
        holding = wait_for(server.workers_holding_connections, 10, "a worker holding the query")
        victim = psutil.Process(next(iter(holding)))
        victim.kill()
        started = time.monotonic()
        # Answered at once (the gate's 503: the workers went away without an answer),
        # rather than held for the 5 minutes asked.
        got = held.recv(65536)
        assert got.startswith(b"HTTP/1.1 503 ") and b"without an answer" in got, got
        assert time.monotonic() - started < 15
        wait_for(lambda: "workers restarted" in server.log_path.read_text(), 30, "the restart in the log")
        after = {p.pid for p in server.worker_processes()}
        assert after and not after & before, (before, after)
        assert server.call("GET", "/health", token=None).status == 200
        assert server.call("GET", "/health", token=None, data_port=True).status == 200
        assert "died; restarting the workers" in server.log_path.read_text()
        metrics = server.call("GET", "/metrics").body.decode()
        assert "registry_worker_restarts_total 1.0" in metrics, metrics[-2000:]
    finally:
        server.kill9()


def test_a_fresh_cluster_server_without_etcd_exits_naming_etcd(tmp_path: Any) -> None:
    """12: no empty replica served as if all were well."""
    server = Server(tmp_path / "data", args=["--etcd", f"http://127.0.0.1:{free_port()}"])
    try:
        with pytest.raises(RuntimeError, match=r"cannot reach etcd at 127\.0\.0\.1:") as raised:
            server.start(timeout=40)
        assert "holds no replica" in str(raised.value)
        assert server.proc is not None and server.proc.returncode == 1
        assert "admin token (existing)" not in server.log_path.read_text()
    finally:
        server.kill9()


def test_a_replica_of_another_etcd_cluster_is_refused(tmp_path: Any) -> None:
    """11: same prefix, another cluster: refused at start like another prefix, not served
    with a dead admin token."""
    import shutil

    from etcd_cluster import EtcdCluster

    if shutil.which("etcd") is None:
        pytest.skip("etcd-server is not installed (make test installs it)")
    first = EtcdCluster(tmp_path / "etcd-a", size=1).start()
    data = tmp_path / "data"
    try:
        server = Server(data, args=["--etcd", f"http://{first.endpoints[0]}"]).start()

        def knows_cluster() -> bool:
            import lmdb

            env = lmdb.open(str(data / "store"), readonly=True, lock=False, max_dbs=8, subdir=True)
            try:
                with env.begin() as txn:
                    meta = env.open_db(b"meta", txn=txn, create=False)
                    return any(b'"clusterId":"' in bytes(v) for _, v in txn.cursor(db=meta))
            finally:
                env.close()

        wait_for(knows_cluster, 10, "the replica state naming its cluster")
        server.kill9()
    finally:
        first.stop()
    second = EtcdCluster(tmp_path / "etcd-b", size=1).start()
    try:
        again = Server(data, args=["--etcd", f"http://{second.endpoints[0]}"])
        try:
            with pytest.raises(RuntimeError, match="another cluster with the same prefix"):
                again.start(timeout=30)
            assert again.proc is not None and again.proc.returncode == 1
        finally:
            again.kill9()  # a server that did start (the bug) must not outlive the test
    finally:
        second.stop()


def test_a_node_s_return_gives_its_instances_back_what_its_absence_took(tmp_path: Any) -> None:
    """4 (a node's return): `type: none` instances have no probe to bring them back."""
    fast = ["--heartbeat-seconds", "0.5"]
    data = tmp_path / "data"
    one = Server(data, args=fast, env={"OB_NODE_ID": "node-1"}).start()
    two_env = {"OB_NODE_ID": "node-2", "OB_SELF_URL": "http://node2.cluster.local:11337"}
    two = Server(data, args=fast, env=two_env).start()
    try:
        body = {"slug": "n2", "nodeUrl": two_env["OB_SELF_URL"], "healthCheck": NO_CHECK}
        up = one.register({**body, "url": "http://on-node-2:80", "status": "Healthy"}).json["instance"]
        starting = one.register({**body, "url": "http://on-node-2:81", "status": "Starting"}).json["instance"]
        down = one.register({**body, "url": "http://on-node-2:82", "status": "Unhealthy"}).json["instance"]

        def instance(i: dict[str, Any]) -> dict[str, Any]:
            return dict(one.call("GET", f"/registry-svc/instance/{i['id']}").json["instance"])

        two.kill9()
        lost = wait_for(lambda: (i := instance(up))["status"] == "Unhealthy" and i, 15, "the cascade")
        assert lost["statusReason"].startswith("node node-2 (") and lost["statusReason"].endswith("; was Healthy")
        wait_for(lambda: instance(starting)["status"] == "Unhealthy", 5, "the cascade on Starting")
        two.start()
        wait_for(lambda: instance(up)["status"] == "Healthy", 15, "the node's return")
        assert instance(up)["statusReason"] == "node node-2 is heartbeating again"
        wait_for(lambda: instance(starting)["status"] == "Starting", 5, "Starting given back")
        assert instance(down)["status"] == "Unhealthy"  # it was before, and stays so
    finally:
        one.kill9()
        two.kill9()


def test_idle_and_slow_connections_cost_little_and_do_not_block_others(fresh_server: Server) -> None:
    """23: 2,000 idle keep-alive connections (each after one answered request) and 1,000
    slowloris heads; the server answers at once, and the gate's memory per connection stays
    small (an array in the connection's future made each cost over 100 KiB)."""
    srv = fresh_server
    gate = psutil.Process(srv.proc.pid)  # type: ignore[union-attr]
    time.sleep(0.5)
    base = gate.memory_info().rss
    idle = []
    try:
        for _ in range(2000):
            conn = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(conn)
        for conn in idle:
            assert status_of(conn.recv(4096)) == 200
        per_connection = (gate.memory_info().rss - base) / len(idle)
        slow = []
        for _ in range(1000):
            conn = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            conn.sendall(b"GET /health HTTP/1.1\r\nHo")
            slow.append(conn)
        idle += slow
        assert srv.call("GET", "/health", token=None, timeout=5).status == 200
        assert srv.call("GET", "/registry-svc/instances").status == 200
        assert per_connection < 64 << 10, f"{per_connection / 1024:.1f} KiB per idle connection"
    finally:
        for conn in idle:
            conn.close()


def test_a_blocking_query_whose_client_went_away_is_dropped_in_the_worker(fresh_server: Server) -> None:
    """1: the waiter goes with its client (the gate tells the worker through the shared
    ring of abandoned queries): a client that dropped its queries can hold new ones at
    once, instead of meeting its cap until the old ones' wait ends (5 minutes here)."""
    srv = fresh_server
    index = srv.call("GET", "/registry-svc/definitions").index
    query = f"/registry-svc/definitions?index={index + 10**9}"
    conns, _ = hold_past_the_cap(srv, f"{query}&wait=5m", 10)
    assert srv.call("GET", f"{query}&wait=1s", timeout=10).status == 429
    for conn in conns:
        conn.close()
    wait_for(lambda: srv.call("GET", f"{query}&wait=1s", timeout=10).status == 200, 10, "the abandoned queries dropped")
    log = srv.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_a_worker_s_short_lived_helper_is_not_taken_for_a_dead_worker() -> None:
    """8: only forks of the group leader are workers; a worker's `git` (for `/version`)
    ending is no crash (a restart of every worker for it would cut their clients)."""
    import subprocess
    import sys

    from registry_svc.supervisor import WorkerWatch

    script = (
        "import os, subprocess, sys, time\n"
        "if os.fork() == 0:\n"  # a worker: the same command line as the leader
        "    time.sleep(30); sys.exit(0)\n"
        "for _ in range(30):\n"
        "    subprocess.run(['sleep', '0.2'])\n"  # helpers coming and going
        "time.sleep(30)\n"
    )
    leader = psutil.Popen([sys.executable, "-c", script])
    try:
        # As the supervisor does (after the workers answer): once the leader runs its own
        # program (right after the fork, /proc shows the parent's command line).
        wait_for(lambda: "-c" in leader.cmdline(), 10, "the leader's exec")
        watch = WorkerWatch(leader)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert watch.dead() is None
            time.sleep(0.3)
        worker = next(p for p in leader.children() if p.cmdline() == leader.cmdline())
        worker.kill()
        watch._next = 0.0
        assert wait_for(lambda: setattr(watch, "_next", 0.0) or watch.dead(), 5, "the killed worker") == str(worker.pid)
    finally:
        for p in leader.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                p.kill()
        leader.kill()
        leader.wait()
        subprocess.run(["true"], check=False)
