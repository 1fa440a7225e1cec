"""Instances through real HTTP: register (by url, by parts), upsert, filters, get, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import NO_CHECK, Server


def ids(reply: Any) -> set[str]:
    return {i["id"] for i in reply.json["instances"]}


def test_register_by_url_creates_then_updates_the_same_instance(server: Server) -> None:
    first = server.register({"url": "http://user-service:8080", "slug": "user-svc"})
    assert first.status == 201
    inst = first.json["instance"]
    assert inst["id"].startswith("inst_")
    assert (inst["scheme"], inst["host"], inst["port"], inst["status"]) == (
        "http",
        "user-service",
        8080,
        "Unknown",
    )
    assert inst["registeredAt"].endswith("Z") and inst["lastHeartbeat"].endswith("Z")
    assert inst["nodeUrl"] == server.url

    again = server.register({"url": "http://user-service:8080", "slug": "user-svc", "tags": ["v2"]})
    assert again.status == 200
    updated = again.json["instance"]
    assert updated["id"] == inst["id"]
    assert updated["registeredAt"] == inst["registeredAt"]
    assert updated["lastHeartbeat"] >= inst["lastHeartbeat"]
    assert updated["tags"] == ["v2"]
    assert again.index > first.index
    listed = server.call("GET", "/registry-svc/instances?slug=user-svc").json["instances"]
    assert [i["id"] for i in listed] == [inst["id"]]


def test_register_by_parts_composes_the_url(server: Server) -> None:
    reply = server.register({"scheme": "https", "host": "api.example.com", "port": 443, "path": "/v1", "slug": "parts"})
    assert reply.status == 201, reply.body
    # The canonical form drops the scheme's default port from the url; `port` keeps it.
    assert (reply.json["instance"]["url"], reply.json["instance"]["port"]) == ("https://api.example.com/v1", 443)

    by_ip = server.register(
        {"scheme": "http", "ip": "192.168.1.100", "port": 8080, "slug": "parts", "healthCheck": NO_CHECK}
    )
    inst = by_ip.json["instance"]
    assert (inst["url"], inst["ip"], inst["host"]) == ("http://192.168.1.100:8080", "192.168.1.100", None)
    ipv6 = server.register({"ip": "::1", "port": 9000, "slug": "parts"})
    assert ipv6.json["instance"]["url"] == "http://[::1]:9000"


def test_custom_id_and_deployment_reference(server: Server) -> None:
    reply = server.register({"id": "inst_custom_123", "url": "http://api-service:8080", "deploymentId": "depl_abc123"})
    assert reply.status == 201
    got = server.call("GET", "/registry-svc/instance/inst_custom_123")
    assert got.status == 200
    assert got.json["instance"]["deploymentId"] == "depl_abc123"
    # An admin registration without a slug leaves it null.
    assert got.json["instance"]["slug"] is None
    # A second id for the same URL is refused instead of leaving two rows.
    clash = server.register({"id": "inst_other", "url": "http://api-service:8080"})
    assert clash.status == 409
    assert "inst_custom_123" in clash.json["error"]


def test_each_filter_alone_and_combined(server: Server) -> None:
    # Statuses are set here, so no health check may change them under the test.
    base = {
        "slug": "filt",
        "deploymentId": "depl_f",
        "zone": "z1",
        "status": "Healthy",
        "healthCheck": {"type": "none"},
    }
    server.register(
        {
            **base,
            "url": "http://f-a:1",
            "tags": ["blue", "prod"],
            "nodeUrl": "http://node1.cluster.local:11337",
        }
    )
    server.register({**base, "url": "http://f-b:1", "tags": ["green"], "zone": "z2"})
    server.register(
        {
            **base,
            "url": "http://10.1.2.3:1",
            "tags": ["blue"],
            "status": "Unhealthy",
            "deploymentId": "depl_g",
        }
    )
    everything = ids(server.call("GET", "/registry-svc/instances?slug=filt"))
    assert len(everything) == 3

    def q(query: str) -> set[str]:
        reply = server.call("GET", f"/registry-svc/instances?{query}")
        assert reply.status == 200, reply.body
        return {i["url"] for i in reply.json["instances"]}

    assert q("slug=filt&host=f-a") == {"http://f-a:1"}
    assert q("slug=filt&ip=10.1.2.3") == {"http://10.1.2.3:1"}
    assert q("deploymentId=depl_g") == {"http://10.1.2.3:1"}
    assert q("nodeUrl=http%3A%2F%2Fnode1.cluster.local%3A11337") == {"http://f-a:1"}
    assert q("slug=filt&status=Healthy") == {"http://f-a:1", "http://f-b:1"}
    assert q("slug=filt&zone=z2") == {"http://f-b:1"}
    assert q("slug=filt&tag=blue") == {"http://f-a:1", "http://10.1.2.3:1"}
    assert q("slug=filt&tag=blue&tag=prod") == {"http://f-a:1"}
    assert q("slug=filt&tag=blue&status=Healthy&zone=z1&deploymentId=depl_f") == {"http://f-a:1"}
    one = next(iter(everything))
    assert ids(server.call("GET", f"/registry-svc/instances?id={one}&slug=filt")) == {one}
    assert q("slug=filt&host=nobody") == set()
    assert server.call("GET", "/registry-svc/instances?slug=no-such-slug").body == b'{"instances":[]}'


def test_unknown_filter_is_a_400_naming_it(server: Server) -> None:
    reply = server.call("GET", "/registry-svc/instances?colour=red")
    assert reply.status == 400
    assert "colour" in reply.json["error"]


def test_get_and_delete_with_404_for_unknown_ids(server: Server) -> None:
    inst = server.register({"url": "http://to-delete:80", "slug": "del"}).json["instance"]
    assert server.call("GET", f"/registry-svc/instance/{inst['id']}").status == 200
    deleted = server.call("DELETE", f"/registry-svc/instance/{inst['id']}")
    assert deleted.status == 204 and deleted.body == b""
    assert server.call("GET", f"/registry-svc/instance/{inst['id']}").status == 404
    again = server.call("DELETE", f"/registry-svc/instance/{inst['id']}")
    assert again.status == 404
    assert inst["id"] in again.json["error"]
    assert server.call("GET", "/registry-svc/instances?slug=del").json["instances"] == []


def test_a_partial_health_check_or_metadata_merges_into_what_is_stored(server: Server) -> None:
    """A JSON merge patch (RFC 7396) on re-registration: sent members replace, a null member
    goes back to its default, a null object to all defaults; absent members are kept."""
    url = "http://127.0.0.1:29"
    check = {"type": "http", "path": "/ready", "intervalSeconds": 2, "unhealthyThreshold": 5}
    first = server.register({"url": url, "slug": "merge", "healthCheck": check, "metadata": {"a": "1", "b": "2"}})
    assert first.status == 201
    again = server.register(
        {"url": url, "healthCheck": {"type": "http", "path": "/live"}, "metadata": {"b": None, "c": "3"}}
    ).json["instance"]
    assert again["healthCheck"]["path"] == "/live"
    assert again["healthCheck"]["intervalSeconds"] == 2  # was reset to 10
    assert again["healthCheck"]["unhealthyThreshold"] == 5
    assert again["metadata"] == {"a": "1", "c": "3"}
    reset = server.register({"url": url, "healthCheck": {"unhealthyThreshold": None}}).json["instance"]
    assert reset["healthCheck"]["unhealthyThreshold"] == 3 and reset["healthCheck"]["path"] == "/live"
    # A shorter interval takes the timeout down with it unless the timeout was sent.
    short = server.register({"url": url, "healthCheck": {"intervalSeconds": 1}}).json["instance"]["healthCheck"]
    assert (short["intervalSeconds"], short["timeoutSeconds"]) == (1, 1)
    refused = server.register({"url": url, "healthCheck": {"timeoutSeconds": 3}})
    assert refused.status == 400 and "healthCheck.timeoutSeconds" in refused.json["error"]
    longer = server.register({"url": url, "healthCheck": {"intervalSeconds": 30}}).json["instance"]
    assert server.register({"url": url, "healthCheck": {"timeoutSeconds": 20}}).status == 200
    assert longer["healthCheck"]["path"] == "/live"
    cleared = server.register({"url": url, "healthCheck": None, "metadata": None}).json["instance"]
    assert cleared["healthCheck"]["type"] == "tcp" and cleared["healthCheck"]["intervalSeconds"] == 10
    assert cleared["metadata"] == {}


def test_status_tags_metadata_weight_and_health_check_round_trip(server: Server) -> None:
    body = {
        "url": "http://127.0.0.1:9", "slug": "rt", "status": "Starting", "tags": ["dev", "user-service", "dev"],
        "metadata": {"version": "1.2"}, "weight": 7, "zone": "us-east-1a",
        "healthCheck": {"type": "http", "path": "/healthz", "intervalSeconds": 5},
    }  # fmt: skip
    inst = server.register(body).json["instance"]
    assert inst["status"] == "Starting"
    assert inst["tags"] == ["dev", "user-service"]
    assert inst["metadata"] == {"version": "1.2"} and inst["weight"] == 7
    assert inst["healthCheck"]["type"] == "http" and inst["healthCheck"]["timeoutSeconds"] == 2
    short = server.register({"url": "http://127.0.0.1:19", "slug": "rt", "healthCheck": {"intervalSeconds": 1}})
    assert short.json["instance"]["healthCheck"]["timeoutSeconds"] == 1
    # Sending a fetched instance back works: read-only fields are ignored.
    fetched = server.call("GET", f"/registry-svc/instance/{inst['id']}").json["instance"]
    back = server.register(fetched)
    assert back.status == 200
    assert back.json["instance"]["registeredAt"] == inst["registeredAt"]
    # Re-registering without status keeps the status.
    assert server.register({"url": "http://127.0.0.1:9", "slug": "rt"}).json["instance"]["status"] == "Starting"


@pytest.mark.parametrize("reserved", ["registry-svc", "health", "metrics"])
def test_reserved_slugs_are_refused(server: Server, reserved: str) -> None:
    reply = server.register({"url": "http://r:1", "slug": reserved})
    assert reply.status == 400
    assert "slug" in reply.json["error"]


def test_reads_carry_the_registry_index(server: Server) -> None:
    before = server.call("GET", "/registry-svc/instances").index
    write = server.register({"url": "http://idx:1", "slug": "idx"})
    assert write.index > before
    assert server.call("GET", "/registry-svc/instances").index >= write.index


def test_an_admin_gives_a_slug_to_an_instance_registered_without_one(tmp_path: Path) -> None:
    """An instance registered the product page's way (no slug) gets one when an admin
    re-registers it with a slug; moving it between slugs stays a conflict, and neither the
    message nor the log ever says Python's None."""
    server = Server(tmp_path / "data").start()
    try:
        url = "http://127.0.0.1:9/lb"
        first = server.register({"url": url, "healthCheck": {"type": "none"}})
        assert first.status == 201 and first.json["instance"]["slug"] is None
        given = server.register({"url": url, "slug": "lbsvc", "healthCheck": {"type": "none"}})
        assert given.status == 200 and given.json["instance"]["slug"] == "lbsvc", given.body
        assert given.json["instance"]["id"] == first.json["instance"]["id"]
        moved = server.register({"url": url, "slug": "other", "healthCheck": {"type": "none"}})
        assert moved.status == 409, moved.body
        assert "slug 'lbsvc'" in moved.json["error"] and "slug 'other'" in moved.json["error"]
        assert "None" not in moved.json["error"]
        # A null slug keeps the instance's slug (absent and null alike, as documented).
        kept = server.call("PUT", "/registry-svc/instance", {"url": url, "slug": None, "healthCheck": {"type": "none"}})
        assert kept.status == 200 and kept.json["instance"]["slug"] == "lbsvc", kept.body
        assert "(None)" not in server.log_path.read_text()
    finally:
        server.kill9()
