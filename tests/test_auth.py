"""Tokens, roles, permissions and slug isolation through real HTTP."""

from __future__ import annotations

import http.client
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import NO_CHECK, Server, wait_for
from registry_svc.clock import parse_time

# (method, path, body, permission named in the 403)
ENDPOINTS = [
    ("PUT", "/registry-svc/instance", {"url": "http://perm:1", "healthCheck": NO_CHECK}, "registry-svc:instance:edit"),
    ("GET", "/registry-svc/instances", None, "registry-svc:instance:view"),
    ("GET", "/registry-svc/instance/inst_x", None, "registry-svc:instance:view"),
    ("DELETE", "/registry-svc/instance/inst_x", None, "registry-svc:instance:delete"),
    (
        "PUT",
        "/registry-svc/definition",
        {"definition": {"id": "perm", "image": {"name": "x"}}},
        "registry-svc:definition:edit",
    ),
    ("GET", "/registry-svc/definitions", None, "registry-svc:definition:view"),
    ("GET", "/registry-svc/definition/perm", None, "registry-svc:definition:view"),
    ("DELETE", "/registry-svc/definition/perm", None, "registry-svc:definition:delete"),
    ("POST", "/registry-svc/nodes", None, "registry-svc:node:view"),
    ("DELETE", "/registry-svc/node/http%3A%2F%2Fx%3A1", None, "registry-svc:node:delete"),
    ("POST", "/registry-svc/tokens", {"role": "admin"}, "admin"),
    ("GET", "/registry-svc/tokens", None, "admin"),
    ("DELETE", "/registry-svc/token/tok_x", None, "admin"),
]
GRANTED = {
    "service": {"registry-svc:instance:view", "registry-svc:instance:edit", "registry-svc:definition:view"},
    "proxy": {"registry-svc:instance:view", "registry-svc:node:view"},
}


@pytest.fixture(scope="module")
def tokens(server: Server) -> dict[str, str]:
    return {"service": server.token("service", "perm-svc"), "proxy": server.token("proxy")}


@pytest.mark.parametrize("role", ["service", "proxy"])
@pytest.mark.parametrize(("method", "path", "body", "permission"), ENDPOINTS)
def test_every_permission_is_enforced(
    server: Server, tokens: dict[str, str], role: str, method: str, path: str, body: object, permission: str
) -> None:
    before = server.snapshot()
    reply = server.call(method, path, body, token=tokens[role])
    if permission in GRANTED[role]:
        assert reply.status not in (401, 403), reply.body
    else:
        assert reply.status == 403, reply.body
        assert permission in reply.json["error"] or "admin" in reply.json["error"]
        assert server.snapshot() == before


@pytest.mark.parametrize(("method", "path", "body", "permission"), ENDPOINTS)
def test_missing_or_bad_token_is_401(server: Server, method: str, path: str, body: object, permission: str) -> None:
    assert server.call(method, path, body, token=None).status == 401
    assert server.call(method, path, body, token="rsv_not-a-real-token").status == 401
    reply = server.call(method, path, body, token=None, headers={"Authorization": "Basic abc"})
    assert reply.status == 401 and "Bearer" in reply.json["error"]


def test_health_needs_no_token(server: Server) -> None:
    assert server.call("GET", "/health", token=None).json == {"status": "ok"}


def test_service_tokens_are_isolated_by_slug(server: Server) -> None:
    alpha, beta = server.token("service", "alpha"), server.token("service", "beta")
    a = server.register({"url": "http://alpha-1:80"}, token=alpha)
    assert a.status == 201 and a.json["instance"]["slug"] == "alpha"
    b = server.register({"url": "http://beta-1:80", "slug": "beta"}, token=beta)
    assert b.status == 201
    # A service cannot register under another slug...
    refused = server.register({"url": "http://x:80", "slug": "beta"}, token=alpha)
    assert refused.status == 403 and "beta" in refused.json["error"]
    # ...nor take over another slug's URL.
    assert server.register({"url": "http://beta-1:80"}, token=alpha).status == 409
    # Each sees only its own instances, whatever it asks for.
    seen = server.call("GET", "/registry-svc/instances", token=alpha).json["instances"]
    assert {i["slug"] for i in seen} == {"alpha"}
    assert server.call("GET", "/registry-svc/instances?slug=beta", token=alpha).json["instances"] == []
    b_id = b.json["instance"]["id"]
    assert server.call("GET", f"/registry-svc/instance/{b_id}", token=alpha).status == 404
    # Admins and proxies see both.
    proxy = server.token("proxy")
    for tok in (server.admin_token, proxy):
        slugs = {i["slug"] for i in server.call("GET", "/registry-svc/instances", token=tok).json["instances"]}
        assert {"alpha", "beta"} <= slugs


def test_admin_can_re_register_a_service_url_keeping_its_slug(server: Server) -> None:
    svc = server.token("service", "owned")
    inst = server.register({"url": "http://owned-1:80"}, token=svc).json["instance"]
    again = server.register({"url": "http://owned-1:80", "tags": ["admin-touched"]})
    assert again.status == 200
    assert again.json["instance"]["id"] == inst["id"] and again.json["instance"]["slug"] == "owned"


def test_token_api_create_list_revoke(server: Server) -> None:
    created = server.call("POST", "/registry-svc/tokens", {"role": "service", "slug": "tok-svc", "description": "ci"})
    assert created.status == 201
    secret, info = created.json["token"], created.json["info"]
    assert secret.startswith("rsv_") and info["role"] == "service" and info["slug"] == "tok-svc"
    listed = server.call("GET", "/registry-svc/tokens")
    assert info["id"] in {t["id"] for t in listed.json["tokens"]}
    assert secret.encode() not in listed.body and b"secretHash" not in listed.body
    assert server.call("GET", "/registry-svc/instances", token=secret).status == 200
    assert server.call("DELETE", f"/registry-svc/token/{info['id']}").status == 204
    assert server.call("GET", "/registry-svc/instances", token=secret).status == 401
    assert server.call("DELETE", f"/registry-svc/token/{info['id']}").status == 404


@pytest.fixture
def quick_sweeps(tmp_path: Path) -> Iterator[Server]:
    """A server whose node agent (and so the expired-token sweep) runs twice a second."""
    srv = Server(tmp_path / "data", args=["--heartbeat-seconds", "0.5"]).start()
    yield srv
    srv.kill9()


def test_a_token_with_a_ttl_expires_on_both_ports_and_is_then_removed(quick_sweeps: Server) -> None:
    srv = quick_sweeps
    created = srv.call("POST", "/registry-svc/tokens", {"role": "proxy", "ttl": "2s"})
    assert created.status == 201
    secret, info = created.json["token"], created.json["info"]
    lived = parse_time(info["expiresAt"]) - parse_time(info["createdAt"])
    assert lived.total_seconds() == 2
    lookup = "/registry-svc/instances?slug=ttl"
    # Answered by the gates (in Rust) on both ports, and by the workers, while it lives.
    assert srv.call("GET", lookup, token=secret).status == 200
    assert srv.call("GET", lookup, token=secret, data_port=True).status == 200
    assert srv.call("POST", "/registry-svc/nodes", token=secret).status == 200

    def refused(data_port: bool) -> bool:
        reply = srv.call("GET", lookup, token=secret, data_port=data_port)
        return reply.status == 401 and "expired at " + info["expiresAt"] in reply.json["error"]

    wait_for(lambda: refused(False) and refused(True), 10, "the token to be refused as expired")
    assert srv.call("POST", "/registry-svc/nodes", token=secret).status == 401  # the workers' cache too
    # Kept about as long as it lived, so that its holder reads "expired"; then swept.
    wait_for(
        lambda: info["id"] not in {t["id"] for t in srv.call("GET", "/registry-svc/tokens").json["tokens"]},
        15, "the expired token to be removed",
    )  # fmt: skip
    assert "unknown or revoked" in srv.call("GET", lookup, token=secret).json["error"]
    assert f"token {info['id']} expired and was removed" in srv.log_path.read_text()


def test_an_expired_admin_token_does_not_count_as_the_last_admin(quick_sweeps: Server) -> None:
    srv = quick_sweeps
    short = srv.call("POST", "/registry-svc/tokens", {"role": "admin", "ttl": "1s"}).json["info"]
    original = next(t for t in srv.call("GET", "/registry-svc/tokens").json["tokens"] if t["id"] != short["id"])
    wait_for(lambda: parse_time(short["expiresAt"]).timestamp() < time.time(), 5, "the short token to expire")
    # Revoking the only working admin is refused, though an (expired) admin token remains.
    assert srv.call("DELETE", f"/registry-svc/token/{original['id']}").status == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [({"role": "proxy", "ttl": "0s"}, "ttl"), ({"role": "proxy", "ttl": "3651d"}, "ttl"),
     ({"role": "proxy", "ttl": "5y"}, "ttl"), ({"role": "proxy", "ttl": 60}, "ttl"),
     ({"role": "root"}, "role"), ({"role": "service"}, "slug"), ({"role": "proxy", "slug": "x"}, "slug"),
     ({"role": "service", "slug": ""}, "slug"), ({"role": "admin", "extra": 1}, "extra")],
)  # fmt: skip
def test_token_creation_errors_name_the_field(server: Server, body: dict[str, object], field: str) -> None:
    reply = server.call("POST", "/registry-svc/tokens", body)
    assert reply.status == 400 and reply.json["error"].startswith(field)


def test_last_admin_token_cannot_be_revoked(fresh_server: Server) -> None:
    tokens = fresh_server.call("GET", "/registry-svc/tokens").json["tokens"]
    (admin,) = [t for t in tokens if t["role"] == "admin"]
    assert fresh_server.call("DELETE", f"/registry-svc/token/{admin['id']}").status == 409


def test_admin_token_file_is_private_and_secrets_are_stored_hashed(fresh_server: Server) -> None:
    path = fresh_server.data_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = fresh_server.admin_token.encode()
    store_files = b"".join(p.read_bytes() for p in (fresh_server.data_dir / "store").iterdir())
    assert secret not in store_files


@pytest.fixture
def two_process_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", processes=2).start()
    yield srv
    srv.kill9()


def test_revocation_is_immediate_in_every_process(two_process_server: Server) -> None:
    srv = two_process_server
    secret = srv.token("proxy")
    token_id = next(t["id"] for t in srv.call("GET", "/registry-svc/tokens").json["tokens"] if t["role"] == "proxy")
    # Keep-alive connections to the workers' own port (the gate relays over a pool of its
    # own), spread over the worker processes by the kernel; each one warms its process's
    # token cache. A `nodeUrl` filter not yet in its canonical form (upper-case scheme) is
    # left to the workers by the gate too (lookups it can answer it answers itself: see
    # test_gate_reads.py and test_data_plane.py for revocation there).
    headers = {"Authorization": f"Bearer {secret}"}

    def status(conn: http.client.HTTPConnection) -> int:
        conn.request("GET", "/registry-svc/instances?nodeUrl=HTTP%3A%2F%2Fnowhere%3A1", headers=headers)
        reply = conn.getresponse()
        reply.read()
        return reply.status

    connections: list[http.client.HTTPConnection] = []
    try:
        # Open connections until both processes serve some (the kernel spreads them; on a
        # loaded machine one process may win many accepts in a row).
        while len(connections) < 80 and (len(connections) < 8 or len(srv.workers_holding_connections()) < 2):
            conn = http.client.HTTPConnection("127.0.0.1", srv.workers_port(), timeout=10)
            connections.append(conn)
            assert status(conn) == 200
        serving = srv.workers_holding_connections()
        assert len(serving) == 2, f"the connections did not reach both processes: {serving}"
        assert srv.call("DELETE", f"/registry-svc/token/{token_id}").status == 204
        assert {status(c) for c in connections} == {401}
    finally:
        for c in connections:
            c.close()
