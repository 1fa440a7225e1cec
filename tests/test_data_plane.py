"""The data port (`--data-port`): instance lookups, one instance, picks and the proxy, served
by every server process in Rust (SO_REUSEPORT), with the API port's wire format, status
codes, errors and auth. Through real HTTP against real server processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import NO_CHECK, Backend, Server, free_port, wait_for

SLUG = "dp-orders"
OTHER = "dp-billing"


def _instance(index: int, slug: str = SLUG, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{slug}-{index}", "slug": slug, "url": f"http://127.0.0.1:{20000 + index}",
        "tags": ["blue" if index % 2 else "green", "v1"], "zone": "a" if index < 2 else "b",
        "healthCheck": NO_CHECK, **extra,
    }  # fmt: skip


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("data-plane") / "data", processes=2).start()
    try:
        for index in range(4):
            assert server.register(_instance(index)).status == 201
        assert server.register({**_instance(0, OTHER), "url": "http://127.0.0.1:20100"}).status == 201
        yield server
    finally:
        server.stop()
        server.assert_no_traffic_left_the_machine()


def both(server: Server, path: str, token: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    kwargs["token"] = token if token is not None else server.admin_token
    return server.call("GET", path, **kwargs), server.call("GET", path, data_port=True, **kwargs)


LOOKUPS = [
    "/registry-svc/instances",
    f"/registry-svc/instances?slug={SLUG}",
    f"/registry-svc/instances?slug={SLUG}&tag=blue",
    f"/registry-svc/instances?slug={SLUG}&slug={OTHER}&zone=a",
    "/registry-svc/instances?tag=v1&status=Unknown",
    "/registry-svc/instances?host=127.0.0.1",
    "/registry-svc/instances?host=LOCALHOST&ip=127.0.0.1",
    "/registry-svc/instances?ip=0:0::1",  # not canonical: the workers canonicalize it
    "/registry-svc/instances?ip=127.000.0.1",
    "/registry-svc/instances?nodeUrl=http%3A%2F%2F127.0.0.1%3A1",
    "/registry-svc/instances?nodeUrl=HTTP%3A%2F%2F127.0.0.1%3A80",
    f"/registry-svc/instance/{SLUG}-1",
    f"/registry-svc/instance/pick?slug={SLUG}&policy=consistent_hash&key=user-7",
    f"/registry-svc/instance/pick?slug={SLUG}&policy=consistent_hash&key=user-7&tag=blue&zone=b",
    f"/registry-svc/instance/pick?slug={SLUG}&tag=green&tag=green&tag=v1&policy=consistent_hash&key=k",
    # Refusals: the same status and error on both ports.
    "/registry-svc/instances?colour=red",
    "/registry-svc/instances?ip=not-an-ip",
    f"/registry-svc/instance/{SLUG}-9",
    "/registry-svc/instance/pick?slug=nobody-here",
    f"/registry-svc/instance/pick?slug={SLUG}&policy=consistent_hash",
    f"/registry-svc/instance/pick?slug={SLUG}&policy=fastest",
    "/registry-svc/instance/pick",
]


@pytest.mark.parametrize("path", LOOKUPS)
def test_both_ports_answer_byte_for_byte_alike(plane: Server, path: str) -> None:
    api, data = both(plane, path)
    assert (data.status, data.body) == (api.status, api.body), path
    assert data.headers.get("content-type") == api.headers.get("content-type")
    assert data.headers.get("x-registry-index") == api.headers.get("x-registry-index")


def test_every_policy_picks_a_routable_instance_on_the_data_port(plane: Server) -> None:
    ids = {f"{SLUG}-{i}" for i in range(4)}
    for policy in ("round_robin", "random", "weighted", "least_request"):
        seen = set()
        for _ in range(12):
            reply = plane.call("GET", f"/registry-svc/instance/pick?slug={SLUG}&policy={policy}", data_port=True)
            assert reply.status == 200, reply.body
            seen.add(reply.json["instance"]["id"])
        assert seen <= ids and seen, policy
    # Zone and tags narrow the choice as on the API port.
    for _ in range(6):
        reply = plane.call("GET", f"/registry-svc/instance/pick?slug={SLUG}&zone=b&tag=blue", data_port=True)
        assert reply.json["instance"]["id"] == f"{SLUG}-3"


def test_auth_on_the_data_port(plane: Server) -> None:
    path = f"/registry-svc/instances?slug={SLUG}"
    for token in ("", "rsv_not-a-token", "Basic abc"):
        api = plane.call("GET", path, token=None, headers={"Authorization": token} if token else {})
        data = plane.call("GET", path, token=None, headers={"Authorization": token} if token else {}, data_port=True)
        assert api.status == data.status == 401, (token, data.body)
        assert data.body == api.body
    # A service token sees its own slug only: the same answers on both ports.
    service = plane.token("service", OTHER)
    for probe in (
        f"/registry-svc/instances?slug={SLUG}",
        "/registry-svc/instances",
        f"/registry-svc/instance/{SLUG}-1",
        f"/registry-svc/instance/{OTHER}-0",
        f"/registry-svc/instance/pick?slug={SLUG}",
        f"/registry-svc/instance/pick?slug={OTHER}",
    ):
        api, data = both(plane, probe, token=service)
        assert (data.status, data.body) == (api.status, api.body), probe
    # Revoked: refused on both ports at once.
    proxy = plane.token("proxy")
    assert plane.call("GET", path, token=proxy, data_port=True).status == 200
    listed = plane.call("GET", "/registry-svc/tokens").json["tokens"]
    token_id = next(t["id"] for t in listed if t.get("role") == "proxy")
    assert plane.call("DELETE", f"/registry-svc/token/{token_id}").status == 204
    api, data = both(plane, path, token=proxy)
    assert api.status == data.status == 401, data.body


def test_the_data_port_serves_reads_only(plane: Server) -> None:
    reply = plane.call("POST", "/registry-svc/tokens", {"role": "admin"}, data_port=True)
    assert reply.status == 405 and f"use the API port ({plane.port})" in reply.json["error"], reply.body
    reply = plane.call("DELETE", f"/registry-svc/instance/{SLUG}-1", data_port=True)
    assert reply.status == 405 and "use the API port" in reply.json["error"], reply.body
    assert plane.call("GET", f"/registry-svc/instance/{SLUG}-1").status == 200  # untouched
    for path in ("/registry-svc/definitions", "/metrics", "/registry-svc/openapi.json"):
        assert plane.call("GET", path, data_port=True).status == 404, path
    assert plane.call("GET", "/health", token=None, data_port=True).status == 200


def test_every_process_holds_the_data_port(plane: Server) -> None:
    holders = set()
    for proc in plane.worker_processes():
        try:
            connections = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == plane.data_port for c in connections):
            holders.add(proc.pid)
    assert len(holders) == 2, holders


def test_the_proxy_on_the_data_port(plane: Server) -> None:
    backend = Backend("from-data-port")
    try:
        body = {"slug": "dp-web", "url": f"http://127.0.0.1:{backend.port}", "healthCheck": NO_CHECK}
        assert plane.register(body).status == 201
        reply = plane.call("GET", "/dp-web/hello?a=1", token=None, data_port=True)
        assert (reply.status, reply.body) == (200, b"from-data-port")
        reply = plane.call("GET", "/dp-web/../x", token=None, data_port=True)
        assert reply.status == 400, reply.body
    finally:
        backend.close()


def test_an_ejection_by_one_process_is_seen_by_every_process(plane: Server) -> None:
    """The proxy of whichever process sees an instance fail five times ejects it; picks on
    either port, served by any process, skip it (shared state, rust/core/shared.rs)."""
    good = [Backend(f"good-{i}") for i in range(3)]
    try:
        with socket.socket() as closed:  # a loopback port nobody listens on
            closed.bind(("127.0.0.1", 0))
            dead_port = closed.getsockname()[1]
        bodies = [
            {"id": f"ej-{i}", "slug": "dp-eject", "url": f"http://127.0.0.1:{b.port}"} for i, b in enumerate(good)
        ]
        bodies.append({"id": "ej-dead", "slug": "dp-eject", "url": f"http://127.0.0.1:{dead_port}"})
        for body in bodies:
            assert plane.register({**body, "healthCheck": NO_CHECK}).status == 201
        for _ in range(24):  # GETs are retried elsewhere: every one succeeds
            assert plane.call("GET", "/dp-eject/x", token=None).status == 200
        picks = set()
        for _ in range(40):
            for data_port in (False, True):
                reply = plane.call("GET", "/registry-svc/instance/pick?slug=dp-eject", data_port=data_port)
                picks.add(reply.json["instance"]["id"])
        assert "ej-dead" not in picks and picks == {"ej-0", "ej-1", "ej-2"}, picks
    finally:
        for backend in good:
            backend.close()


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "registry_svc", "serve", "--port", str(free_port()),
               "--data-dir", str(tmp_path / "d"), "--probe-networks", "127.0.0.0/8", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_taken_data_port_stops_the_server_and_0_turns_it_off(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _serve(tmp_path, "--data-port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert "data port" in result.stderr and "in use" in result.stderr, result.stderr
    result = _serve(tmp_path, "--data-port", "70000")
    assert result.returncode == 2 and "--data-port" in result.stderr
    server = Server(tmp_path / "off", data_port=0).start()
    try:
        assert "no data port" in wait_for(
            lambda: (text := server.log_path.read_text()) and "no data port" in text and text, 10, "the start line"
        )
    finally:
        server.stop()


def test_the_data_port_answers_in_rust(plane: Server) -> None:
    """Lookups and picks on the data port never reach the Python workers: the data gates'
    own counts show them answered (and the workers' request count does not move)."""

    def counts() -> tuple[float, float]:
        text = plane.call("GET", "/metrics", token=None).body.decode()
        answered = workers = 0.0
        for line in text.splitlines():
            if line.startswith('registry_gate_requests_total{outcome="answered",port="data"}'):
                answered = float(line.split()[-1])
            if line.startswith("registry_http_requests_total{") and 'route="/registry-svc/instance/pick"' in line:
                workers += float(line.split()[-1])
        return answered, workers

    before = counts()
    for _ in range(20):
        assert plane.call("GET", f"/registry-svc/instance/pick?slug={SLUG}", data_port=True).status == 200
        assert plane.call("GET", f"/registry-svc/instance/{SLUG}-2", data_port=True).status == 200
    after = wait_for(lambda: (c := counts())[0] >= before[0] + 40 and c, 10, "the data gates' counts")
    assert after[1] == before[1]


def test_the_data_ports_own_address_cannot_be_registered(plane: Server) -> None:
    body = {"slug": "dp-loop", "url": f"http://127.0.0.1:{plane.data_port}", "healthCheck": NO_CHECK}
    reply = plane.register(body)
    assert reply.status == 400 and "own address" in reply.json["error"], reply.body


def test_canonical_filters_match_on_both_ports(plane: Server) -> None:
    """`nodeUrl`, `host` and `ip` as stored are answered in Rust, and find what the API
    finds (the instances this server registered carry its URL as their node)."""
    from urllib.parse import quote

    for query, found in ((f"nodeUrl={quote(plane.url, safe='')}", 4), ("ip=127.0.0.1", 4), ("host=LocalHost", 0)):
        api, data = both(plane, f"/registry-svc/instances?slug={SLUG}&{query}")
        assert api.status == 200 and (data.status, data.body) == (api.status, api.body), query
        assert len(api.json["instances"]) == found, (query, api.body)  # by IP: no host stored
