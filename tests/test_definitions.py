"""Definitions through real HTTP: the seed's YAML examples save; validation names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Server

SEED_DEFINITIONS = sorted((Path(__file__).parent / "data" / "definitions").glob("*.yaml"))


def save(server: Server, definition: Any) -> Any:
    return server.call("PUT", "/registry-svc/definition", {"definition": definition})


@pytest.mark.parametrize("path", SEED_DEFINITIONS, ids=lambda p: p.name)
def test_seed_yaml_examples_save_and_read_back(server: Server, path: Path) -> None:
    definition = yaml.safe_load(path.read_text())
    reply = save(server, definition)
    assert reply.status in (200, 201), reply.body
    stored = server.call("GET", f"/registry-svc/definition/{definition['id']}").json["definition"]
    assert stored["id"] == definition["id"]
    for key in ("image", "repository", "ports", "apiSpecs", "clients"):
        assert stored.get(key) == definition.get(key)
    if "envars" in definition:
        assert [e["key"] for e in stored["envars"]] == [e["key"] for e in definition["envars"]]


def test_create_is_201_update_is_200_and_list_has_it(server: Server) -> None:
    d = {"id": "my-svc", "image": {"name": "nginx:latest", "internalPorts": [80]}}
    assert save(server, d).status == 201
    d["image"]["name"] = "nginx:1.27"
    assert save(server, d).status == 200
    listed = server.call("GET", "/registry-svc/definitions").json["definitions"]
    assert {"id": "my-svc", "image": {"name": "nginx:1.27", "internalPorts": [80]}} in listed


def test_delete_then_404(server: Server) -> None:
    save(server, {"id": "test-service-a", "image": {"name": "busybox"}})
    assert server.call("DELETE", "/registry-svc/definition/test-service-a").status == 204
    assert server.call("GET", "/registry-svc/definition/test-service-a").status == 404
    gone = server.call("DELETE", "/registry-svc/definition/test-service-a")
    assert gone.status == 404 and "test-service-a" in gone.json["error"]


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"image": {"name": "x"}}, "definition.id"),
        ({"id": "", "image": {"name": "x"}}, "definition.id"),
        ({"id": "Bad_ID", "image": {"name": "x"}}, "definition.id"),
        ({"id": "no-source"}, "definition.image"),
        ({"id": "both", "image": {"name": "x"}, "repository": {"url": "u"}}, "definition.image"),
        (
            {"id": "p0", "image": {"name": "x"}, "ports": [{"internal": 0, "host": 80}]},
            "definition.ports[0].internal",
        ),
        (
            {"id": "p7", "image": {"name": "x"}, "ports": [{"internal": 80, "host": 70000}]},
            "definition.ports[0].host",
        ),
        ({"id": "ip", "image": {"name": "x", "internalPorts": [80, 0]}}, "definition.image.internalPorts[1]"),
        (
            {"id": "rp", "repository": {"url": "u", "internalPorts": [70000]}},
            "definition.repository.internalPorts[0]",
        ),
        ({"id": "noname", "image": {"internalPorts": [80]}}, "definition.image.name"),
        ({"id": "env", "image": {"name": "x"}, "envars": [{"value": "v"}]}, "definition.envars[0].key"),
        ({"id": "unk", "image": {"name": "x"}, "replicas": 3}, "definition.replicas"),
        ({"id": "typ", "image": {"name": "x"}, "ports": "80:80"}, "definition.ports"),
        ({"id": "cl", "image": {"name": "x"}, "clients": [{"language": "go"}]}, "definition.clients[0].url"),
    ],
)
def test_invalid_definitions_are_400_naming_the_field(server: Server, definition: Any, field: str) -> None:
    before = server.snapshot()
    reply = save(server, definition)
    assert reply.status == 400, reply.body
    assert reply.json["error"].startswith(field + ":"), reply.json["error"]
    assert server.snapshot() == before


def test_body_must_wrap_the_definition(server: Server) -> None:
    reply = server.call("PUT", "/registry-svc/definition", {"id": "x", "image": {"name": "y"}})
    assert reply.status == 400
    assert "id" in reply.json["error"] or "definition" in reply.json["error"]
