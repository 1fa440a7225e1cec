"""Regression tests for the hardening findings: each one broke the server before its fix.

The server under test always runs with loopback-only probe networks and the network spy
of `conftest.Server` (every test here also fails if a server process resolved a name or
connected anywhere but loopback).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_health import FAKE_NVML, Backend, instance, status_of, wait_until

from conftest import NO_CHECK, Server, probes_run, wait_for

FAST = ["--heartbeat-seconds", "0.5"]
QUICK_TCP = {"type": "tcp", "intervalSeconds": 1, "timeoutSeconds": 1}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("hardening"), args=FAST).start()
    yield server
    server.kill9()


def raw_http(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Sends raw bytes and reads until the server closes (or `timeout` passes: then the
    result ends with b'<open>')."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            return out + b"<open>"
    return out


# --- the network rule -------------------------------------------------------------------


def test_loopback_only_probes_never_resolve_made_up_names_or_connect_to_private_addresses(srv: Server) -> None:
    # Registered around conftest.register's guard on purpose: this is the server's own fence.
    made_up = srv.call(
        "PUT", "/registry-svc/instance", {"url": "http://user-service:8080", "slug": "fence", "healthCheck": QUICK_TCP}
    ).json["instance"]
    private = srv.call(
        "PUT",
        "/registry-svc/instance",
        {"url": "http://10.1.2.3:1", "slug": "fence", "healthCheck": {**QUICK_TCP, "type": "http"}},
    ).json["instance"]
    named = wait_until(lambda: (i := instance(srv, made_up["id"]))["status"] == "Unhealthy" and i, what="name fenced")
    assert named["statusReason"] == (
        "host 'user-service' not resolved: the probe networks (127.0.0.0/8, ::1/128) are loopback only"
    )
    addressed = wait_until(lambda: (i := instance(srv, private["id"]))["status"] == "Unhealthy" and i, what="ip fenced")
    assert addressed["statusReason"] == (
        "address 10.1.2.3 is outside the probe networks (127.0.0.0/8, ::1/128); not connected"
    )
    # The proxy is fenced the same way: nothing routable is contacted.
    assert srv.call("GET", "/fence/x", token=None).status in (502, 503)
    srv.assert_no_traffic_left_the_machine()
    spy = srv.netspy_path
    assert not spy.exists() or spy.read_text() == ""


def test_proxy_refuses_upstreams_outside_its_networks_without_contacting_them(srv: Server) -> None:
    body = {"url": "http://10.9.8.7:8080", "slug": "offnet", "status": "Healthy", "healthCheck": NO_CHECK}
    assert srv.register(body).status == 201
    reply = srv.call("GET", "/offnet/anything", token=None)
    assert reply.status == 502
    assert "not contacted: address 10.9.8.7 is outside the proxy networks" in reply.json["error"]
    srv.assert_no_traffic_left_the_machine()


def test_bad_probe_networks_are_refused_at_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "registry_svc", "serve", "--data-dir", str(tmp_path), "--probe-networks", "10.0.0/33"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--probe-networks: '10.0.0/33' is not a network in CIDR form" in done.stderr


# --- 1: bodies ------------------------------------------------------------------------


def test_an_unauthenticated_huge_body_is_refused_before_it_is_read(srv: Server) -> None:
    """Robyn reads whole bodies before any of our code runs (ROBYN_MAX_PAYLOAD_SIZE does not
    apply to its routes): the gate in front of it (rust/edge/) refuses by the head."""
    head = (
        b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1073741824\r\n\r\n"
    )
    before = worker_rss(srv)
    out = raw_http(srv.port, head + b"x" * 65536, timeout=3)
    assert out.startswith(b"HTTP/1.1 413") and not out.endswith(b"<open>"), out[:200]
    assert out.endswith(b'{"error":"request body is 1073741824 bytes; the limit is 1048576"}')
    # A chunked body is counted as it is decoded, and refused at the limit too.
    chunked = b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"100000\r\n" + b"x" * (1 << 20) + b"\r\n"
    out = raw_http(srv.port, chunked + chunk * 2, timeout=5)
    assert out.startswith(b"HTTP/1.1 413") and not out.endswith(b"<open>"), out[:200]
    assert worker_rss(srv) - before < 16 << 20


def test_a_body_over_the_limit_is_a_413_and_writes_nothing(srv: Server) -> None:
    before = srv.snapshot()
    body = b'{"url": "http://big-body:1", "healthCheck": {"type": "none"}, "tags": ["' + b"a" * (1 << 20) + b'"]}'
    reply = srv.call("PUT", "/registry-svc/instance", raw=body)
    assert reply.status == 413 and reply.json["error"].startswith("request body is ")
    assert srv.snapshot() == before


# --- 2 and 3: URLs -----------------------------------------------------------------------

MALFORMED = ["http://[::1", "http://[zz]:80", "http://]", "http://[::1]x:80", "http://a%00b:80", "http://h:1?",
             "http://h:1#", "http://h:1/p?q=1", "http://user:pw@h:1", "http://a..b:1", f"http://{'a' * 64}.example:1",
             "http://1.2.3:80", "http://h:", "http://-h:1", "http://h:1/a b", "http://h:1/%zz"]  # fmt: skip


@pytest.mark.parametrize("url", MALFORMED)
@pytest.mark.parametrize("field", ["url", "nodeUrl"])
def test_malformed_urls_are_a_400_naming_the_field(srv: Server, url: str, field: str) -> None:
    body = {"url": url} if field == "url" else {"url": "http://valid-host:1", "nodeUrl": url}
    before = srv.snapshot()
    reply = srv.register({**body, "slug": "bad-url", "healthCheck": NO_CHECK})
    assert reply.status == 400, reply.body
    assert reply.json["error"].startswith(f"{field}: "), reply.json
    assert srv.snapshot() == before


def test_a_path_given_by_parts_cannot_smuggle_a_query(srv: Server) -> None:
    reply = srv.register({"host": "parts-host", "port": 81, "path": "/x?admin=1", "healthCheck": NO_CHECK})
    assert reply.status == 400 and reply.json["error"].startswith("path: ")


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("HTTP://Canon.Example:80/", "http://canon.example"),
        ("http://canon.example", "http://canon.example"),
        ("http://CANON.example:80", "http://canon.example"),
        ("https://canon.example:443/v1", "https://canon.example/v1"),
        ("http://[0:0::1]:8080", "http://[::1]:8080"),
    ],
)
def test_one_endpoint_has_one_canonical_url_and_one_instance(srv: Server, spelling: str, canonical: str) -> None:
    first = srv.register({"url": canonical, "slug": "canon", "healthCheck": NO_CHECK}).json["instance"]
    again = srv.register({"url": spelling, "slug": "canon", "healthCheck": NO_CHECK})
    assert again.status == 200, again.body  # an update of the same instance, not a second one
    assert again.json["instance"]["id"] == first["id"] and again.json["instance"]["url"] == canonical
    assert again.json["instance"]["port"] == (8080 if "8080" in canonical else 443 if "https" in canonical else 80)


def test_probe_and_proxy_use_the_canonical_host(srv: Server) -> None:
    seen: list[str] = []
    backend = Backend().start()
    original = backend._server.RequestHandlerClass.do_GET  # type: ignore[union-attr]

    def record(handler: Any) -> None:
        seen.append(handler.headers["Host"])
        original(handler)

    backend._server.RequestHandlerClass.do_GET = record  # type: ignore[union-attr]
    try:
        check = {"type": "http", "path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1}
        inst = srv.register({"url": f"HTTP://LocalHost:{backend.port}/", "slug": "canon-host", "healthCheck": check})
        assert inst.json["instance"]["url"] == f"http://localhost:{backend.port}"
        wait_until(lambda: status_of(srv, inst.json["instance"]["id"]) == "Healthy", what="Healthy")
        assert srv.call("GET", "/canon-host/health", token=None).status == 200
        assert set(seen) == {f"localhost:{backend.port}"}
    finally:
        backend.stop()


# --- 4: hostile backends ------------------------------------------------------------------


def test_a_backend_sending_megabytes_without_a_newline_is_unhealthy_with_a_short_reason(srv: Server) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def flood() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"x" * (200 * 1024))

    threading.Thread(target=flood, daemon=True).start()
    try:
        check = {"type": "http", "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 1}
        inst = srv.register({"url": f"http://127.0.0.1:{port}", "slug": "flood", "healthCheck": check}).json["instance"]
        down = wait_until(lambda: (i := instance(srv, inst["id"]))["status"] == "Unhealthy" and i, what="Unhealthy")
        assert down["statusReason"] == "ValueError: no HTTP status line in the first 1024 bytes"
        # Two more failing probes (counted, not slept for): no new transition, no log lines.
        failed = probes_run(srv, "http", "fail")
        wait_for(lambda: probes_run(srv, "http", "fail") >= failed + 2, 15, "two more failing probes")
    finally:
        stop.set()
        listener.close()
    log = srv.log_path.read_text()
    assert "Traceback" not in log
    assert log.count(f"instance {inst['id']}: ") <= 2  # Unknown -> Unhealthy, logged once


def test_stored_urls_that_cannot_be_probed_end_unhealthy_without_tracebacks(tmp_path: Path) -> None:
    """Records from before the canonical form (or imported around the API) with hostnames
    such as `a..b` or a 64-character label: every probe used to raise."""
    import orjson

    from registry_svc import _core

    data = tmp_path / "data"
    store = _core.Store(str(data / "store"))
    legacy = [
        {"id": "dots", "url": "http://a..b:80", "slug": "legacy", "status": "Healthy", "healthCheck": QUICK_TCP},
        {"id": "label", "url": f"http://{'x' * 64}.example:80", "slug": "legacy", "status": "Healthy",
         "healthCheck": {**QUICK_TCP, "type": "http"}},
    ]  # fmt: skip
    for record in legacy:
        record["lastHeartbeat"] = "2026-01-01T00:00:00.000Z"
    store.put_many("instances", [(r["id"], orjson.dumps(r)) for r in legacy])
    store.close()
    server = Server(data, args=FAST).start()
    try:
        for iid in ("dots", "label"):
            down = wait_until(lambda i=iid: (r := instance(server, i))["status"] == "Unhealthy" and r, what=iid)
            assert down["statusReason"].startswith("url not probed: ") and len(down["statusReason"]) <= 200
        time.sleep(2)
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.kill9()


# --- 5: a probe in flight and Stopping ---------------------------------------------------


def test_a_probe_in_flight_does_not_overwrite_stopping(srv: Server) -> None:
    arrived, release = threading.Event(), threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def slow_failing_backend() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                arrived.set()
                release.wait(10)
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=slow_failing_backend, daemon=True).start()
    try:
        check = {"type": "http", "intervalSeconds": 3, "timeoutSeconds": 3, "unhealthyThreshold": 1}
        inst = srv.register(
            {"url": f"http://127.0.0.1:{port}", "slug": "in-flight", "status": "Healthy", "healthCheck": check}
        ).json["instance"]
        assert arrived.wait(15), "no probe came"
        # The probe read the record as Healthy; the service now says it is stopping.
        beat = srv.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat", {"status": "Stopping"})
        assert beat.json["instance"]["status"] == "Stopping"
        release.set()  # the probe fails (500) after the Stopping was written
        time.sleep(1.5)
        assert status_of(srv, inst["id"]) == "Stopping"
    finally:
        release.set()
        listener.close()


# --- 6: instances stranded by a dead node -------------------------------------------------


def test_instances_of_a_dead_node_are_adopted_and_probed_back_to_healthy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = Backend().start()
    one = Server(data, args=FAST, env={"OB_NODE_ID": "node-a"}).start()
    two = Server(data, args=FAST, env={"OB_NODE_ID": "node-b"}).start()
    try:
        inst = one.register({"url": f"http://127.0.0.1:{backend.port}", "slug": "stranded", "healthCheck": QUICK_TCP})
        iid = inst.json["instance"]["id"]
        assert inst.json["instance"]["nodeUrl"] == one.url
        wait_until(lambda: status_of(two, iid) == "Healthy", what="Healthy")
        one.kill9()  # node-a dies; its instance still answers

        def node_a_down() -> bool:
            return any(
                n["id"] == "node-a" and n["status"] == "Unhealthy"
                for n in two.call("POST", "/registry-svc/nodes").json["nodes"]
            )

        wait_until(node_a_down, what="node-a Unhealthy")
        back = wait_until(
            lambda: (i := instance(two, iid))["status"] == "Healthy" and i["statusReason"] == "tcp connect ok" and i,
            what="the instance probed back to Healthy by node-b",
        )
        assert back["nodeUrl"] == one.url
        picked = two.call("GET", "/registry-svc/instance/pick?slug=stranded")
        assert picked.status == 200 and picked.json["instance"]["id"] == iid
    finally:
        one.kill9()
        two.kill9()
        backend.stop()


# --- 7: caches ----------------------------------------------------------------------------


def worker_rss(server: Server) -> int:
    assert server.proc is not None
    tree = psutil.Process(server.proc.pid).children(recursive=True)
    return sum(p.memory_info().rss for p in tree)


def test_repeated_and_varied_filters_do_not_grow_the_server(srv: Server) -> None:
    padding = {f"pad{k}": "p" * 1000 for k in range(8)}  # about 8 KiB per instance, 800 KiB per listing
    for i in range(100):
        srv.register({"url": f"http://cache-{i}:80", "slug": "cache", "tags": ["t"], "metadata": padding})
    once = srv.call("GET", "/registry-svc/instances?tag=t")
    assert once.status == 200 and len(once.json["instances"]) == 100
    before = worker_rss(srv)
    for repeats in range(1, 151):
        reply = srv.call("GET", "/registry-svc/instances?" + "&".join(["tag=t"] * repeats))
        assert reply.status == 200 and reply.body == once.body
        picked = srv.call("GET", "/registry-svc/instance/pick?slug=cache&" + "&".join(["tag=t"] * repeats))
        assert picked.status == 200
    grown = worker_rss(srv) - before
    # Before the fix every repeat count was a new cache entry: 150 x 800 KiB.
    assert grown < 32 << 20, f"the server grew by {grown >> 20} MiB"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("&".join(f"zone=z{i}" for i in range(17)), "zone"),
        ("zone=" + "z" * 300, "zone"),
        ("nodeUrl=not-a-url", "nodeUrl"),
        ("ip=not-an-ip", "ip"),
    ],
)
def test_absurd_list_queries_are_a_400(srv: Server, query: str, field: str) -> None:
    reply = srv.call("GET", f"/registry-svc/instances?{query}")
    assert reply.status == 400 and reply.json["error"].startswith(f"{field}: "), reply.body


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("slug=" + "s" * 100, "slug"),
        ("slug=Not_A_Slug", "slug"),
        ("slug=cache&" + "&".join(f"tag=t{i}" for i in range(17)), "tag"),
        ("slug=cache&zone=" + "z" * 300, "zone"),
    ],
)
def test_absurd_pick_queries_are_a_400(srv: Server, query: str, field: str) -> None:
    reply = srv.call("GET", f"/registry-svc/instance/pick?{query}")
    assert reply.status == 400 and reply.json["error"].startswith(f"{field}: "), reply.body


# --- 8: errors leak nothing of other slugs -----------------------------------------------


def test_conflicts_reveal_nothing_of_records_the_caller_cannot_read(srv: Server) -> None:
    secret = srv.register(
        {"id": "inst_b_secret", "url": "http://b-secret-host:9", "slug": "slug-b", "healthCheck": NO_CHECK}
    ).json["instance"]
    alpha = srv.token("service", "slug-a")
    by_id = srv.register({"id": secret["id"], "url": "http://a-new-host:1"}, token=alpha)
    by_url = srv.register({"url": secret["url"]}, token=alpha)
    by_url_and_id = srv.register({"id": "inst_a_own", "url": secret["url"]}, token=alpha)
    # Each reply may echo what the caller sent, and nothing else of B's record.
    for reply, sent in ((by_id, ("inst_b_secret",)), (by_url, ("b-secret-host",)), (by_url_and_id, ("b-secret-host",))):
        assert reply.status == 409, reply.body
        for leaked in ("b-secret-host", "slug-b", "inst_b_secret"):
            assert leaked in sent or leaked not in reply.json["error"], reply.json
    assert by_id.json["error"] == "instance id 'inst_b_secret' is already registered"
    assert by_url.json["error"] == "url 'http://b-secret-host:9' is already registered"
    # An admin, who can read everything, still gets the whole story.
    admin = srv.register({"id": "inst_admin_x", "url": secret["url"], "healthCheck": NO_CHECK})
    assert admin.status == 409 and "inst_b_secret" in admin.json["error"]


# --- 9: the last admin token -------------------------------------------------------------


def test_two_admins_revoking_each_other_at_once_leave_an_admin(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", processes=2).start()

    def admin_ids(secret: str) -> set[str]:
        listed = server.call("GET", "/registry-svc/tokens", token=secret).json["tokens"]
        return {t["id"] for t in listed if t["role"] == "admin"}

    try:
        survivor = server.admin_token
        (survivor_id,) = admin_ids(survivor)
        for _ in range(15):
            created = server.call("POST", "/registry-svc/tokens", {"role": "admin"}, token=survivor)
            other = created.json["token"]
            (other_id,) = admin_ids(survivor) - {survivor_id}
            barrier = threading.Barrier(2)
            results: dict[str, int] = {}

            def revoke(secret: str, target: str, barrier: threading.Barrier, results: dict[str, int]) -> None:
                barrier.wait()
                results[target] = server.call("DELETE", f"/registry-svc/token/{target}", token=secret).status

            threads = [
                threading.Thread(target=revoke, args=(survivor, other_id, barrier, results)),
                threading.Thread(target=revoke, args=(other, survivor_id, barrier, results)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # One wins; the other finds itself the last admin (409) or already revoked (401).
            assert sorted(results.values()) in ([204, 401], [204, 409]), results
            if results[other_id] != 204:
                survivor, survivor_id = other, other_id
            assert admin_ids(survivor) == {survivor_id}
    finally:
        server.kill9()


# --- 10: HTTP hygiene --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/registry-svc/instances", "/registry-svc/node/self"])
def test_head_answers_like_get_without_a_body(srv: Server, path: str) -> None:
    got = srv.call("GET", path)
    head = srv.call("HEAD", path)
    assert head.status == got.status == 200
    assert head.body == b""
    assert head.headers["content-type"] == "application/json"
    assert int(head.headers["content-length"]) == len(got.body)


def test_trace_answers_the_json_error(srv: Server) -> None:
    reply = srv.call("TRACE", "/registry-svc/instances")
    assert reply.status == 405 and reply.json["error"].startswith("TRACE is not allowed")


def test_unknown_methods_answer_the_json_error(srv: Server) -> None:
    out = raw_http(srv.port, b"FOO /registry-svc/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405") and b'"error"' in out


def test_content_length_with_chunked_is_read_by_chunked_alone_and_closes_the_connection(srv: Server) -> None:
    """RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length, and the server
    closes after answering, so nothing behind the body is read as a request of its own."""
    smuggle = (
        b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    out = raw_http(srv.port, smuggle)
    # The chunked body ({}) was read: the workers' 401 (no token) or 400 for it, one answer.
    assert not out.endswith(b"<open>") and out.count(b"HTTP/1.1 ") == 1, out
    assert out.split(b" ", 2)[1] in (b"400", b"401"), out


# --- 11: GPU memory ----------------------------------------------------------------------


def test_gpu_memory_is_nvml_v2_used_with_reserved_beside_it() -> None:
    from registry_svc.gpu import GpuSampler

    spec = importlib.util.spec_from_file_location("fake_pynvml", Path(FAKE_NVML) / "pynvml.py")
    assert spec is not None and spec.loader is not None
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    gpus = GpuSampler(nvml=fake).sample("http://127.0.0.1:1")
    # v1 would say 3207 MiB used: it counts the 615 MiB the driver reserves.
    assert (gpus[0]["memoryUsage"], gpus[0]["memoryReserved"], gpus[0]["memoryTotal"]) == (2592, 615, 81559)
    # A driver without the v2 call: v1's figure, reserved unknown.
    assert (gpus[1]["memoryUsage"], gpus[1]["memoryReserved"]) == (20000, None)


# --- also: dropping a store with writes pending ------------------------------------------


def test_dropping_a_store_with_pending_completions_does_not_deadlock(tmp_path: Path) -> None:
    script = f"""
from registry_svc import _core
store = _core.Store({str(tmp_path / "store")!r}, 64 << 20)
done = []
for i in range(300):
    store.put_nowait("instances", f"i{{i}}", b'{{"id": "i%d", "url": "http://h%d:1"}}' % (i, i), None, done.append)
del store  # the writer still has completions to run, and they need the GIL
print("dropped", len(done))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "dropped 300"


@pytest.mark.parametrize("path", ["/v3/discovery:endpoints", "/metrics", "/version", "/ui"])
def test_every_registry_route_takes_the_registrys_body_limit(srv: Server, path: str) -> None:
    """Review finding 7: the body limit had its own list of the registry's routes
    (`/registry-svc/`, `/health`), so an xDS POST could carry the proxy's 16 MiB into Robyn,
    which buffers bodies whole. One table now (rust/rules.rs): refused by the head."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n"
    out = raw_http(srv.port, head.encode(), timeout=3)
    assert out.startswith(b"HTTP/1.1 413") and not out.endswith(b"<open>"), out[:200]
    assert out.endswith(b'{"error":"request body is 2097152 bytes; the limit is 1048576"}')
