"""Several checks per instance (the first-hour issue, item 10): http with method, headers,
expected statuses and a body substring; tcp; ttl; gRPC health; critical and warning
severities; `checkStatus` and a statusReason naming the failing check. Real probes of
real loopback servers, through a real server process."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from test_first_hour import User

from conftest import LoopbackHTTP, Server, free_port, wait_for

FAST = {"intervalSeconds": 1, "healthyThreshold": 1, "unhealthyThreshold": 1}


class Ready(LoopbackHTTP):
    """A loopback HTTP server whose answer (status, body) the test sets; it records what
    each request asked."""

    def __init__(self) -> None:
        self.status, self.body = 200, b"ok ready"
        self.seen: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                outer.seen.append((self.command, self.path, self.headers.get("X-Probe")))
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            do_GET = do_POST = do_HEAD = answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def ready() -> Iterator[Ready]:
    backend = Ready()
    yield backend
    backend.close()


def instance(server: Server, instance_id: str) -> dict[str, Any]:
    return dict(server.call("GET", f"/registry-svc/instance/{instance_id}").json["instance"])


def becomes(server: Server, instance_id: str, status: str, reason_has: str = "") -> dict[str, Any]:
    def now() -> dict[str, Any] | None:
        inst = instance(server, instance_id)
        return inst if inst["status"] == status and reason_has in (inst.get("statusReason") or "") else None

    return wait_for(now, 15, f"{instance_id} to be {status} ({reason_has})")


def test_every_critical_check_must_pass_and_the_reason_names_the_failing_one(server: Server, ready: Ready) -> None:
    web = {"name": "web", "type": "http", "path": "/ready", "method": "POST", "headers": {"X-Probe": "yes"},
           "expectedStatus": "200-204", "bodyContains": "ready", **FAST}  # fmt: skip
    reply = server.register({"url": ready.url, "slug": "multi", "checks": [web, {"type": "tcp", **FAST}]})
    assert reply.status == 201, reply.body
    stored = reply.json["instance"]
    assert [c["name"] for c in stored["checks"]] == ["web", "tcp"] and stored["healthCheck"]["type"] == "none"
    inst = becomes(server, stored["id"], "Healthy", "all 2 checks pass")
    assert inst["checkStatus"] == {"web": {"status": "passing", "output": "HTTP 200"},
                                   "tcp": {"status": "passing", "output": "tcp connect ok"}}  # fmt: skip
    assert ("POST", "/ready", "yes") in ready.seen
    ready.body = b"still starting"
    becomes(server, stored["id"], "Unhealthy", "check 'web' (http): HTTP 200, but the body lacks 'ready'")
    ready.body, ready.status = b"ready", 500
    inst = becomes(server, stored["id"], "Unhealthy", "HTTP 500 (expected 200-204)")
    assert inst["checkStatus"]["web"]["status"] == "critical" and inst["checkStatus"]["tcp"]["status"] == "passing"
    assert server.call("GET", "/registry-svc/instance/pick?slug=multi").status == 503  # not routed
    ready.status = 204
    becomes(server, stored["id"], "Healthy", "all 2 checks pass")


def test_a_failing_warning_check_is_named_but_keeps_the_instance_routable(server: Server, ready: Ready) -> None:
    closed = free_port()
    checks = [
        {"type": "http", **FAST},
        {"name": "sidecar", "type": "tcp", "port": closed, "severity": "warning", **FAST},
    ]
    stored = server.register({"url": ready.url, "slug": "warned", "checks": checks}).json["instance"]
    inst = becomes(server, stored["id"], "Healthy", "warning: check 'sidecar' (tcp)")
    assert inst["checkStatus"]["sidecar"]["status"] == "warning"
    assert server.call("GET", "/registry-svc/instance/pick?slug=warned").status == 200


def test_a_ttl_check_among_probes_is_fed_by_heartbeats(server: Server, ready: Ready) -> None:
    checks = [
        {"type": "http", **FAST},
        {"name": "alive", "type": "ttl", "intervalSeconds": 2, "healthyThreshold": 1, "unhealthyThreshold": 1},
    ]
    stored = server.register({"url": ready.url, "slug": "ttl-mixed", "checks": checks}).json["instance"]
    becomes(server, stored["id"], "Healthy")
    # No heartbeat: the http probe's passes do not keep the ttl check alive.
    becomes(server, stored["id"], "Unhealthy", "check 'alive' (ttl): no heartbeat for")
    assert server.call("PUT", f"/registry-svc/instance/{stored['id']}/heartbeat").status == 200
    becomes(server, stored["id"], "Healthy")


@pytest.fixture
def grpc_health() -> Iterator[tuple[int, health.HealthServicer]]:
    servicer = health.HealthServicer()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield port, servicer
    grpc_server.stop(0)


def test_a_grpc_health_check_follows_the_serving_status(server: Server, grpc_health: tuple[int, Any]) -> None:
    port, servicer = grpc_health
    servicer.set("orders", health_pb2.HealthCheckResponse.SERVING)
    check = {"type": "grpc", "grpcService": "orders", **FAST}
    stored = server.register({"url": f"http://127.0.0.1:{port}", "slug": "grpc-svc", "checks": [check]}).json[
        "instance"
    ]
    becomes(server, stored["id"], "Healthy", "gRPC health SERVING")
    servicer.set("orders", health_pb2.HealthCheckResponse.NOT_SERVING)
    becomes(server, stored["id"], "Unhealthy", "check 'grpc' (grpc): gRPC health NOT_SERVING")
    unknown = {"type": "grpc", "grpcService": "nope", **FAST}
    other = server.register({"url": f"http://localhost:{port}", "slug": "grpc-svc", "checks": [unknown]}).json
    becomes(server, other["instance"]["id"], "Unhealthy", "gRPC NOT_FOUND")


@pytest.mark.parametrize(
    ("checks", "extra", "field"),
    [
        ([{"type": "tcp"}], {"healthCheck": {"type": "http"}}, "checks"),
        ([{"name": "a", "type": "tcp"}, {"name": "a", "type": "http"}], {}, "checks[1].name"),
        ([{"type": "tcp", "path": "/x"}], {}, "checks[0].path"),
        ([{"type": "ttl", "port": 80}], {}, "checks[0].port"),
        ([{"type": "http", "expectedStatus": "600"}], {}, "checks[0].expectedStatus"),
        ([{"type": "http", "expectedStatus": "300-200"}], {}, "checks[0].expectedStatus"),
        ([{"type": "http", "intervalSeconds": 1, "timeoutSeconds": 5}], {}, "checks[0].timeoutSeconds"),
        ([{"type": "http", "headers": {"Bad Name": "x"}}], {}, "checks[0].headers"),
        ([{"type": "udp"}], {}, "checks[0].type"),
        ([{"type": "tcp"}] * 17, {}, "checks"),
    ],
)
def test_bad_checks_are_refused_naming_the_field(
    server: Server, checks: list[Any], extra: dict[str, Any], field: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    refused = server.register({"url": url, "slug": "bad-checks", "checks": checks, **extra})
    assert refused.status == 400 and refused.json["error"].startswith(field), refused.body
    assert server.call("GET", "/registry-svc/instances?slug=bad-checks").json["instances"] == []


def test_checks_are_replaced_as_a_whole_and_removed_with_null(server: Server, ready: Ready) -> None:
    stored = server.register({"url": ready.url, "slug": "swap", "checks": [{"type": "tcp", **FAST}]}).json["instance"]
    again = server.register({"url": ready.url, "slug": "swap", "checks": [{"type": "http", **FAST}]}).json["instance"]
    assert [c["type"] for c in again["checks"]] == ["http"] and again["id"] == stored["id"]
    kept = server.register({"url": ready.url, "slug": "swap", "tags": ["x"]}).json["instance"]
    assert [c["type"] for c in kept["checks"]] == ["http"], "a re-registration without checks keeps them"
    cleared = server.register({"url": ready.url, "slug": "swap", "checks": None, "healthCheck": {"type": "tcp"}})
    assert cleared.json["instance"]["checks"] is None and cleared.json["instance"]["healthCheck"]["type"] == "tcp"


def test_oo_shows_each_check(tmp_path: Path, server: Server, ready: Ready) -> None:
    checks = [{"name": "web", "type": "http", **FAST}, {"name": "port", "type": "tcp", **FAST}]
    stored = server.register({"url": ready.url, "slug": "shown-checks", "checks": checks}).json["instance"]
    becomes(server, stored["id"], "Healthy")
    user = User(tmp_path / "home")
    out = user.oo("services", "shown-checks", OB_SERVER_URL=server.url, OB_TOKEN=server.admin_token)
    assert out.code == 0, out.err
    assert "web: passing" in out.out and "port: passing" in out.out, out.out
