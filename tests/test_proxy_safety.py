"""The built-in proxy is safe by default: what trying to break it found, each through real
HTTP against real servers and loopback backends (the data-plane issue, point 4)."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import Server, free_port, wait_for
from registry_svc import _core

NO_CHECK = {"type": "none"}
PAYLOAD = b'{"hello": "world"}' * 200
MIB_OF_BYTES = bytes(range(256)) * 4096
BIG = 256 * len(MIB_OF_BYTES)


class Backend:
    """A loopback backend that answers with JSON describing the request, or with a gzip
    body at `/gz`; it counts what reached it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.paths: list[str] = []
        self.release = threading.Event()
        self.drip = threading.Event()
        self.held = 0
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                backend.paths.append(self.path)
                if self.path.endswith("/hold"):
                    backend.held += 1
                    backend.release.wait(20)
                if self.path.endswith("/big"):
                    self._big()
                    return
                if self.path.endswith("/drip"):
                    self._drip()
                    return
                if self.path.endswith("/gz"):
                    body, extra = gzip.compress(PAYLOAD), {"Content-Encoding": "gzip"}
                else:
                    seen = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
                    body, extra = json.dumps(seen).encode(), {}
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _big(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(BIG))
                self.end_headers()
                for _ in range(BIG // len(MIB_OF_BYTES)):
                    self.wfile.write(MIB_OF_BYTES)

            def _drip(self) -> None:
                """A chunked body: one chunk, then the rest once the test allows it."""
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for data in (b"first\n", None, b"second\n"):
                    if data is None:
                        backend.drip.wait(20)
                        continue
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    started = Backend()
    yield started
    started.close()


@pytest.fixture(scope="module")
def routed(server: Server, backend: Backend) -> str:
    """The slug routed to the backend."""
    reply = server.register({"url": backend.url, "slug": "safe-svc", "status": "Healthy", "healthCheck": NO_CHECK})
    assert reply.status in (200, 201), reply.body
    return "safe-svc"


def raw_get(server: Server, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A GET with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def send_in_background(server: Server, path: str, count: int) -> tuple[list[threading.Thread], list[int]]:
    """`count` GETs of `path` on threads of their own (started); their statuses land in the
    list as they are answered."""
    statuses: list[int] = []
    held = [
        threading.Thread(target=lambda: statuses.append(raw_get(server, path)[0]), daemon=True) for _ in range(count)
    ]
    for thread in held:
        thread.start()
    return held, statuses


def test_a_hanging_upstream_does_not_starve_other_slugs(server: Server, routed: str) -> None:
    """40 requests held by one slug's upstream; another slug is still answered while they
    hang (before, they took every forwarding thread of the process)."""
    slow = Backend()
    try:
        reply = server.register({"url": slow.url, "slug": "slow-svc", "status": "Healthy", "healthCheck": NO_CHECK})
        assert reply.status in (200, 201), reply.body
        held, statuses = send_in_background(server, "/slow-svc/hold", 40)
        wait_for(lambda: slow.held >= 8, 15, "the slow upstream to hold requests")
        status, _, _ = raw_get(server, f"/{routed}/meanwhile")
        assert status == 200 and not slow.release.is_set() and len(statuses) == 0
        slow.release.set()
        for thread in held:
            thread.join(60)
        assert statuses == [200] * 40
    finally:
        slow.close()


def worker_rss(server: Server) -> int:
    """RSS of the whole server: the supervisor (whose gate proxies) and its workers."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_a_large_body_is_streamed_not_held_in_memory(server: Server, routed: str) -> None:
    """256 MiB through the proxy: the server grows by far less than the body (it held it
    whole, twice, before)."""
    before = worker_rss(server)
    peak = before
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", f"/{routed}/big")
        resp = conn.getresponse()
        assert resp.status == 200
        received = 0
        while chunk := resp.read(1 << 20):
            start = received % 256  # the body repeats bytes 0..255: each chunk starts where it should
            assert chunk[:256] == (bytes(range(start, 256)) + bytes(range(start)))[: len(chunk)]
            received += len(chunk)
            if received % (16 << 20) < len(chunk):
                peak = max(peak, worker_rss(server))
    finally:
        conn.close()
    assert received == BIG
    assert peak - before < 64 << 20, f"the workers grew {(peak - before) >> 20} MiB for a {BIG >> 20} MiB body"


def test_a_body_is_forwarded_as_it_arrives(server: Server, backend: Backend, routed: str) -> None:
    """The first chunk reaches the client while the upstream still holds the rest."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", f"/{routed}/drip")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline() == b"first\n" and not backend.drip.is_set()
        backend.drip.set()
        assert resp.read() == b"second\n"
    finally:
        conn.close()


def test_a_registry_token_is_never_forwarded(server: Server, routed: str) -> None:
    for value in (f"Bearer {server.admin_token}", server.admin_token, f"bearer  {server.admin_token}"):
        status, _, body = raw_get(server, f"/{routed}/who", {"Authorization": value})
        assert status == 200 and "authorization" not in json.loads(body)["headers"], value
    status, _, body = raw_get(server, f"/{routed}/who", {"Authorization": "Bearer the-upstreams-own"})
    assert json.loads(body)["headers"]["authorization"] == "Bearer the-upstreams-own"


def test_forwarded_headers_describe_the_connection_not_the_client_s_claims(server: Server, routed: str) -> None:
    claims = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bank.example", "X-Forwarded-For": "203.0.113.9",
              "Host": "public.example:8443"}  # fmt: skip
    status, _, body = raw_get(server, f"/{routed}/fwd", claims)
    headers = json.loads(body)["headers"]
    assert status == 200
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "public.example:8443"
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"


def test_a_gzip_body_arrives_as_the_upstream_sent_it(server: Server, routed: str) -> None:
    status, headers, body = raw_get(server, f"/{routed}/gz", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == PAYLOAD


@pytest.mark.parametrize(
    "tail", ["../escape", "%2e%2e/escape", "%2E%2E%2Fescape", "..%5cescape", "./here", "a/%252e%252e/escape", "x/.."]
)
def test_dot_segments_are_refused_before_the_upstream(server: Server, backend: Backend, routed: str, tail: str) -> None:
    before = len(backend.paths)
    status, _, body = raw_get(server, f"/{routed}/{tail}")
    assert status == 400 and json.loads(body)["error"].startswith("path: "), (tail, status, body)
    assert len(backend.paths) == before


def test_the_registry_s_own_address_cannot_be_registered(server: Server) -> None:
    for body in (
        {"url": server.url},
        {"url": f"http://localhost:{server.port}/x"},
        {"ip": "127.0.0.1", "port": server.port},
    ):
        reply = server.register({**body, "slug": "loop-svc", "healthCheck": NO_CHECK})
        assert reply.status == 400 and "own address" in reply.json["error"], (body, reply.body)
    assert reply.json["error"].startswith("ip: ")


def test_a_forwarding_loop_between_two_registries_ends_at_once(server: Server, tmp_path: Path) -> None:
    """A's instance of `ring` is B, and B's is A: without loop detection each request would
    bounce until a timeout, holding a thread of each at every hop."""
    other = Server(tmp_path / "b").start()
    try:
        for here, there in ((server, other), (other, server)):
            reply = here.register({"url": there.url, "slug": "ring", "status": "Healthy", "healthCheck": NO_CHECK})
            assert reply.status in (200, 201), reply.body
        status, _, body = raw_get(server, "/ring/x")
        assert status == 508 and "loop" in json.loads(body)["error"], body
    finally:
        other.kill9()


def test_a_request_already_forwarded_is_not_forwarded_again(server: Server, backend: Backend, routed: str) -> None:
    before = len(backend.paths)
    status, _, _ = raw_get(server, f"/{routed}/again", {"X-Registry-Forwarded": "1"})
    assert status == 508 and len(backend.paths) == before


@pytest.mark.parametrize("url", ["http://169.254.169.254", "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]:80",
                                 "http://[::ffff:169.254.169.254]", "http://100.100.100.200"])  # fmt: skip
def test_link_local_and_metadata_addresses_are_refused(server: Server, url: str) -> None:
    service = server.token("service", "meta-svc")
    reply = server.register({"url": url, "healthCheck": NO_CHECK}, token=service)
    assert reply.status == 400 and reply.json["error"].startswith("url: "), reply.body
    assert "metadata" in reply.json["error"]


def test_a_wide_proxy_network_does_not_open_the_metadata_address(tmp_path: Path) -> None:
    """0.0.0.0/0 lets the proxy reach other machines, not the cloud's metadata service; a
    network that names it does. (Nothing is proxied here: registration is the check.)"""
    wide = Server(tmp_path / "wide", args=["--proxy-networks", "0.0.0.0/0,::/0"]).start()
    named = Server(tmp_path / "named", args=["--proxy-networks", "127.0.0.0/8,169.254.169.254/32"]).start()
    try:
        meta = {"url": "http://169.254.169.254", "healthCheck": NO_CHECK}
        assert wide.register(meta).status == 400
        assert named.register(meta).status == 201
    finally:
        wide.kill9()
        named.kill9()


def test_the_fence_keeps_link_local_out_of_wide_networks() -> None:
    wide = _core.NetPolicy(["0.0.0.0/0", "::/0"], "proxy")
    assert wide.allows("192.0.2.1") and not wide.allows("169.254.169.254") and not wide.allows("fe80::1")
    assert not wide.allows("::ffff:169.254.169.254") and not wide.allows("fd00:ec2::254")
    assert _core.NetPolicy(["0.0.0.0/0", "169.254.169.254/32"], "proxy").allows("169.254.169.254")
    assert _core.is_sensitive("169.254.0.1") and not _core.is_sensitive("127.0.0.1")


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client the proxy gave up on (504) went away: expected here


class Sink:
    """A loopback backend that reads request bodies as they arrive and answers with their
    length and SHA-256; `/hold` answers only once released."""

    def __init__(self) -> None:
        self.port = free_port()
        self.release = threading.Event()
        self.held = 0
        self.uploads: list[dict[str, Any]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.endswith("/hold"):
                    sink.held += 1
                    sink.release.wait(30)
                self._answer(b"{}")

            def do_POST(self) -> None:
                digest, size = hashlib.sha256(), 0
                try:
                    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                        while (length := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                            piece = self.rfile.read(length)
                            if len(piece) < length:
                                raise EOFError
                            digest.update(piece)
                            size += len(piece)
                            self.rfile.readline()
                        while self.rfile.readline() not in (b"\r\n", b""):
                            pass
                    else:
                        left = int(self.headers.get("Content-Length", "0"))
                        while left:
                            piece = self.rfile.read(min(left, 1 << 20))
                            if not piece:
                                raise EOFError
                            digest.update(piece)
                            size += len(piece)
                            left -= len(piece)
                except (EOFError, ValueError, OSError):
                    sink.uploads.append({"cut": True, "size": size})
                    self.close_connection = True
                    return
                sink.uploads.append({"cut": False, "size": size})
                self._answer(json.dumps({"size": size, "sha256": digest.hexdigest()}).encode())

            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = QuietServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Sink]]:
    """A server taking proxied bodies up to 512 MiB and waiting 2 s for an upstream, with
    the sink registered as `sink-svc`."""
    server = Server(
        tmp_path_factory.mktemp("roomy") / "data", args=["--max-proxy-body-mib", "512", "--proxy-timeout-seconds", "2"]
    ).start()
    sink = Sink()
    try:
        reply = server.register({"url": f"http://127.0.0.1:{sink.port}", "slug": "sink-svc", "healthCheck": NO_CHECK})
        assert reply.status == 201, reply.body
        yield server, sink
    finally:
        sink.close()
        server.stop()
        server.assert_no_traffic_left_the_machine()


def _pattern(total: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """`total` bytes of a repeating pattern, in pieces."""
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        yield MIB_OF_BYTES[:size]
        sent += size


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("data_port", [False, True], ids=["api-port", "data-port"])
def test_a_large_request_body_is_streamed_to_the_upstream(
    roomy: tuple[Server, Sink], chunked: bool, data_port: bool
) -> None:
    """256 MiB uploaded through the proxy arrives whole (length and SHA-256), while the
    server grows by far less than the body: it is never held in memory."""
    server, _ = roomy
    total = 256 << 20
    expected = hashlib.sha256()
    for piece in _pattern(total):
        expected.update(piece)
    before = peak = worker_rss(server)
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.wait(0.05):
            peak = max(peak, worker_rss(server))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    port = server.data_port if data_port else server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        if not chunked:
            headers["Content-Length"] = str(total)
        conn.request("POST", "/sink-svc/upload", body=_pattern(total), headers=headers, encode_chunked=chunked)
        resp = conn.getresponse()
        answer = json.loads(resp.read())
    finally:
        conn.close()
        sampling.set()
        sampler.join()
    assert resp.status == 200, answer
    assert answer == {"size": total, "sha256": expected.hexdigest()}
    assert peak - before < 64 << 20, f"the server grew {(peak - before) >> 20} MiB for a {total >> 20} MiB upload"


def test_a_chunked_upload_over_the_limit_is_cut_with_413(roomy: tuple[Server, Sink]) -> None:
    server, _ = roomy
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/sink-svc/upload", body=_pattern(600 << 20), encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed while the client was still sending: also a refusal
    finally:
        conn.close()


def test_a_slow_upstream_times_out_without_blocking_other_requests(roomy: tuple[Server, Sink]) -> None:
    """40 requests held by an upstream that never answers get 504 after the proxy timeout
    (2 s here); another slug is answered at once meanwhile."""
    server, _ = roomy
    slow = Sink()
    try:
        reply = server.register({"url": f"http://127.0.0.1:{slow.port}", "slug": "mute-svc", "healthCheck": NO_CHECK})
        assert reply.status == 201, reply.body
        held, statuses = send_in_background(server, "/mute-svc/hold", 40)
        wait_for(lambda: slow.held >= 40, 15, "the slow upstream to hold every request")
        status, _, _ = raw_get(server, "/sink-svc/meanwhile")
        assert status == 200 and not statuses
        for thread in held:
            thread.join(30)
        assert statuses == [504] * 40, statuses
        _, _, body = raw_get(server, "/mute-svc/hold")
        assert b"did not answer within 2s" in body, body
    finally:
        slow.close()


def test_expect_100_continue_is_answered_before_the_body(roomy: tuple[Server, Sink]) -> None:
    """A client that asks (curl does, for bodies over 1 MiB) gets the go-ahead at once
    instead of waiting a second for it; the upstream gets the body, not the Expect."""
    server, _ = roomy
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST /sink-svc/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert conn.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.sendall(b"hello")
        answer = b""
        while not answer.endswith(b"}"):
            answer += conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"size": 5' in answer, answer


def test_a_body_the_client_cuts_short_fails_upstream_instead_of_arriving_whole(roomy: tuple[Server, Sink]) -> None:
    """A client announcing 8 MiB that sends 2 MiB and goes away: the upstream sees its
    request fail, never a complete (shorter) body."""
    server, sink = roomy
    before = len(sink.uploads)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST /sink-svc/cut HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (8 << 20))
        conn.sendall(MIB_OF_BYTES * 2)
    wait_for(lambda: len(sink.uploads) > before, 10, "the upstream to see the upload end")
    assert sink.uploads[before]["cut"] is True, sink.uploads[before]
    assert sink.uploads[before]["size"] < 8 << 20
