"""Maintenance mode through real HTTP and the real `oo`: an instance (or every instance of a
node) out of routing with a reason, on every door (pick on both ports, Envoy EDS,
Prometheus SD, DNS), while its checks go on; leaving it returns to what they say."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
from test_cli import OO
from test_health import Backend

from conftest import NO_CHECK, Server, free_dns_port, wait_for


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    dns_port = free_dns_port()
    server = Server(tmp_path_factory.mktemp("maint"), args=["--dns-port", str(dns_port)]).start()
    server.env["DNS_PORT"] = str(dns_port)
    yield server
    server.kill9()


def oo(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(srv.data_dir.parent),
        "OB_SERVER_URL": srv.url,
        "OB_TOKEN": srv.admin_token,
    }
    return subprocess.run([OO, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def register(srv: Server, url: str, slug: str, **extra: Any) -> str:
    body = {"url": url, "slug": slug, "healthCheck": NO_CHECK, "status": "Healthy", **extra}
    reply = srv.register(body)
    assert reply.status == 201, reply.body
    return str(reply.json["instance"]["id"])


def picked(srv: Server, slug: str, data_port: bool = False) -> set[str]:
    return {
        srv.call("GET", f"/registry-svc/instance/pick?slug={slug}", data_port=data_port).json["instance"]["id"]
        for _ in range(12)
    }


def dns_addresses(srv: Server, slug: str) -> list[str]:
    query = dns.message.make_query(f"{slug}.service.registry.", "A")
    reply = dns.query.udp(query, "127.0.0.1", port=int(srv.env["DNS_PORT"]), timeout=3)
    return [r.to_text() for rrset in reply.answer for r in rrset]


def test_an_instance_in_maintenance_is_routed_by_no_door_and_says_why(srv: Server) -> None:
    a = register(srv, "http://127.0.0.21:80", "maint-a")
    b = register(srv, "http://127.0.0.22:80", "maint-a")
    assert picked(srv, "maint-a") == {a, b}
    done = oo(srv, "i", "maint", a, "--reason", "kernel upgrade")
    assert done.returncode == 0 and f"instance {a}: in maintenance (Healthy)" in done.stdout, done.stderr
    shown = srv.call("GET", f"/registry-svc/instance/{a}").json["instance"]
    assert shown["status"] == "Healthy"  # its status is its checks' business
    assert shown["maintenance"]["reason"] == "kernel upgrade" and shown["maintenance"]["by"].startswith("tok_")
    assert picked(srv, "maint-a") == {b} and picked(srv, "maint-a", data_port=True) == {b}
    assert dns_addresses(srv, "maint-a") == ["127.0.0.22"]
    eds = srv.call("POST", "/v3/discovery:endpoints", {"resource_names": ["maint-a"]}).json
    health = {
        e["metadata"]["filter_metadata"]["registry"]["id"]: e["health_status"]
        for group in eds["resources"][0]["endpoints"]
        for e in group["lb_endpoints"]
    }
    assert health == {a: "DRAINING", b: "HEALTHY"}
    targets = srv.call("GET", "/registry-svc/discovery/prometheus?slug=maint-a").json
    assert [t["labels"]["__meta_registry_instance_id"] for t in targets] == [b]
    listed = oo(srv, "i", "ls", "--slug", "maint-a").stdout
    assert "Healthy (maintenance)" in listed and "kernel upgrade" in listed
    # With b drained too, nothing is routable: no fallback to the one in maintenance.
    srv.call("PUT", f"/registry-svc/instance/{b}/heartbeat", {"status": "Stopping"})
    assert srv.call("GET", "/registry-svc/instance/pick?slug=maint-a").status == 503
    assert oo(srv, "i", "maint", a, "--off").returncode == 0
    assert picked(srv, "maint-a") == {a}
    assert srv.call("GET", f"/registry-svc/instance/{a}").json["instance"]["maintenance"] is None


def test_checks_go_on_in_maintenance_and_leaving_it_returns_to_what_they_say(srv: Server) -> None:
    backend = Backend().start()
    try:
        check = {
            "type": "http",
            "path": "/health",
            "intervalSeconds": 1,
            "healthyThreshold": 1,
            "unhealthyThreshold": 1,
        }
        reply = srv.register({"url": f"http://127.0.0.1:{backend.port}", "slug": "maint-b", "healthCheck": check})
        iid = reply.json["instance"]["id"]

        def status() -> str:
            return str(srv.call("GET", f"/registry-svc/instance/{iid}").json["instance"]["status"])

        wait_for(lambda: status() == "Healthy", 15, "the first passing check")
        assert srv.call("PUT", f"/registry-svc/instance/{iid}/maintenance", {"reason": "disk swap"}).status == 200
        backend.status = 500
        wait_for(lambda: status() == "Unhealthy", 15, "the failing check, applied while in maintenance")
        # Leaving maintenance does not force it Healthy: it is what its check says.
        left = srv.call("PUT", f"/registry-svc/instance/{iid}/maintenance", {"enable": False}).json["instance"]
        assert left["status"] == "Unhealthy" and left["maintenance"] is None
        assert srv.call("GET", "/registry-svc/instance/pick?slug=maint-b").status == 503
        backend.status = 200
        wait_for(lambda: status() == "Healthy", 15, "the check passing again")
        assert picked(srv, "maint-b") == {iid}
    finally:
        backend.stop()


def test_node_maintenance_covers_its_instances_and_keeps_an_instance_s_own(srv: Server) -> None:
    own = register(srv, "http://127.0.0.31:80", "maint-c")
    other = register(srv, "http://127.0.0.32:80", "maint-c")
    elsewhere = register(srv, "http://127.0.0.33:80", "maint-c", nodeUrl="http://other-node:1")
    srv.call("PUT", f"/registry-svc/instance/{own}/maintenance", {"reason": "its own"})
    node_id = srv.call("GET", "/registry-svc/node/self").json["node"]["id"]
    done = oo(srv, "n", "maint", node_id, "--reason", "rack move")
    assert done.returncode == 0 and f"node {node_id}:" in done.stdout and "in maintenance" in done.stdout, done.stderr
    assert picked(srv, "maint-c") == {elsewhere}
    reasons = {i: srv.call("GET", f"/registry-svc/instance/{i}").json["instance"]["maintenance"] for i in (own, other)}
    assert reasons[own]["reason"] == "its own" and reasons[own]["node"] is None
    assert reasons[other]["reason"] == "rack move" and reasons[other]["node"] == node_id
    # Off by URL: what the node's maintenance set goes, the instance's own stays.
    off = srv.call("PUT", "/registry-svc/node/maintenance", {"node": srv.url, "enable": False})
    assert off.status == 200 and other in off.json["instances"] and own not in off.json["instances"]
    assert picked(srv, "maint-c") == {other, elsewhere}
    assert srv.call("PUT", "/registry-svc/node/maintenance", {"node": "node_nope"}).status == 404


def test_maintenance_needs_the_right_token_and_a_valid_body(srv: Server) -> None:
    iid = register(srv, "http://127.0.0.41:80", "maint-d")
    path = f"/registry-svc/instance/{iid}/maintenance"
    assert srv.call("PUT", path, {}, token=srv.token("service", "maint-other")).status == 404
    assert srv.call("PUT", path, {}, token=srv.token("proxy")).status == 403
    assert srv.call("PUT", path, {}, token=srv.token("service", "maint-d")).status == 200
    assert (
        srv.call(
            "PUT", "/registry-svc/node/maintenance", {"node": srv.url}, token=srv.token("service", "maint-d")
        ).status
        == 403
    )
    for body, field in (({"reason": "x" * 300}, "reason"), ({"enable": "yes"}, "enable"), ({"extra": 1}, "extra")):
        reply = srv.call("PUT", path, body)
        assert reply.status == 400 and reply.json["error"].startswith(field), reply.json
    assert srv.call("PUT", "/registry-svc/instance/inst_nope/maintenance", {}).status == 404
    # A re-registration keeps the maintenance (it is not the registration's to change).
    kept = srv.register({"url": "http://127.0.0.41:80", "slug": "maint-d", "maintenance": None}).json["instance"]
    assert kept["maintenance"] is not None


def test_a_drain_says_who_drained_it(srv: Server, tmp_path: Path) -> None:
    iid = register(srv, "http://127.0.0.51:80", "maint-e")
    assert oo(srv, "i", "drain", iid).returncode == 0
    reason = srv.call("GET", f"/registry-svc/instance/{iid}").json["instance"]["statusReason"]
    assert reason.startswith("drained by token tok_"), reason
