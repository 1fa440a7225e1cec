"""Nodes through real HTTP: self registration with OB_* identity, list filters, removal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import Server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Two servers sharing one store, as two nodes of a cluster."""
    data = tmp_path_factory.mktemp("cluster")
    env1 = {"OB_NODE_ID": "prod-node-1", "OB_REGION": "us-east-1", "OB_AVAILABILITY_ZONE": "us-east-1a"}
    one = Server(data, env=env1).start()
    env2 = {
        "OB_NODE_ID": "prod-node-2", "OB_REGION": "eu-west-1", "OB_AVAILABILITY_ZONE": "eu-west-1b",
        "OB_SELF_URL": "http://node2.example.com:11337",
    }  # fmt: skip
    two = Server(data, env=env2).start()
    yield one, two
    one.kill9()
    two.kill9()


def test_node_self_has_identity_and_usage(cluster: tuple[Server, Server]) -> None:
    one, _ = cluster
    node = one.call("GET", "/registry-svc/node/self").json["node"]
    assert (node["id"], node["url"]) == ("prod-node-1", one.url)
    assert (node["region"], node["availabilityZone"]) == ("us-east-1", "us-east-1a")
    assert node["status"] == "Healthy" and node["lastHeartbeat"].endswith("Z")
    assert node["gpus"] == []
    usage = node["usage"]
    assert 0 < usage["memory"]["used"] < usage["memory"]["total"]
    assert 0 < usage["disk"]["used"] < usage["disk"]["total"]
    assert usage["cpu"]["total"] >= 1 and 0 <= usage["cpu"]["percent"] <= 100
    for part in ("cpu", "memory", "disk"):
        assert 0 <= usage[part]["percent"] <= 100


def test_list_all_and_filtered(cluster: tuple[Server, Server]) -> None:
    one, _ = cluster

    def listed(body: object = None) -> set[str]:
        reply = one.call("POST", "/registry-svc/nodes", body)
        assert reply.status == 200, reply.body
        return {n["id"] for n in reply.json["nodes"]}

    assert listed() == {"prod-node-1", "prod-node-2"}
    assert listed({}) == {"prod-node-1", "prod-node-2"}
    assert listed({"ids": ["prod-node-2", "nope"]}) == {"prod-node-2"}
    assert listed({"region": "eu-west-1"}) == {"prod-node-2"}
    assert listed({"availabilityZone": "us-east-1a"}) == {"prod-node-1"}
    assert listed({"hasGpu": True}) == set()
    assert listed({"hasGpu": False, "region": "us-east-1"}) == {"prod-node-1"}


def test_list_filter_errors_name_the_field(cluster: tuple[Server, Server]) -> None:
    one, _ = cluster
    for body, field in (({"ids": "x"}, "ids"), ({"hasGpu": "yes"}, "hasGpu"), ({"colour": 1}, "colour")):
        reply = one.call("POST", "/registry-svc/nodes", body)
        assert reply.status == 400
        assert reply.json["error"].startswith(field), reply.json["error"]


def test_delete_by_percent_encoded_url_then_404(cluster: tuple[Server, Server], tmp_path: Path) -> None:
    one, two = cluster
    two.kill9()  # a node that still heartbeats would register again
    url = "http://node2.example.com:11337"
    assert one.call("DELETE", "/registry-svc/node/" + quote(url, safe="")).status == 204
    assert "prod-node-2" not in {n["id"] for n in one.call("POST", "/registry-svc/nodes").json["nodes"]}
    again = one.call("DELETE", "/registry-svc/node/" + quote(url, safe=""))
    assert again.status == 404 and url in again.json["error"]
    # The 1Backend form (only the slashes escaped) is accepted too.
    assert one.call("DELETE", "/registry-svc/node/http:%2F%2Fnowhere:1").status == 404


def test_unencoded_url_in_path_also_works(fresh_server: Server) -> None:
    # A node that no longer heartbeats (this server's own node would register again).
    url = "http://gone.example.com:11337"
    Server(fresh_server.data_dir, env={"OB_SELF_URL": url}).start().kill9()
    assert url in {n["url"] for n in fresh_server.call("POST", "/registry-svc/nodes").json["nodes"]}
    assert fresh_server.call("DELETE", f"/registry-svc/node/{url}").status == 204
    assert url not in {n["url"] for n in fresh_server.call("POST", "/registry-svc/nodes").json["nodes"]}
