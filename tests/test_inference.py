"""Routing for model servers through real HTTP: load signals pushed and scraped (a real
loopback server exposing vLLM's metric names), shown in lookups with their age; the
`least_load` and `prefix` picks on both ports; models; and the proxy placing
OpenAI-style requests by their body."""

from __future__ import annotations

import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_cli import OO
from test_health import FAKE_NVML

from conftest import NO_CHECK, LoopbackHTTP, Server, sample, wait_for

SYSTEM = "You are a meticulous assistant for a bank. Answer in two sentences. " * 12


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--slug-policy", "llm-prefix=prefix", "--slug-policy", "llm-load=least_load"]
    server = Server(tmp_path_factory.mktemp("inference"), args=args).start()
    yield server
    server.kill9()


def register(srv: Server, url: str, slug: str, **extra: Any) -> str:
    body = {"url": url, "slug": slug, "healthCheck": NO_CHECK, "status": "Healthy", **extra}
    reply = srv.register(body)
    assert reply.status == 201, reply.body
    return str(reply.json["instance"]["id"])


def push(srv: Server, instance_id: str, token: Any = None, **load: Any) -> Any:
    kwargs = {} if token is None else {"token": token}
    return srv.call("PUT", f"/registry-svc/instance/{instance_id}/load", load, **kwargs)


def picks(
    srv: Server, query: str, n: int, data_port: bool = False, headers: dict[str, str] | None = None
) -> Counter[str]:
    got: Counter[str] = Counter()
    for _ in range(n):
        reply = srv.call("GET", f"/registry-svc/instance/pick?{query}", data_port=data_port, headers=headers)
        assert reply.status == 200, reply.body
        got[reply.json["instance"]["id"]] += 1
    return got


def test_pushed_load_is_shown_with_its_age_and_steers_least_load(srv: Server) -> None:
    push_source = {"type": "push", "intervalMs": 5000}
    ids = [register(srv, f"http://127.0.0.{40 + i}:8000", "llm-push", load=push_source) for i in range(3)]
    busy, idle, full = ids
    assert push(srv, busy, queued=12, running=16, kvCacheUsage=0.7).status == 204
    assert push(srv, idle, queued=0, running=1, kvCacheUsage=0.1).status == 204
    assert push(srv, full, queued=0, running=3, kvCacheUsage=1.0).status == 204
    for data_port in (False, True):
        shown = srv.call("GET", f"/registry-svc/instance/{busy}", data_port=data_port).json["instance"]
        assert shown["load"] == {"type": "push", "path": "/metrics", "intervalMs": 5000,
                                 "queued": 12, "running": 16, "kvCacheUsage": 0.7}  # fmt: skip
        assert 0 <= shown["loadAgeMs"] < 5000
        listed = srv.call("GET", "/registry-svc/instances?slug=llm-push", data_port=data_port).json["instances"]
        assert {i["id"]: i["load"]["queued"] for i in listed} == {busy: 12, idle: 0, full: 0}
    for data_port in (False, True):
        got = picks(srv, "slug=llm-push&policy=least_load", 60, data_port=data_port)
        assert full not in got, got  # its KV cache is full
        assert got[idle] > got[busy], got
    # Every one saturated: 429, and when to ask again.
    push(srv, busy, queued=500)
    push(srv, idle, kvCacheUsage=0.995)
    for data_port in (False, True):
        reply = srv.call("GET", "/registry-svc/instance/pick?slug=llm-push&policy=least_load", data_port=data_port)
        assert reply.status == 429 and reply.headers["retry-after"] == "1", reply.body
        assert "saturated" in reply.json["error"]
    # A registration sent back as fetched keeps the source and stores no reading.
    shown = srv.call("GET", f"/registry-svc/instance/{busy}").json["instance"]
    assert srv.register(shown).status == 200
    stored = orjson.loads(srv.call("GET", f"/registry-svc/instance/{busy}").body)
    assert stored["instance"]["load"]["type"] == "push"


def test_a_load_report_is_checked_and_only_an_instance_s_own_service_may_send_it(srv: Server) -> None:
    mine = register(srv, "http://127.0.0.50:8000", "llm-owned")
    for body, field in (
        ({"queued": -1}, "queued"),
        ({"running": "3"}, "running"),
        ({"kvCacheUsage": 1.5}, "kvCacheUsage"),
        ({"queue": 1}, "queue"),
    ):
        reply = push(srv, mine, **body)
        assert reply.status == 400 and field in reply.json["error"], (body, reply.body)
    assert srv.call("PUT", f"/registry-svc/instance/{mine}/load", raw=b"[1]").status == 400
    assert push(srv, "inst_0000000000000000", queued=1).status == 404
    other = srv.token("service", "someone-else")
    assert push(srv, mine, token=other, queued=1).status == 404
    owner = srv.token("service", "llm-owned")
    assert push(srv, mine, token=owner, queued=2).status == 204
    assert srv.call("PUT", f"/registry-svc/instance/{mine}/load", {"queued": 1}, token=None).status == 401
    shown = srv.call("GET", f"/registry-svc/instance/{mine}").json["instance"]
    assert shown["load"] == {"queued": 2, "running": 0, "kvCacheUsage": 0.0}  # no source declared
    bad = srv.register({"url": "http://127.0.0.51:8000", "slug": "llm-owned", "healthCheck": NO_CHECK,
                        "load": {"type": "prometheus", "intervalMs": 5}})  # fmt: skip
    assert bad.status == 400 and "load.intervalMs" in bad.json["error"], bad.body


def test_a_model_is_served_only_by_the_instances_that_list_it(srv: Server) -> None:
    llama = register(srv, "http://127.0.0.60:8000", "llm-models", models=["llama-3-8b", "llama-3-8b-lora-sql"])
    register(srv, "http://127.0.0.61:8000", "llm-models", models=["qwen2-7b"])
    for data_port in (False, True):
        got = picks(srv, "slug=llm-models&model=llama-3-8b-lora-sql", 10, data_port=data_port)
        assert set(got) == {llama}
        reply = srv.call("GET", "/registry-svc/instance/pick?slug=llm-models&model=mistral", data_port=data_port)
        assert reply.status == 404 and "serves model 'mistral'" in reply.json["error"], reply.body
    shown = srv.call("GET", f"/registry-svc/instance/{llama}").json["instance"]
    assert shown["models"] == ["llama-3-8b", "llama-3-8b-lora-sql"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(srv.data_dir.parent), "OB_SERVER_URL": srv.url,
           "OB_TOKEN": srv.admin_token}  # fmt: skip
    picked = subprocess.run([OO, "pick", "llm-models", "--model", "llama-3-8b", "-o", "json"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert picked.returncode == 0 and orjson.loads(picked.stdout)["instance"]["id"] == llama, picked.stderr
    twice = srv.register({"url": "http://127.0.0.62:8000", "slug": "llm-models", "models": ["a", "a"]})
    assert twice.json["instance"]["models"] == ["a"]  # one model, as tags
    many = srv.register({"url": "http://127.0.0.63:8000", "slug": "llm-models", "models": [str(i) for i in range(65)]})
    assert many.status == 400 and "models" in many.json["error"], many.body


def test_a_shared_prompt_prefix_keeps_its_instance_on_both_ports(srv: Server) -> None:
    for i in range(6):
        register(srv, f"http://127.0.0.{70 + i}:8000", "llm-hdr")
    for data_port in (False, True):
        got = Counter()
        for user in range(12):
            headers = {"X-Registry-Prefix-Key": f"{SYSTEM} User {user}: what is my balance?"}
            got += picks(srv, "slug=llm-hdr&policy=prefix", 1, data_port=data_port, headers=headers)
        assert len(got) == 1, got
    # Another system prompt is placed on its own (rendezvous of its first block).
    other = {"X-Registry-Prefix-Key": "You are a pirate. " * 30}
    assert len(picks(srv, "slug=llm-hdr&policy=prefix", 6, headers=other)) == 1


class ModelServer(LoopbackHTTP):
    """A loopback stand-in for a model server: `/metrics` with vLLM's names (values set by
    the test), and completions answered with its name and the model asked for."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queued = 0
        self.running = 0
        self.kv = 0.0
        self.served: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                text = (
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f'vllm:num_requests_waiting{{model_name="m"}} {server.queued}\n'
                    f'vllm:num_requests_running{{model_name="m"}} {server.running}\n'
                    f'vllm:kv_cache_usage_perc{{model_name="m"}} {server.kv}\n'
                )
                self.answer(text.encode())

            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.served.append(body.get("model", ""))
                self.answer(orjson.dumps({"served_by": server.name, "model": body.get("model")}))

            def answer(self, payload: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)
        # The registry's pooled scrape connections are reset when the test closes it.
        self.httpd.handle_error = lambda *args: None  # type: ignore[method-assign]


@pytest.fixture
def fleet() -> Iterator[list[ModelServer]]:
    servers = [ModelServer(f"m{i}") for i in range(4)]
    yield servers
    for s in servers:
        s.close()


def test_scraped_vllm_metrics_become_the_instance_s_load(srv: Server, fleet: list[ModelServer]) -> None:
    source = {"type": "prometheus", "path": "/metrics", "intervalMs": 50}
    ids = {s.name: register(srv, s.url, "llm-load", load=source, models=["m"]) for s in fleet}
    fleet[0].queued, fleet[0].running, fleet[0].kv = 7, 3, 0.25

    def scraped(name: str) -> dict[str, Any] | None:
        shown = srv.call("GET", f"/registry-svc/instance/{ids[name]}").json["instance"]
        return shown if shown["load"].get("queued") == fleet[int(name[1:])].queued else None

    shown = wait_for(lambda: scraped("m0"), 10, "m0's metrics scraped")
    assert shown["load"]["running"] == 3 and shown["load"]["kvCacheUsage"] == 0.25
    assert shown["loadAgeMs"] < 1000
    # A full KV cache takes an instance out of least_load's picks within a few scrapes.
    fleet[1].kv = 1.0
    fleet[1].queued = 1
    wait_for(lambda: scraped("m1"), 10, "m1's metrics scraped")
    got = picks(srv, "slug=llm-load", 40, data_port=True)
    assert ids["m1"] not in got, got
    # /metrics: what the scraper does and how old the readings are.
    text = srv.call("GET", "/metrics").body.decode()
    assert sample(text, "registry_load_sources") >= 4
    assert sample(text, "registry_load_scrapes_total", result="ok") > 0
    assert sample(text, "registry_load_readings", state="fresh") >= 4
    assert sample(text, "registry_load_age_seconds_bucket", le="1.0") >= 4


def test_the_proxy_places_completions_by_their_prompt_and_model(srv: Server, fleet: list[ModelServer]) -> None:
    for s in fleet:
        register(srv, s.url, "llm-prefix", models=["llama", "llama-lora"] if s.name != "m3" else ["qwen"])
    served: Counter[str] = Counter()
    for user in range(16):
        prompt = {"model": "llama", "prompt": f"{SYSTEM}\nUser {user}: hello", "max_tokens": 4}
        reply = srv.call("POST", "/llm-prefix/v1/completions", prompt, token=None, data_port=True)
        assert reply.status == 200, reply.body
        served[reply.json["served_by"]] += 1
    assert len(served) == 1 and "m3" not in served, served
    chat = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}
    for data_port in (False, True):
        reply = srv.call("POST", "/llm-prefix/v1/chat/completions", chat, token=None, data_port=data_port)
        assert reply.status == 200 and reply.json["served_by"] == "m3", reply.body
    missing = srv.call("POST", "/llm-prefix/v1/completions", {"model": "gpt-9", "prompt": "x"}, data_port=True)
    assert missing.status == 404 and "serves model 'gpt-9'" in missing.json["error"], missing.body
    assert fleet[3].served == ["qwen", "qwen"]


def test_concurrent_pushes_and_picks_never_fail(srv: Server) -> None:
    ids = [register(srv, f"http://127.0.0.{90 + i}:8000", "llm-race", load={"type": "push"}) for i in range(3)]
    errors: list[str] = []

    def pusher(instance_id: str) -> None:
        for n in range(40):
            reply = push(srv, instance_id, queued=n % 5, running=n % 3, kvCacheUsage=(n % 10) / 10)
            if reply.status != 204:
                errors.append(reply.body.decode())

    threads = [threading.Thread(target=pusher, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    got = picks(srv, "slug=llm-race&policy=least_load", 60, data_port=True)
    for t in threads:
        t.join()
    assert not errors and set(got) <= set(ids)


def test_nodes_with_free_gpus_are_found_by_the_api_and_oo(tmp_path: Path) -> None:
    """The fake NVML's node: an H100 with 78,352 MiB free at 35% and an A10 with 3,028 MiB
    free at 90%."""
    path = os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")])
    gpu_srv = Server(tmp_path / "data", env={"PYTHONPATH": path, "OB_NODE_ID": "gpu-node-1"}).start()
    try:

        def listed(body: dict[str, Any]) -> list[str]:
            reply = gpu_srv.call("POST", "/registry-svc/nodes", body)
            assert reply.status == 200, reply.body
            return [n["id"] for n in reply.json["nodes"]]

        assert listed({"gpuFreeMiB": 20 * 1024}) == ["gpu-node-1"]
        assert listed({"gpuFreeMiB": 80_000}) == []
        assert listed({"gpuFreeMiB": 2_000, "gpuCount": 2}) == ["gpu-node-1"]
        assert listed({"gpuFreeMiB": 2_000, "gpuCount": 2, "gpuMaxUtilization": 50}) == []
        assert listed({"gpuMaxUtilization": 40, "region": "nowhere"}) == []
        for body, field in (({"gpuFreeMiB": -1}, "gpuFreeMiB"), ({"gpuCount": 0}, "gpuCount"),
                            ({"gpuMaxUtilization": 101}, "gpuMaxUtilization")):  # fmt: skip
            reply = gpu_srv.call("POST", "/registry-svc/nodes", body)
            assert reply.status == 400 and field in reply.json["error"], reply.body
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OB_SERVER_URL": gpu_srv.url,
               "OB_TOKEN": gpu_srv.admin_token}  # fmt: skip

        def oo(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([OO, *args], env=env, capture_output=True, text=True, timeout=60, check=False)

        found = oo("nodes", "ls", "--gpu-free", "20GiB", "--gpu-util-max", "50")
        assert found.returncode == 0 and "gpu-node-1" in found.stdout, found.stderr
        none = oo("n", "ls", "--gpu-free", "20GiB", "--gpus", "2")
        assert none.returncode == 0 and "gpu-node-1" not in none.stdout, none.stdout
        bad = oo("n", "ls", "--gpu-free", "20GB")
        assert bad.returncode == 1 and "20GiB" in bad.stderr, bad.stderr
    finally:
        gpu_srv.kill9()


def test_a_slug_s_load_weights_change_least_load_s_choice(srv: Server) -> None:
    """Two instances: one with a long queue and an empty KV cache, one with no queue and a
    nearly full cache. The default weights (2:2:1) prefer the second; weights that count
    only the KV cache prefer the first."""
    queue = register(srv, "http://127.0.0.1:19201", "llm-weights", load={"type": "push", "intervalMs": 60000})
    cache = register(srv, "http://127.0.0.1:19202", "llm-weights", load={"type": "push", "intervalMs": 60000})
    push(srv, queue, queued=40, running=8, kvCacheUsage=0.0)
    push(srv, cache, queued=0, running=8, kvCacheUsage=0.9)
    query = "slug=llm-weights&policy=least_load"
    assert set(picks(srv, query, 10, data_port=True)) == {cache}
    put = srv.call(
        "PUT", "/registry-svc/routing/llm-weights", {"loadWeights": {"queued": 0, "running": 0, "kvCache": 1}}
    )
    assert put.status == 201 and put.json["routing"]["loadWeights"] == {"queued": 0, "running": 0, "kvCache": 1}
    for data_port in (False, True):
        assert set(picks(srv, query, 10, data_port=data_port)) == {queue}
    bad = srv.call("PUT", "/registry-svc/routing/llm-weights", {"loadWeights": {"queued": -1}})
    assert bad.status == 400 and "loadWeights.queued" in bad.json["error"], bad.body
    env = {"PATH": "/usr/bin:/bin", "HOME": str(srv.data_dir.parent), "OB_SERVER_URL": srv.url,
           "OB_TOKEN": srv.admin_token}  # fmt: skip

    def oo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OO, *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    done = oo("routing", "llm-weights", "--load-weights", "0:1:3", "--retries", "2")
    assert done.returncode == 0 and "retries: 2, timeout: 60s, load weights: 0:1:3" in done.stdout, done.stderr
    assert set(picks(srv, query, 10, data_port=True)) == {queue}
    assert oo("routing", "llm-weights", "--load-weights", "2:2").returncode == 1
    assert oo("routing", "llm-weights", "--reset").returncode == 0
    assert set(picks(srv, query, 10, data_port=True)) == {cache}
