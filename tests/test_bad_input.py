"""Hostile and malformed input: a clear 4xx naming the problem, and nothing written."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Server

MIB = 1 << 20


def assert_rejected(server: Server, reply: Any, status: int, mentions: str) -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"] == "application/json"
    assert mentions in reply.json["error"], reply.json["error"]


@pytest.fixture
def index_unchanged(server: Server) -> Any:
    before = server.snapshot()
    yield
    assert server.snapshot() == before, "a rejected request wrote something"


@pytest.mark.usefixtures("index_unchanged")
@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"url": "http://x:1",}', "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"http://x:1"', "JSON object"),
        (b"", "JSON object"),
        (b"\xff\xfe{}", "invalid JSON"),
        (b"[" * 5000 + b"]" * 5000, "invalid JSON"),
    ],
)
def test_malformed_bodies_are_400(server: Server, raw: bytes, mentions: str) -> None:
    assert_rejected(server, server.call("PUT", "/registry-svc/instance", raw=raw), 400, mentions)


@pytest.mark.usefixtures("index_unchanged")
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://x:1", "port": "80"}, "port"),
        ({"host": "h", "port": 0}, "port"),
        ({"host": "h", "port": 70000}, "port"),
        ({"host": "h", "port": -1}, "port"),
        ({"host": "h", "port": 80.5}, "port"),
        ({"host": "h", "port": True}, "port"),
        ({"url": "http://x:70000"}, "url"),
        ({"url": "http://x:0"}, "url"),
        ({"url": "ftp://files.example.com"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://x:1/a?b=c"}, "url"),
        ({"url": "http://" + "a" * 5000 + ":1"}, "url"),
        ({"url": 42}, "url"),
        ({}, "url"),
        ({"scheme": "gopher", "host": "h"}, "scheme"),
        ({"host": "bad host/name"}, "host"),
        ({"ip": "999.1.1.1"}, "ip"),
        ({"url": "http://x:1", "slug": ""}, "slug"),
        ({"url": "http://x:1", "slug": "Upper Case"}, "slug"),
        ({"url": "http://x:1", "id": "a/b"}, "id"),
        ({"url": "http://x:1", "id": "a\u0000b"}, "id"),
        ({"url": "http://x:1", "id": "x" * 200}, "id"),
        ({"url": "http://x:1", "id": ""}, "id"),
        ({"url": "http://x:1", "tags": "dev"}, "tags"),
        ({"url": "http://x:1", "tags": ["ok", 3]}, "tags[1]"),
        ({"url": "http://x:1", "tags": ["a\nb"]}, "tags[0]"),
        ({"url": "http://x:1", "metadata": {"k": 1}}, "metadata.k"),
        ({"url": "http://x:1", "metadata": []}, "metadata"),
        ({"url": "http://x:1", "weight": 0}, "weight"),
        ({"url": "http://x:1", "weight": 1001}, "weight"),
        ({"url": "http://x:1", "status": "Dead"}, "status"),
        ({"url": "http://x:1", "healthCheck": {"type": "icmp"}}, "healthCheck.type"),
        ({"url": "http://x:1", "healthCheck": {"intervalSeconds": 0}}, "healthCheck.intervalSeconds"),
        (
            {"url": "http://x:1", "healthCheck": {"timeoutSeconds": 20, "intervalSeconds": 10}},
            "healthCheck.timeoutSeconds",
        ),
        ({"url": "http://x:1", "healthCheck": {"path": "health"}}, "healthCheck.path"),
        ({"url": "http://x:1", "colour": "red"}, "colour"),
        ({"url": "http://x:1", "nodeUrl": "node1"}, "nodeUrl"),
        ({"url": "http://x:1", "host": "y"}, "host"),
        ({"url": "http://x:1", "port": 2}, "port"),
        ({"url": "http://x:1", "deploymentId": 5}, "deploymentId"),
    ],
)
def test_bad_instance_fields_are_400_naming_the_field(server: Server, body: dict[str, Any], field: str) -> None:
    reply = server.register(body)
    assert_rejected(server, reply, 400, field)
    assert reply.json["error"].startswith(field), reply.json["error"]


@pytest.mark.usefixtures("index_unchanged")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/registry-svc/instance"),
        ("PUT", "/registry-svc/definition"),
        ("POST", "/registry-svc/nodes"),
        ("POST", "/registry-svc/tokens"),
    ],
)
def test_bodies_over_one_mib_are_413(server: Server, method: str, path: str) -> None:
    huge = b'{"url": "http://x:1", "tags": ["' + b"a" * (MIB + 10) + b'"]}'
    assert_rejected(server, server.call(method, path, raw=huge), 413, "limit")


@pytest.mark.usefixtures("index_unchanged")
@pytest.mark.parametrize(
    "path",
    [
        "/registry-svc/instance/does-not-exist",
        "/registry-svc/instance/a%2Fb",
        "/registry-svc/instance/%00%01",
        "/registry-svc/instance/" + "x" * 600,
        "/registry-svc/instance/%27%20OR%201%3D1",
    ],
)
def test_unknown_or_hostile_ids_are_404(server: Server, path: str) -> None:
    for method in ("GET", "DELETE"):
        reply = server.call(method, path)
        assert reply.status == 404, (method, path, reply.body)
        assert "not found" in reply.json["error"]


@pytest.mark.usefixtures("index_unchanged")
def test_unknown_routes_and_methods_are_json(server: Server) -> None:
    assert_rejected(server, server.call("GET", "/no/such/route"), 404, "no route")
    assert_rejected(server, server.call("PATCH", "/registry-svc/instance"), 405, "PUT")
    assert_rejected(server, server.call("POST", "/registry-svc/definitions"), 405, "GET")


def test_hostile_but_valid_strings_are_stored_verbatim(server: Server) -> None:
    tags = ["'; DROP TABLE instances; --", "<script>alert(1)</script>", "ünïcødé ✓", '"quoted"']
    reply = server.register({"url": "http://hostile:1", "slug": "hostile", "tags": tags, "metadata": {'k"': "v\\"}})
    assert reply.status == 201, reply.body
    listed = server.call("GET", "/registry-svc/instances?slug=hostile").json["instances"]
    assert listed[0]["tags"] == tags and listed[0]["metadata"] == {'k"': "v\\"}
    by_tag = server.call("GET", "/registry-svc/instances?tag=%3Cscript%3Ealert(1)%3C%2Fscript%3E").json["instances"]
    assert [i["url"] for i in by_tag] == ["http://hostile:1"]
