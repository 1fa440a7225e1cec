"""Health: GPU telemetry (fake NVML), node heartbeats and liveness, instance checks, TTL,
deregistration, the heartbeat endpoint, and one checker per node.

Intervals are short; every wait is "until the state is reached, or give up after a
generous deadline", never an assertion on speed.
"""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from conftest import Server, free_port, probes_run
from registry_svc.gpu import GpuSampler
from registry_svc.health import CheckState
from registry_svc.probes import ProbeResult
from registry_svc.status import after_probe

FAKE_NVML = str(Path(__file__).parent / "fake_nvml")
FAST = ["--heartbeat-seconds", "0.5"]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Backend:
    """A tiny HTTP server that answers 200 on /health and counts the probes it gets."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.hits = 0
        self.status = 200
        self.fail_next = 0  # answer this many requests with 503, then `status` again
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> Backend:
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                backend.hits += 1
                failing = backend.fail_next > 0
                backend.fail_next -= failing
                self.send_response(503 if failing else backend.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend().start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("health"), args=FAST).start()
    yield srv
    srv.kill9()


def instance(server: Server, instance_id: str) -> dict[str, Any]:
    reply = server.call("GET", f"/registry-svc/instance/{instance_id}")
    assert reply.status == 200, reply.body
    return dict(reply.json["instance"])


def status_of(server: Server, instance_id: str) -> str:
    return str(instance(server, instance_id)["status"])


# --- GPU telemetry -------------------------------------------------------------------


def fake_gpu(name: str, power_mw: int | None) -> dict[str, Any]:
    return {"name": name, "power": power_mw}


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Monkeypatches the real pynvml module: two GPUs, the second without power readings."""
    from types import SimpleNamespace

    gpus = [fake_gpu("NVIDIA H100 80GB HBM3", 71200), fake_gpu("NVIDIA A10", None)]

    def power(h: dict[str, Any]) -> int:
        if h["power"] is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(h["power"])

    patches: dict[str, Any] = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetCudaDriverVersion": lambda: 12040,
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": lambda i: gpus[i],
        "nvmlDeviceGetName": lambda h: h["name"],
        "nvmlDeviceGetUUID": lambda h: "GPU-" + h["name"][-3:],
        "nvmlDeviceGetPciInfo": lambda h: SimpleNamespace(busId=b"00000000:04:00.0"),
        "nvmlDeviceGetTemperature": lambda h, sensor: 50,
        "nvmlDeviceGetPerformanceState": lambda h: 0,
        "nvmlDeviceGetPowerUsage": power,
        "nvmlDeviceGetEnforcedPowerLimit": power,
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=1024 * 1024**2, total=81559 * 1024**2),
        "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=12, memory=3),
        "nvmlDeviceGetComputeMode": lambda h: 0,
    }
    for name, fn in patches.items():
        monkeypatch.setattr(pynvml, name, fn)


@pytest.mark.usefixtures("fake_nvml")
def test_gpu_sampler_reports_every_gpu_with_unsupported_fields_as_null() -> None:
    sampler = GpuSampler()
    gpus = sampler.sample("http://10.0.0.5:11337")
    assert [g["name"] for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
    first, second = gpus
    assert first["id"] == "http://10.0.0.5:11337:0" and second["intraNodeId"] == 1
    assert (first["powerUsage"], first["powerCap"]) == (71.2, 71.2)
    assert (second["powerUsage"], second["powerCap"]) == (None, None)
    assert first["memoryUsage"] == 1024 and first["memoryTotal"] == 81559
    assert first["busId"] == "00000000:04:00.0" and first["performanceState"] == "P0"
    assert first["cudaVersion"] == "12.4" and first["computeMode"] == "Default"
    assert first["gpuUtilization"] == 12 and first["temperature"] == 50
    sampler.close()


def test_no_nvidia_library_means_no_gpus_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="registry_svc")
    sampler = GpuSampler()  # this machine has no NVIDIA driver
    if sampler.available:
        pytest.skip("this machine has an NVIDIA GPU")
    assert [sampler.sample("http://n:1") for _ in range(3)] == [[], [], []]
    assert len([r for r in caplog.records if "no NVIDIA GPU telemetry" in r.message]) == 1


def test_node_reports_fake_gpus_and_seed_gpu_pipelines_work(tmp_path: Path) -> None:
    path = os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")])
    srv = Server(tmp_path / "data", env={"PYTHONPATH": path, "OB_NODE_ID": "gpu-node-1"}).start()
    try:
        node = srv.call("GET", "/registry-svc/node/self").json["node"]
        assert [g["name"] for g in node["gpus"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
        assert node["gpus"][1]["powerUsage"] is None and node["gpus"][0]["powerUsage"] == 71.2
        # NVML v2 memory where the driver has it (v1 would say 3207: it counts the reserved 615).
        assert [(g["memoryUsage"], g["memoryReserved"]) for g in node["gpus"]] == [(2592, 615), (20000, None)]
        env = {**os.environ, "TOKEN": srv.admin_token, "BASE": srv.url}
        script = """curl -sf -X POST -H "Authorization: Bearer $TOKEN" "$BASE/registry-svc/nodes" | jq -r '.nodes[] |
          select(.gpus | length > 0) | .gpus[] | select(.gpuUtilization < 50) |
          "\\(.name) (\\(.memoryUsage)MB/\\(.memoryTotal)MB used)"'"""
        out = subprocess.run(
            ["bash", "-o", "pipefail", "-c", script], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "NVIDIA H100 80GB HBM3 (2592MB/81559MB used)"
        listed = srv.call("POST", "/registry-svc/nodes", {"hasGpu": True}).json["nodes"]
        assert [n["id"] for n in listed] == ["gpu-node-1"]
    finally:
        srv.kill9()


# --- node heartbeats ----------------------------------------------------------------


def test_node_heartbeats_keep_usage_fresh(fast_server: Server) -> None:
    first = fast_server.call("GET", "/registry-svc/node/self").json["node"]
    later = wait_until(
        lambda: (
            (n := fast_server.call("GET", "/registry-svc/node/self").json["node"])["lastHeartbeat"]
            > first["lastHeartbeat"]
            and n
        ),
        what="a newer node heartbeat",
    )
    assert later["status"] == "Healthy" and later["heartbeatIntervalSeconds"] == 0.5
    assert 0 <= later["usage"]["cpu"]["percent"] <= 100
    assert later["usage"]["cpu"]["used"] <= later["usage"]["cpu"]["total"]


def test_a_silent_node_turns_unhealthy_and_takes_its_instances_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    one = Server(data, args=FAST, env={"OB_NODE_ID": "node-1"}).start()
    two_url = "http://node2.cluster.local:11337"
    two = Server(data, args=FAST, env={"OB_NODE_ID": "node-2", "OB_SELF_URL": two_url}).start()
    try:
        inst = one.register(
            {"url": "http://on-node-2:80", "slug": "n2", "nodeUrl": two_url, "status": "Healthy",
             "healthCheck": {"type": "none"}}
        ).json["instance"]  # fmt: skip
        assert status_of(one, inst["id"]) == "Healthy"
        two.kill9()

        def node2_unhealthy() -> dict[str, Any] | None:
            listed = one.call("POST", "/registry-svc/nodes").json["nodes"]
            return next((n for n in listed if n["id"] == "node-2" and n["status"] == "Unhealthy"), None)

        node2 = wait_until(node2_unhealthy, what="node-2 Unhealthy")
        assert node2["url"] == two_url
        after = wait_until(
            lambda: (i := instance(one, inst["id"]))["status"] == "Unhealthy" and i, what="instance down"
        )
        assert "node-2" in after["statusReason"] and "missed 3 heartbeats" in after["statusReason"]
        assert one.call("GET", "/registry-svc/node/self").json["node"]["status"] == "Healthy"
    finally:
        one.kill9()
        two.kill9()


# --- instance checks ----------------------------------------------------------------


def test_http_check_follows_a_real_backend_down_and_up(fast_server: Server, backend: Backend) -> None:
    check = {"type": "http", "path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1,
             "healthyThreshold": 2, "unhealthyThreshold": 2}  # fmt: skip
    inst = fast_server.register({"url": f"http://127.0.0.1:{backend.port}", "slug": "live", "healthCheck": check}).json[
        "instance"
    ]
    healthy = wait_until(lambda: (i := instance(fast_server, inst["id"]))["status"] == "Healthy" and i, what="Healthy")
    assert healthy["statusReason"] == "HTTP 200"

    backend.stop()
    down = wait_until(lambda: (i := instance(fast_server, inst["id"]))["status"] == "Unhealthy" and i, what="down")
    assert down["statusReason"] == "connect refused"

    back = Backend(backend.port).start()
    try:
        wait_until(lambda: status_of(fast_server, inst["id"]) == "Healthy", what="Healthy again")
        back.status = 503
        down = wait_until(lambda: (i := instance(fast_server, inst["id"]))["status"] == "Unhealthy" and i, what="503")
        assert down["statusReason"] == "HTTP 503"
    finally:
        back.stop()


def test_one_failed_probe_does_not_flap(fast_server: Server, backend: Backend) -> None:
    check = {"type": "http", "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2}
    inst = fast_server.register({"url": f"http://127.0.0.1:{backend.port}", "slug": "flap", "healthCheck": check})
    iid = inst.json["instance"]["id"]
    wait_until(lambda: status_of(fast_server, iid) == "Healthy", what="Healthy")
    backend.fail_next = 1
    lost_at = wait_until(lambda: backend.fail_next == 0 and backend.hits, what="the lost probe")
    seen = set()
    while backend.hits < lost_at + 2:  # the two probes after the lost one
        seen.add(status_of(fast_server, iid))
        time.sleep(0.05)
    seen.add(status_of(fast_server, iid))
    assert seen == {"Healthy"}


def test_tcp_check_is_the_default_and_passing_probes_write_nothing(fast_server: Server, backend: Backend) -> None:
    inst = fast_server.register(
        {"url": f"http://127.0.0.1:{backend.port}", "slug": "tcp",
         "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 3}}
    ).json["instance"]  # fmt: skip
    assert inst["healthCheck"]["type"] == "tcp"
    healthy = wait_until(lambda: (i := instance(fast_server, inst["id"]))["status"] == "Healthy" and i, what="Healthy")
    assert healthy["statusReason"] == "tcp connect ok"
    # Passing probes that change nothing write nothing: after two more of them (counted in
    # /metrics, not guessed from a sleep), lastHeartbeat is where it was.
    passed = probes_run(fast_server, "tcp", "pass")
    wait_until(lambda: probes_run(fast_server, "tcp", "pass") >= passed + 2, what="two more passing probes")
    assert instance(fast_server, inst["id"])["lastHeartbeat"] == healthy["lastHeartbeat"]


def test_ttl_instance_expires_without_heartbeats_and_recovers_with_one(fast_server: Server) -> None:
    inst = fast_server.register(
        {
            "url": "http://ttl-svc:80",
            "slug": "ttl",
            "healthCheck": {"type": "ttl", "intervalSeconds": 1, "timeoutSeconds": 1},
        }
    ).json["instance"]
    beat = fast_server.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat")
    assert beat.status == 200 and beat.json["instance"]["status"] == "Healthy"
    expired = wait_until(lambda: (i := instance(fast_server, inst["id"]))["status"] == "Unhealthy" and i, what="expiry")
    assert expired["statusReason"].startswith("no heartbeat for ")
    assert (
        fast_server.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat").json["instance"]["status"]
        == "Healthy"
    )


def test_deregister_after_removes_an_instance_that_stays_unhealthy(fast_server: Server) -> None:
    dead_port = free_port()
    inst = fast_server.register(
        {"url": f"http://127.0.0.1:{dead_port}", "slug": "dereg",
         "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1, "deregisterAfterSeconds": 2}}
    ).json["instance"]  # fmt: skip
    wait_until(
        lambda: fast_server.call("GET", f"/registry-svc/instance/{inst['id']}").status == 404, what="deregistration"
    )


def test_stopping_is_never_changed_by_probes(fast_server: Server, backend: Backend) -> None:
    inst = fast_server.register(
        {"url": f"http://127.0.0.1:{backend.port}", "slug": "stopping", "status": "Stopping",
         "healthCheck": {"type": "http", "intervalSeconds": 1, "timeoutSeconds": 1, "healthyThreshold": 1}}
    ).json["instance"]  # fmt: skip
    wait_until(lambda: backend.hits >= 2, what="probes to pass")
    assert status_of(fast_server, inst["id"]) == "Stopping"


# --- the heartbeat endpoint ---------------------------------------------------------


def test_heartbeat_endpoint_renews_and_sets_status(fast_server: Server) -> None:
    inst = fast_server.register({"url": "http://hb:80", "slug": "hb", "healthCheck": {"type": "none"}}).json["instance"]
    starting = fast_server.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat", {"status": "Starting"})
    assert starting.status == 200
    assert starting.json["instance"]["status"] == "Starting"
    assert starting.json["instance"]["lastHeartbeat"] >= inst["lastHeartbeat"]
    assert starting.index > 0
    renewed = fast_server.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat")
    assert renewed.json["instance"]["status"] == "Starting"  # no status in the body: unchanged
    bad = fast_server.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat", {"status": "Sleepy"})
    assert bad.status == 400 and bad.json["error"].startswith("status")
    assert fast_server.call("PUT", "/registry-svc/instance/nope/heartbeat").status == 404
    other = fast_server.token("service", "someone-else")
    assert fast_server.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat", token=other).status == 404
    proxy = fast_server.token("proxy")
    assert fast_server.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat", token=proxy).status == 403


# --- one checker per node -----------------------------------------------------------


def test_two_processes_probe_each_instance_once_per_interval(tmp_path: Path, backend: Backend) -> None:
    srv = Server(tmp_path / "data", processes=2, args=FAST).start()
    try:
        check = {"type": "http", "intervalSeconds": 1, "timeoutSeconds": 1}
        srv.register({"url": f"http://127.0.0.1:{backend.port}", "slug": "once", "healthCheck": check})
        wait_until(lambda: backend.hits > 0, what="a first probe")
        start_hits, start = backend.hits, time.monotonic()
        time.sleep(5)
        elapsed, probes = time.monotonic() - start, backend.hits - start_hits
        # One checker: about one probe per second. Two would double it.
        assert probes <= elapsed + 2, (probes, elapsed)
        assert probes >= 2
    finally:
        srv.kill9()


# --- the state machine --------------------------------------------------------------

PASS, FAIL = ProbeResult(True, "tcp connect ok"), ProbeResult(False, "connect refused")
CHECK = {"healthyThreshold": 2, "unhealthyThreshold": 3}


@pytest.mark.parametrize(
    ("status", "results", "expected"),
    [
        ("Unknown", [PASS], "Healthy"),
        ("Unknown", [FAIL], "Unhealthy"),
        ("Healthy", [FAIL, FAIL], None),
        ("Healthy", [FAIL, FAIL, FAIL], "Unhealthy"),
        ("Healthy", [FAIL, FAIL, PASS, FAIL, FAIL], None),
        ("Unhealthy", [PASS], None),
        ("Unhealthy", [PASS, PASS], "Healthy"),
        ("Starting", [FAIL, FAIL, FAIL, FAIL], None),
        ("Starting", [PASS, PASS], "Healthy"),
        ("Stopping", [PASS, PASS, FAIL, FAIL, FAIL], None),
    ],
)
def test_probe_results_apply_thresholds(status: str, results: list[ProbeResult], expected: str | None) -> None:
    state = CheckState()
    final = None
    for result in results:
        state.count(result)
        change = after_probe(status, CHECK, state.passes, state.failures, result.ok, result.reason)
        if change is not None:
            final, status = change.status, change.status
    assert final == expected


def test_imported_instances_with_partial_checks_do_not_break_the_checker(tmp_path: Path) -> None:
    """Records written around the API (bulk import) may lack check fields: defaults apply."""
    import orjson

    from registry_svc import _core
    from registry_svc.health import HealthChecker

    store = _core.Store(str(tmp_path / "store"))
    partial = {"id": "imported", "url": "http://imported:80", "status": "Unknown", "healthCheck": {"type": "tcp"}}
    bare = {"id": "bare", "url": "http://bare:80", "status": "Unknown"}
    store.put_many("instances", [(r["id"], orjson.dumps(r)) for r in (partial, bare)])
    checker = HealthChecker(store, lambda _instance: True)
    checker.reload()
    assert set(checker._instances) == {"imported", "bare"}
    assert checker._instances["bare"]["healthCheck"]["intervalSeconds"] == 10
    store.close()


def test_a_full_reload_keeps_the_verdicts_of_checks_it_keeps(tmp_path: Path) -> None:
    """A full reload (the nodes changed: which node checks what is decided again) used to
    forget every instance's verdicts, so the next probe of one check wrote a `checkStatus`
    without the others (seen in CI: Healthy, "all 2 checks pass", and one check listed)."""
    import orjson

    from registry_svc import _core, checks
    from registry_svc.health import HealthChecker

    store = _core.Store(str(tmp_path / "store"))
    two = [
        {"name": "web", "type": "http", "path": "/", "intervalSeconds": 1},
        {"name": "tcp", "type": "tcp", "intervalSeconds": 1},
    ]
    mine = {"id": "two", "url": "http://127.0.0.1:9", "healthCheck": {"type": "none"}, "checks": two}
    gone = {"id": "gone", "url": "http://127.0.0.1:8", "healthCheck": {"type": "tcp"}}
    store.put_many("instances", [(r["id"], orjson.dumps(r)) for r in (mine, gone)])
    checker = HealthChecker(store, lambda _instance: True)
    checker.reload()
    for name in ("web", "tcp"):
        checker._verdicts["two"][name].judge(next(c for c in two if c["name"] == name), ProbeResult(True, "ok"))
    store.delete("instances", "gone")
    checker.request_full_reload()
    checker._loaded_at = float("-inf")
    checker.reload()
    assert set(checker._instances) == {"two"}
    status = checks.check_status(checker._instances["two"]["_judged"], checker._verdicts["two"])
    assert set(status) == {"web", "tcp"}
    store.close()


def test_a_tick_starts_what_is_due_from_a_heap_not_a_scan(tmp_path: Path) -> None:
    """Finding 10 of the review: the checker keeps a heap keyed on each check's next due
    time. Instances with nothing to check never enter it; each tick starts exactly the
    checks that are due, and a check still running is not started again."""
    import asyncio

    import orjson

    from registry_svc import _core
    from registry_svc.health import HealthChecker

    store = _core.Store(str(tmp_path / "store"))
    quiet = [{"id": f"q{i}", "url": f"http://127.0.0.1:9/{i}", "healthCheck": {"type": "none"}} for i in range(2000)]
    ttl = [
        {"id": f"t{i}", "url": f"http://127.0.0.1:9/t{i}", "healthCheck": {"type": "ttl", "intervalSeconds": 1 + i}}
        for i in range(3)
    ]
    store.put_many("instances", [(r["id"], orjson.dumps(r)) for r in quiet + ttl])
    now = [100.0]
    checker = HealthChecker(store, lambda _instance: True, clock=lambda: now[0])
    started: list[str] = []

    def spawn(coro: Any) -> None:
        started.append(coro.cr_frame.f_locals["instance"]["id"])
        coro.close()  # not run: `in_flight` stays set until the test clears it

    checker._spawn = spawn  # type: ignore[method-assign]
    checker._loaded_at = float("-inf")
    checker._full_reload(now[0])
    for state in checker._states.values():  # no random spread: all due now
        state.next_due = now[0]
    checker._due.clear()
    for instance_id, state in checker._states.items():
        if checker._instances[instance_id]["healthCheck"]["type"] != "none":
            checker._schedule(instance_id, None, state, now[0])
    assert len(checker._due) == 3, "instances with nothing to check are not on the heap"

    semaphore = asyncio.Semaphore(1)
    checker._start_due(semaphore)
    assert sorted(started) == ["t0", "t1", "t2"]
    started.clear()
    now[0] += 1.5  # t0 is due again (interval 1 s), but still in flight
    checker._start_due(semaphore)
    assert started == [], "a check still running is not started twice"
    checker._states["t0"].in_flight = False
    now[0] += 0.3  # the next tick: t0 runs, late; t1 (2 s) is not due yet
    checker._start_due(semaphore)
    assert started == ["t0"]
    assert 0.7 < checker.max_lateness < 0.9
    started.clear()
    for state in checker._states.values():
        state.in_flight = False
    now[0] += 10
    checker._start_due(semaphore)
    assert sorted(started) == ["t0", "t1", "t2"], "each once, however many turns were missed"
    assert len(checker._due) == 3
    store.close()
