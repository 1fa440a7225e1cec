"""Instance lookups, one instance and picks answered by the API port's gate in Rust
(rust/reads.rs), without the Python workers, and exactly as the workers answer them.
Everything else (errors, `?index=`, values to canonicalise, see reads.rs) is the workers'
answer, on both kinds of connection."""

from __future__ import annotations

import contextlib
import http.client
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from conftest import NO_CHECK, Server
from registry_svc import _core


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Answers name who gave them (a test-only flag): the parity tests compare the gate's
    # answer with the workers', never one side with itself.
    server = Server(tmp_path_factory.mktemp("gate-reads"), env={"REGISTRY_SVC_ANSWERED_BY": "1"}).start()
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
    return answer(conn, path, token)[1:]


def answer(conn: http.client.HTTPConnection, path: str, token: str | None) -> tuple[str, int, bytes, str | None]:
    """(who answered: gate or workers, status, body, X-Registry-Index)."""
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    resp = conn.getresponse()
    body = resp.read()
    return resp.getheader("x-registry-answered-by") or "?", resp.status, body, resp.getheader("x-registry-index")


def both_sides(srv: Server, path: str, token: str | None) -> tuple[tuple[str, int, bytes, str | None], ...]:
    """The workers' answer (asked on their own loopback port, behind the gate) and the
    gate's, for one request."""
    workers_conn = http.client.HTTPConnection("127.0.0.1", srv.workers_port(), timeout=10)
    by_workers = answer(workers_conn, path, token)
    gate_conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    by_gate = answer(gate_conn, path, token)
    for conn in (workers_conn, gate_conn):
        conn.close()
    return by_workers, by_gate


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


# (request, whether the gate answers it itself)
QUERIES = [
    ("/registry-svc/instances", True),
    ("/registry-svc/instances?slug=shop", True),
    ("/registry-svc/instances?slug=shop&tag=prod&tag=prod&tag=eu", True),
    ("/registry-svc/instances?status=Healthy&zone=z1", True),
    ("/registry-svc/instances?deploymentId=" + quote("depl a+b"), True),
    ("/registry-svc/instances?deploymentId=depl+a%2Bb", True),
    ("/registry-svc/instances?slug=", True),
    ("/registry-svc/instances?scheme=http&slug=solo", True),
    ("/registry-svc/instance/pick?slug=solo", True),
    ("/registry-svc/instance/pick?slug=shop&policy=consistent_hash&key=user-7", True),
    # Values put in their stored form by the rule the workers' models call (rust/url.rs).
    ("/registry-svc/instances?ip=0:0::1", True),
    ("/registry-svc/instances?ip=%3A%3AFFFF%3A1.2.3.4", True),
    ("/registry-svc/instances?nodeUrl=" + quote("HTTP://Gate-1:80/", safe=""), True),
    # Errors and what the gate cannot answer exactly go to the workers, on both paths:
    ("/registry-svc/instance/pick?slug=ghost", False),
    ("/registry-svc/instance/pick?slug=down", False),
    ("/registry-svc/instance/pick?slug=shop&tag=canary", False),
    ("/registry-svc/instances?colour=red", False),
    ("/registry-svc/instances?nodeUrl=not-a-url", False),
    ("/registry-svc/instances?ip=01.2.3.4", False),
    ("/registry-svc/instance/pick?slug=Bad_Slug", False),
    ("/registry-svc/instance/pick?slug=shop&slug=solo", False),
    ("/registry-svc/instance/pick?slug=shop&policy=consistent_hash", False),
    # One decoding rule (rust/reads.rs) on both sides: what is not percent-encoded UTF-8 is
    # the workers' 400 (they took "%zz" literally, and the gate read "%+1" as a byte 1), and
    # names spelled two ways are one name (the workers kept one spelling's values).
    ("/registry-svc/instances?slug=%zz", False),
    ("/registry-svc/instances?slug=%+1", False),
    ("/registry-svc/instances?slug=%ff", False),
    ("/registry-svc/instances?tag=prod&%74ag=eu&slug=shop", True),
]


@pytest.mark.parametrize(("path", "by_the_gate"), QUERIES)
def test_the_gate_answers_exactly_as_the_workers(srv: Server, path: str, by_the_gate: bool) -> None:
    by_workers, by_gate = both_sides(srv, path, srv.admin_token)
    assert by_workers[0] == "workers"
    assert by_gate[0] == ("gate" if by_the_gate else "workers")
    # The same bytes, and the same index: the result's own (its slug's or the collection's).
    assert by_gate[1:] == by_workers[1:], (by_gate, by_workers)


@pytest.mark.parametrize("query", ["slug=%zz", "slug=%+1", "slug=%ff", "%zz=shop", "tag=x%2"])
def test_a_query_that_is_not_percent_encoded_utf8_is_a_400_naming_the_part(srv: Server, query: str) -> None:
    """Before, the workers took such parts literally (a lookup of slug '%zz': 200, empty)."""
    for path in (f"/registry-svc/instances?{query}", f"/registry-svc/instance/pick?{query}"):
        by_workers, by_gate = both_sides(srv, path, srv.admin_token)
        assert by_gate == by_workers
        assert by_workers[1] == 400, by_workers
        bad = next(part for part in query.split("=") if "%" in part)
        assert orjson.loads(by_workers[2])["error"] == f"query: '{bad}' is not percent-encoded UTF-8"


@pytest.mark.parametrize("raw", ["inst%zz", "inst%ff", "inst%+1"])
def test_a_path_id_that_is_not_percent_encoded_utf8_is_a_400_naming_it(srv: Server, raw: str) -> None:
    """Before, the workers took it literally (a 404 for an instance 'inst%zz')."""
    by_workers, by_gate = both_sides(srv, f"/registry-svc/instance/{raw}", srv.admin_token)
    assert by_gate == by_workers
    assert by_workers[1] == 400, by_workers
    assert orjson.loads(by_workers[2])["error"] == f"id: '{raw}' is not percent-encoded UTF-8"


def generated_queries(count: int, seed: int) -> list[str]:
    """Lookups and picks, valid and not: known and unknown names, repeats, odd values,
    encodings, and values the workers would first canonicalize."""
    rng = random.Random(seed)
    names = ["slug", "tag", "zone", "status", "deploymentId", "scheme", "host", "ip", "id", "nodeUrl", "colour"]
    values = ["shop", "solo", "down", "ghost", "prod", "eu", "canary", "z1", "z2", "Healthy", "Unhealthy", "http",
              "gate-1", "GATE-1", "127.0.0.1", "0:0::1", "::1", "http://127.0.0.1:11337", "HTTP://N:80", "",
              "depl a+b", "Bad_Slug", "a" * 300, "%C3%A9", "x%2", "%+1", "%zz", "inst_nope"]  # fmt: skip
    pick_names = ["slug", "policy", "zone", "key", "tag", "colour"]
    policies = ["round_robin", "random", "weighted", "least_request", "consistent_hash", "fastest"]
    out = []
    for _ in range(count):
        if rng.random() < 0.6:
            pairs = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(0, 4))]
            path = "/registry-svc/instances"
        else:
            pairs = [("slug", rng.choice(["shop", "solo", "down", "ghost", "Bad_Slug", ""]))]
            for _ in range(rng.randint(0, 3)):
                name = rng.choice(pick_names)
                pairs.append((name, rng.choice(policies) if name == "policy" else rng.choice(values)))
            rng.shuffle(pairs)
            path = "/registry-svc/instance/pick"
        query = "&".join(f"{n}={v if '%' in v else quote(v, safe='')}" for n, v in pairs)
        out.append(f"{path}?{query}" if query else path)
    return out


def test_generated_lookups_and_picks_get_the_same_answer_from_either_side(srv: Server) -> None:
    """A property test by brute force: 2,000 generated queries, each asked of the workers
    and of the gate; status and bytes agree (a pick's chosen instance aside, which the
    round robin moves between the asks), and the gates answered their share themselves:
    the API port's, and the data port's (in another thread of the same Rust code)."""
    gate_answered = 0
    for path in generated_queries(2000, seed=2026):
        by_workers, by_gate = both_sides(srv, path, srv.admin_token)
        data_conn = http.client.HTTPConnection("127.0.0.1", srv.data_port, timeout=10)
        by_data_port = answer(data_conn, path, srv.admin_token)
        data_conn.close()
        assert by_workers[0] == "workers", path
        gate_answered += by_gate[0] == "gate"
        assert by_data_port[0] == by_gate[0], (path, by_data_port, by_gate)
        for other in (by_gate, by_data_port):
            if "/pick" in path and other[1] == 200 and by_workers[1] == 200:
                assert orjson.loads(other[2])["instance"]["slug"] == orjson.loads(by_workers[2])["instance"]["slug"]
                continue
            assert other[1:] == by_workers[1:], (path, other, by_workers)
    assert gate_answered > 200, gate_answered


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


def test_a_data_dir_that_was_a_cluster_replica_serves_alone_with_the_gates_answering(tmp_path: Path) -> None:
    """Replica freshness lives in a page the store's processes share, which outlives a
    server: one started without etcd forgets it, or its gates would leave every read to
    the workers as a stale replica's."""
    data = tmp_path / "data"
    (data / "store").mkdir(parents=True, mode=0o700)
    data.chmod(0o700)
    left = _core.Store(str(data / "store"))
    left.set_fresh_until(0)  # a replica that lost etcd, as a cluster server leaves it
    left.close()
    server = Server(data, env={"REGISTRY_SVC_ANSWERED_BY": "1"}).start()
    try:
        assert server.register({"url": "http://127.0.0.1:9", "slug": "alone", "healthCheck": NO_CHECK}).status == 201
        conn = http.client.HTTPConnection("127.0.0.1", server.data_port, timeout=10)
        conn.request(
            "GET", "/registry-svc/instances?slug=alone", headers={"Authorization": f"Bearer {server.admin_token}"}
        )
        resp = conn.getresponse()
        resp.read()
        assert (resp.status, resp.getheader("x-registry-answered-by")) == (200, "gate")
        assert resp.getheader("x-registry-stale-seconds") is None
    finally:
        server.kill9()
