"""Instance lookups, one instance and picks answered by the API port's gate in Rust
(rust/reads.rs), without the Python workers, and exactly as the workers answer them.
Everything else (errors, `?index=`, values to canonicalise, see reads.rs) is the workers'
answer, on both kinds of connection."""

from __future__ import annotations

import contextlib
import http.client
import signal
from collections.abc import Iterator
from urllib.parse import quote

import orjson
import pytest

from conftest import NO_CHECK, Server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("gate-reads")).start()
    for i, (slug, status, tags, zone) in enumerate([
        ("shop", "Healthy", ["prod", "eu"], "z1"), ("shop", "Healthy", ["prod"], "z2"),
        ("shop", "Unhealthy", ["canary"], "z1"), ("solo", "Healthy", [], None), ("down", "Unhealthy", [], None),
        ("sp ace", None, [], None),
    ]):  # fmt: skip
        body = {"url": f"http://gate-{i}:80", "slug": slug, "tags": tags, "zone": zone, "healthCheck": NO_CHECK}
        if status:
            body["status"] = status
        if slug == "sp ace":
            body = {"url": f"http://gate-{i}:80", "deploymentId": "depl a+b", "healthCheck": NO_CHECK}
        assert server.register(body).status == 201
    yield server
    server.kill9()


def get(conn: http.client.HTTPConnection, path: str, token: str | None) -> tuple[int, bytes, str | None]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp.getheader("x-registry-index")


def test_lookups_are_answered_with_the_workers_stopped(srv: Server) -> None:
    stopped = srv.worker_processes()
    for p in stopped:
        p.send_signal(signal.SIGSTOP)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        status, body, index = get(conn, "/registry-svc/instances?slug=shop&tag=prod", srv.admin_token)
        assert status == 200 and index is not None and int(index) > 0
        assert len(orjson.loads(body)["instances"]) == 2
        status, body, _ = get(conn, "/registry-svc/instances?zone=z1", srv.admin_token)
        assert status == 200 and {i["zone"] for i in orjson.loads(body)["instances"]} == {"z1"}
        conn.close()
    finally:
        for p in stopped:
            p.send_signal(signal.SIGCONT)


QUERIES = [
    "/registry-svc/instances",
    "/registry-svc/instances?slug=shop",
    "/registry-svc/instances?slug=shop&tag=prod&tag=prod&tag=eu",
    "/registry-svc/instances?status=Healthy&zone=z1",
    "/registry-svc/instances?deploymentId=" + quote("depl a+b"),
    "/registry-svc/instances?deploymentId=depl+a%2Bb",
    "/registry-svc/instances?slug=",
    "/registry-svc/instances?scheme=http&slug=solo",
    "/registry-svc/instance/pick?slug=solo",
    "/registry-svc/instance/pick?slug=ghost",
    "/registry-svc/instance/pick?slug=down",
    "/registry-svc/instance/pick?slug=shop&policy=consistent_hash&key=user-7",
    "/registry-svc/instance/pick?slug=shop&tag=canary",
    # Declined by the gate, answered by the workers on both paths:
    "/registry-svc/instances?colour=red",
    "/registry-svc/instances?nodeUrl=not-a-url",
    "/registry-svc/instance/pick?slug=Bad_Slug",
    "/registry-svc/instance/pick?slug=shop&slug=solo",
    "/registry-svc/instance/pick?slug=shop&policy=consistent_hash",
]


@pytest.mark.parametrize("path", QUERIES)
def test_the_gate_answers_exactly_as_the_workers(srv: Server, path: str) -> None:
    # A connection that sent anything to the workers stays with them: the second request
    # on it is the workers' answer; a fresh connection gets the gate's.
    workers_conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    assert get(workers_conn, "/health", None)[0] == 200
    by_workers = get(workers_conn, path, srv.admin_token)
    gate_conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    by_gate = get(gate_conn, path, srv.admin_token)
    for conn in (workers_conn, gate_conn):
        conn.close()
    # The same bytes, and the same index: the result's own (its slug's or the collection's).
    assert by_gate == by_workers, (by_gate, by_workers)


@pytest.mark.parametrize(
    "header",
    [None, "Bearer rsv_unknown", "Basic abc", "", "BEARER {token}", "{token}"],
)
def test_tokens_are_checked_the_same_by_gate_and_workers(srv: Server, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header.format(token=srv.admin_token)}
    replies = []
    for warm in (False, True):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        if warm:
            conn.request("GET", "/health")
            conn.getresponse().read()
        conn.request("GET", "/registry-svc/instances?slug=solo", headers=headers)
        resp = conn.getresponse()
        replies.append((resp.status, resp.read()))
        conn.close()
    assert replies[0] == replies[1]


def test_a_revoked_token_is_refused_by_the_gate_at_once(srv: Server) -> None:
    created = srv.call("POST", "/registry-svc/tokens", {"role": "proxy"}).json
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    with contextlib.closing(conn):
        assert get(conn, "/registry-svc/instances?slug=solo", created["token"])[0] == 200
        assert srv.call("DELETE", f"/registry-svc/token/{created['info']['id']}").status == 204
        status, body, _ = get(conn, "/registry-svc/instances?slug=solo", created["token"])
    assert status == 401 and orjson.loads(body)["error"] == "unknown or revoked token"


def test_a_service_token_sees_only_its_slug_through_the_gate(srv: Server) -> None:
    token = srv.token("service", "solo")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    with contextlib.closing(conn):
        status, body, _ = get(conn, "/registry-svc/instances", token)
        assert status == 200 and {i["slug"] for i in orjson.loads(body)["instances"]} == {"solo"}
        assert get(conn, "/registry-svc/instance/pick?slug=solo", token)[0] == 200
        status, body, _ = get(conn, "/registry-svc/instance/pick?slug=shop", token)
    assert status == 404 and orjson.loads(body)["error"] == "no instances are registered for slug 'shop'"
