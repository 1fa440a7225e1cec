"""`GET /metrics` and the JSON access log, through real servers: the exposition passes
`promtool check metrics`, counters move by exactly the requests made across two processes,
a real Prometheus scrapes it, and the access log has one line per request."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from conftest import Server, prometheus, prometheus_query, sample, wait_for

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def scrape(server: Server) -> str:
    reply = server.call("GET", "/metrics", token=None)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return reply.body.decode()


@pytest.fixture(scope="module")
def two_process_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("metrics") / "data", processes=2).start()
    yield srv
    srv.kill9()


def test_counters_move_by_exactly_the_requests_made_across_two_processes(two_process_server: Server) -> None:
    server = two_process_server
    reply = server.register({"url": "http://127.0.0.1:9", "slug": "counted", "healthCheck": {"type": "none"}})
    instance_id = reply.json["instance"]["id"]
    route = {"route": "/registry-svc/instance/:id", "method": "GET", "status": "200"}
    before = scrape(server)
    # Keep-alive connections to the workers' port (the gate's own pool would reuse one)
    # until both worker processes hold some, then 5 gets on each.
    conns: list[http.client.HTTPConnection] = []
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    while len(server.workers_holding_connections()) < 2 or len(conns) < 4:
        assert len(conns) < 64, "the workers never both took connections"
        conn = http.client.HTTPConnection("127.0.0.1", server.workers_port(), timeout=10)
        conn.request("GET", "/version")
        conn.getresponse().read()
        conns.append(conn)
    made = 0
    for conn in conns:
        for _ in range(5):
            conn.request("GET", f"/registry-svc/instance/{instance_id}", headers=headers)
            assert conn.getresponse().read()
            made += 1
    for conn in conns:
        conn.close()

    def moved_by() -> float:
        now = sample(scrape(server), "registry_http_requests_total", **route)
        return now - sample(before, "registry_http_requests_total", **route)

    # Each process folds its counts in every 0.5 s: wait for them, then they must be exact.
    wait_for(lambda: moved_by() >= made, 5, "the other process's counts")
    time.sleep(0.6)
    assert moved_by() == made
    after = scrape(server)
    latency = "registry_http_request_duration_seconds_count"
    moved = sample(after, latency, route=route["route"], method="GET") - sample(
        before, latency, route=route["route"], method="GET"
    )
    assert moved == made

    # Lookups the gate answers itself are counted too (folded in within a second).
    gate_before = sample(scrape(server), "registry_gate_requests_total", port="api", outcome="answered")
    for _ in range(7):
        assert server.call("GET", "/registry-svc/instances?slug=counted").status == 200

    def answered() -> float:
        return sample(scrape(server), "registry_gate_requests_total", port="api", outcome="answered") - gate_before

    wait_for(lambda: answered() >= 7, 5, "the gate's counts")
    time.sleep(0.6)
    assert answered() == 7

    text = scrape(server)
    assert sample(text, "registry_instances", status="Unknown") >= 1
    assert sample(text, "registry_index") >= reply.index
    assert sample(text, "registry_store_writes_total") >= 1
    assert sample(text, "registry_store_map_bytes") > 0
    assert sample(text, "registry_node_memory_bytes", kind="total") > 0


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) is not installed; make test installs it")
def test_the_exposition_passes_promtool(two_process_server: Server) -> None:
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape(two_process_server), capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian) is not installed; make test installs it")
def test_a_real_prometheus_scrapes_the_server(two_process_server: Server, tmp_path: Path) -> None:
    server = two_process_server
    with prometheus(
        tmp_path, f"- job_name: registry\n  static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    ) as web:
        query = "/api/v1/query?query=sum(registry_http_requests_total%7Bjob%3D%22registry%22%7D)"
        result = wait_for(lambda: (prometheus_query(web, query) or {}).get("data", {}).get("result"), 30,
                          "Prometheus to scrape the server")  # fmt: skip
        assert float(result[0]["value"][1]) > 0


def test_metrics_can_require_a_token(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", args=["--metrics", "token"]).start()
    try:
        assert server.call("GET", "/metrics", token=None).status == 401
        assert server.call("GET", "/metrics").status == 200
    finally:
        server.kill9()


def test_the_json_access_log_has_a_line_per_request_with_the_token_id(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", args=["--log-format", "json"]).start()
    try:
        token = server.token("proxy")
        info = server.call("GET", "/registry-svc/tokens").json["tokens"]
        token_id = next(t["id"] for t in info if t["role"] == "proxy")
        assert server.call("GET", "/registry-svc/instances?slug=logged", token=token).status == 200
        assert server.call("GET", "/registry-svc/instance/nope", token=token).status == 404

        def access_lines() -> list[dict[str, object]]:
            lines = [orjson.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
            return [line for line in lines if line.get("type") == "access" and line.get("token") == token_id]

        lines = wait_for(lambda: len(access_lines()) >= 2 and access_lines(), 5, "the access lines")
        lookup = next(line for line in lines if line["path"] == "/registry-svc/instances")
        assert lookup["method"] == "GET" and lookup["status"] == 200 and lookup["route"] == "/registry-svc/instances"
        assert isinstance(lookup["durationMs"], float) and lookup["client"] == "127.0.0.1"
        assert next(line for line in lines if line["path"] == "/registry-svc/instance/nope")["status"] == 404
        # Proxied requests are logged by the gate that forwards them (rust/forward.rs).
        assert server.call("GET", "/ghost-svc/x?secret=1", token=None).status == 404

        def proxied() -> list[dict[str, object]]:
            lines = [orjson.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
            return [line for line in lines if line.get("type") == "access" and line.get("route") == "/<slug>/*"]

        line = wait_for(proxied, 5, "the proxy's access line")[0]
        assert (line["method"], line["path"], line["status"], line["client"]) == (
            "GET",
            "/ghost-svc/x",
            404,
            "127.0.0.1",
        )
        assert isinstance(line["durationMs"], float) and line["ts"].endswith("Z") and line["token"] is None
        # One format, written by one formatter (rust/edge/access.rs) for the gate and the workers.
        order = ["ts", "type", "method", "path", "route", "status", "durationMs", "token", "client"]
        assert list(line) == order and list(lookup) == order
        log = server.log_path.read_text()
        assert token not in log and server.admin_token not in log
        # Every line is JSON, the start-up lines too.
        assert all(line.startswith("{") for line in log.splitlines() if line.strip())
    finally:
        server.kill9()


def test_latencies_folded_in_per_bucket_equal_one_observe_each() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from registry_svc import metrics

    registry = CollectorRegistry()
    one = Histogram("one_by_one", "", buckets=metrics.LATENCY_BUCKETS, registry=registry)
    many = Histogram("folded", "", buckets=metrics.LATENCY_BUCKETS, registry=registry)
    values = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.2, 5.0, 11.0, 0.1, 0.0005]
    for value in values:
        one.observe(value)
    metrics._observe_many(many, values)

    def samples(h: Histogram) -> list[tuple[str, str | None, float]]:
        return [(s.name.rsplit("_", 1)[-1], s.labels.get("le"), s.value) for m in h.collect() for s in m.samples
                if not s.name.endswith("_created")]  # fmt: skip

    assert samples(one) == samples(many)
