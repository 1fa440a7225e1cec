"""The product page's curl | jq pipelines, run by bash against a real server."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import Server


@pytest.fixture(scope="module")
def seeded(server: Server) -> Server:
    # Statuses are set here, so no health check may change them under the test.
    static = {"type": "none"}
    server.register(
        {
            "url": "http://user-service-1:8080",
            "slug": "user-svc",
            "status": "Healthy",
            "tags": ["blue"],
            "healthCheck": static,
        }
    )
    server.register(
        {"url": "http://user-service-2:8080", "slug": "user-svc", "status": "Unhealthy", "healthCheck": static}
    )
    server.register({"url": "http://localhost:3001", "tags": ["dev", "user-service"], "healthCheck": static})
    server.register(
        {
            "url": "http://gpu-1:8080",
            "slug": "model-inference-svc",
            "nodeUrl": "http://api-server-2:11337",
            "healthCheck": static,
        }
    )
    return server


def sh(server: Server, script: str) -> str:
    env = {**os.environ, "TOKEN": server.admin_token, "BASE": server.url}
    done = subprocess.run(["bash", "-o", "pipefail", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


CURL = 'curl -sf -H "Authorization: Bearer $TOKEN"'


def test_list_all_healthy_instances(seeded: Server) -> None:
    out = sh(seeded, f'{CURL} "$BASE/registry-svc/instances" | jq \'.instances[] | select(.status == "Healthy")\'')
    assert '"url": "http://user-service-1:8080"' in out
    assert "user-service-2" not in out


def test_monitor_instances_line_format(seeded: Server) -> None:
    out = sh(
        seeded,
        f'{CURL} "$BASE/registry-svc/instances" | jq -r \'.instances[] | "\\(.slug // "N/A") \\(.url) \\(.status)"\'',
    )
    lines = set(out.splitlines())
    assert "user-svc http://user-service-1:8080 Healthy" in lines
    assert "N/A http://localhost:3001 Unknown" in lines


def test_dashboard_counts(seeded: Server) -> None:
    script = f"""
    instances=$({CURL} "$BASE/registry-svc/instances")
    echo "$instances" | jq '[.instances[] | select(.status == "Healthy")] | length'
    echo "$instances" | jq '[.instances[] | select(.status == "Unhealthy")] | length'
    {CURL} -X POST "$BASE/registry-svc/nodes" | jq '.nodes | length'
    {CURL} "$BASE/registry-svc/definitions" | jq '.definitions | length'
    echo "$instances" | jq -r '.instances[] | .slug // "unknown"' | sort | uniq -c | awk '{{print $2":"$1}}'
    """
    lines = sh(seeded, script).split()
    assert lines[:4] == ["1", "1", "1", "0"]
    assert "user-svc:2" in lines and "unknown:1" in lines


def test_cleanup_and_blue_green_selectors(seeded: Server) -> None:
    dead = sh(
        seeded,
        f'{CURL} "$BASE/registry-svc/instances" | jq -r \'.instances[] | select(.nodeUrl == "http://api-server-2:11337") | .id\'',
    )
    assert len(dead.split()) == 1
    blue = sh(
        seeded,
        f'{CURL} "$BASE/registry-svc/instances" | jq -r \'.instances[] | select(.tags[]? == "blue") | .id\'',
    )
    assert len(blue.split()) == 1


def test_node_resource_pipelines(seeded: Server) -> None:
    node = sh(
        seeded,
        f"""{CURL} "$BASE/registry-svc/node/self" | jq -c '{{id: .node.id, url: .node.url, region: .node.region,
          availabilityZone: .node.availabilityZone, cpu: .node.usage.cpu, memory: .node.usage.memory,
          disk: .node.usage.disk, gpus: .node.gpus | length}}'""",
    )
    assert '"gpus":0' in node and '"cpu":{"used"' in node
    cluster = sh(
        seeded,
        f"""{CURL} -X POST "$BASE/registry-svc/nodes" | jq -r '.nodes[] |
          "\\(.id) CPU:\\(.usage.cpu.percent)% MEM:\\(.usage.memory.percent)% DISK:\\(.usage.disk.percent)% GPUs:\\(.gpus | length)"'""",
    )
    assert cluster.startswith("node_") and "GPUs:0" in cluster
    gpus = sh(seeded, f"""{CURL} -X POST "$BASE/registry-svc/nodes" | jq '.nodes[] | select(.gpus | length > 0)'""")
    assert gpus == ""
