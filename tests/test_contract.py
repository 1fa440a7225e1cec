"""The API contract: the OpenAPI document the server serves is valid OpenAPI 3.1, covers
every operation with its permission and statuses, and a fuzzer (schemathesis) run over
every operation against a real server finds no 5xx and no answer outside the document.

`make test` runs a bounded number of examples per operation; `make fuzz` runs many more
(REGISTRY_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import Server

FUZZ_EXAMPLES = int(os.environ.get("REGISTRY_FUZZ_EXAMPLES", "15"))
OO = str(Path(sys.executable).with_name("oo"))
OPERATIONS = {
    ("get", "/health"), ("get", "/version"), ("get", "/metrics"), ("get", "/registry-svc/openapi.json"),
    ("put", "/registry-svc/instance"), ("get", "/registry-svc/instances"), ("get", "/registry-svc/instance/pick"),
    ("get", "/registry-svc/instance/{id}"), ("delete", "/registry-svc/instance/{id}"),
    ("put", "/registry-svc/instance/{id}/heartbeat"), ("put", "/registry-svc/instance/{id}/maintenance"),
    ("put", "/registry-svc/instance/{id}/load"),
    ("put", "/registry-svc/node/maintenance"),
    ("put", "/registry-svc/definition"), ("get", "/registry-svc/definitions"),
    ("get", "/registry-svc/definition/{id}"), ("delete", "/registry-svc/definition/{id}"),
    ("post", "/registry-svc/nodes"), ("get", "/registry-svc/node/self"), ("delete", "/registry-svc/node/{url}"),
    ("post", "/registry-svc/tokens"), ("get", "/registry-svc/tokens"), ("delete", "/registry-svc/token/{id}"),
    ("get", "/registry-svc/echo"), ("post", "/registry-svc/echo"), ("put", "/registry-svc/echo"),
    ("get", "/registry-svc/routing"), ("get", "/registry-svc/routing/{slug}"),
    ("put", "/registry-svc/routing/{slug}"), ("delete", "/registry-svc/routing/{slug}"), ("get", "/registry-svc/discovery/prometheus"),
    ("post", "/v3/discovery:endpoints"), ("post", "/v3/discovery:clusters"),
    ("get", "/ui"), ("get", "/ui/{name}"), ("get", "/favicon.ico"),
    ("get", "/{slug}/{path}"), ("post", "/{slug}/{path}"), ("put", "/{slug}/{path}"), ("delete", "/{slug}/{path}"),
}  # fmt: skip


def document(server: Server) -> dict[str, Any]:
    reply = server.call("GET", "/registry-svc/openapi.json", token=None)
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    return reply.json  # type: ignore[no-any-return]


def test_the_document_is_valid_openapi_3_1(server: Server) -> None:
    doc = document(server)
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_the_document_covers_every_operation(server: Server) -> None:
    doc = document(server)
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert documented == OPERATIONS


def test_every_operation_names_its_permission_and_the_statuses_it_can_answer(server: Server) -> None:
    schemas = document(server)["components"]["schemas"]
    for path, item in document(server)["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            statuses = set(op["responses"])
            assert "503" in statuses, where
            if "security" in op:
                assert op["x-permission"] and {"401", "403"} <= statuses, where
            if "requestBody" in op:
                assert {"400", "413"} <= statuses, where
            for status, reply in op["responses"].items():
                for media in reply.get("content", {}).values():
                    ref = media["schema"].get("$ref", "")
                    assert not ref or ref.removeprefix("#/components/schemas/") in schemas, (where, status)
                if status.startswith(("4", "5")):
                    assert reply["content"]["application/json"]["schema"]["$ref"].endswith("/Error"), (where, status)
    public = {(m, p) for p, item in document(server)["paths"].items() for m, op in item.items() if "security" not in op}
    assert public == {
        ("get", "/health"), ("get", "/version"), ("get", "/metrics"), ("get", "/registry-svc/openapi.json"),
        ("get", "/registry-svc/node/self"), ("get", "/registry-svc/echo"), ("post", "/registry-svc/echo"),
        ("put", "/registry-svc/echo"), ("get", "/ui"), ("get", "/ui/{name}"), ("get", "/favicon.ico"),
        *((m, "/{slug}/{path}") for m in ("get", "post", "put", "delete")),
    }  # fmt: skip


def test_the_request_schemas_are_the_validators(server: Server) -> None:
    """The document's limits are the server's: a value at the documented maximum is taken,
    one past it is refused naming the field."""
    schema = document(server)["components"]["schemas"]["InstanceRegistration"]["properties"]["port"]
    maximum = schema["anyOf"][0]["maximum"]
    taken = server.register({"host": "limits.example", "port": maximum, "healthCheck": {"type": "none"}})
    assert taken.status in (200, 201), taken.body
    refused = server.register({"host": "limits.example", "port": maximum + 1, "healthCheck": {"type": "none"}})
    assert refused.status == 400 and refused.json["error"] == f"port: must be at most {maximum}, got {maximum + 1}"


def test_oo_prints_the_document(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "OB_SERVER_URL": server.url}
    done = subprocess.run([OO, "openapi"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == document(server)


# --- what the fuzzer found, kept as regression tests ------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [("/registry-svc/instance", 415), ("/health", 415), ("/version", 415), ("/v3/discovery:clusters", 415)],
)
def test_a_multipart_form_is_refused_on_the_registrys_routes(server: Server, path: str, status: int) -> None:
    """Robyn parsed these bodies before any handler and answered a bare 500."""
    for content_type in ("multipart/form-data", "multipart/form-data; boundary=x"):
        reply = server.call("PUT", path, raw=b"garbage", headers={"Content-Type": content_type})
        assert reply.status == status and "multipart/form-data" in reply.json["error"], reply.body


def test_a_multipart_form_without_a_boundary_is_a_400_on_the_proxy(server: Server) -> None:
    reply = server.call("POST", "/some-svc/upload", raw=b"x", headers={"Content-Type": "multipart/form-data"})
    assert reply.status == 400 and "boundary" in reply.json["error"], reply.body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"node": [None, None]}, "node"),
        ({"node": {"metadata": 5}}, "node.metadata"),
        ({"node": {"metadata": {"registry_token": 7}}}, "node.metadata.registry_token"),
        ({"resource_names": "svc"}, "resource_names"),
        ({"version_info": 3}, "version_info"),
    ],
)
def test_malformed_envoy_discovery_requests_are_a_400(server: Server, body: dict[str, Any], field: str) -> None:
    for path in ("/v3/discovery:clusters", "/v3/discovery:endpoints"):
        reply = server.call("POST", path, body)
        assert reply.status == 400 and reply.json["error"].startswith(f"{field}: "), (path, reply.body)


@pytest.mark.parametrize("query", ["index=%C2%B2", "index=1&wait=%C2%B2s", "index=%D9%A1"])
def test_non_ascii_digits_in_a_blocking_query_are_a_400(server: Server, query: str) -> None:
    """`str.isdigit()` took '²', which `int()` then refused: a 500."""
    reply = server.call("GET", f"/registry-svc/instances?{query}")
    assert reply.status == 400 and reply.json["error"].startswith(("index: ", "wait: ")), reply.body


def test_a_digit_only_version_in_another_script_does_not_break_eds(server: Server) -> None:
    reply = server.call("POST", "/v3/discovery:endpoints", {"version_info": "²", "resource_names": []})
    assert reply.status == 200, reply.body


# --- the fuzzer -------------------------------------------------------------------------


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def bounded(case: Any) -> None:
    """Keeps each request short: a blocking query waits 50 ms rather than minutes, and an
    xDS poll never names the version it has (which holds it for 3 s)."""
    if isinstance(case.query, dict) and "index" in case.query:
        case.query["wait"] = "50ms"
    if case.path.startswith("/v3/") and isinstance(case.body, dict):
        case.body.pop("version_info", None)


def fuzz(server: Server, operation: Any, mode: GenerationMode) -> None:
    """`FUZZ_EXAMPLES` requests generated for `operation` in `mode` (valid or invalid
    input), each checked against the document; raises on the first failure."""
    auth = {"Authorization": f"Bearer {server.admin_token}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
        phases=[Phase.generate], derandomize=not os.environ.get("REGISTRY_FUZZ_EXAMPLES"),
    )  # fmt: skip
    def run(case: Any) -> None:
        bounded(case)
        case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS, timeout=30)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_fuzzing_finds_no_server_error_and_no_answer_outside_the_document(server: Server, mode: GenerationMode) -> None:
    """Every operation, with generated input (the pytest plugin of schemathesis 4.32 does not
    run under pytest 9, so the operations are walked here)."""
    schema = schemathesis.openapi.from_url(f"{server.url}/registry-svc/openapi.json")
    failed: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            fuzz(server, operation, mode)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing of it can be invalid (no body, free strings)
        except Exception as e:  # one report for every operation that failed
            failed.append(f"{operation.method.upper()} {operation.path}: {e}")
    assert not failed, "\n\n".join(failed)


def test_the_fuzzed_server_sent_nothing_off_the_machine(server: Server) -> None:
    server.assert_no_traffic_left_the_machine()
