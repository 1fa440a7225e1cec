"""The OpenAPI 3.1 document of the API (`GET /registry-svc/openapi.json`, `oo openapi`).

Generated from the routes (`Route.doc`) and the pydantic models: the request schemas are
the ones that check requests (`models.py`), the reply schemas describe what is sent
(`replies.py`). Each operation names the permission it needs (`x-permission`, and which
roles hold it) and every status it can answer. The refusals a route shares with every
route of its kind are added here: 400 where it takes input, 401/403 where it needs a token,
409/507 for writes, 504 for blocking queries (cluster mode), 415 for a multipart/form-data
body (the gate's refusal), 503 everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from registry_svc import auth, models, replies
from registry_svc.about import version_info
from registry_svc.api import Doc, Route

REF = "#/components/schemas/{model}"
INDEX_HEADER = {
    "X-Registry-Index": {
        "description": "the index of the answer's data (a blocking query's `index`), or of the write",
        "schema": {"type": "integer", "minimum": 0},
    }
}
STATUS_TEXT = {
    200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified (xDS: the version you have is current)",
    400: "Bad input: the message names the field", 401: "No token, or an unknown or revoked one",
    403: "The token's role lacks the permission", 404: "Not found", 409: "Conflict with what is stored",
    413: "Body over the limit (1 MiB; the proxy's --max-proxy-body-mib)",
    415: "A multipart/form-data body: the registry's routes take JSON",
    429: "Every instance is saturated (queue over its limit, or KV cache full): ask again after Retry-After",
    502: "The upstream failed",
    508: "Loop detected: the request was already forwarded by a registry proxy",
    503: "Unavailable: starting, no routable instance, or (cluster) etcd unreachable",
    504: "Cluster mode: the replica did not reach `index` in time; the proxy: the upstream did not answer in time",
    507: "The store is full",
}  # fmt: skip
WRITES = ("put", "post", "delete")


class Operation(NamedTuple):
    """One method on one path, as documented."""

    method: str
    path: str
    permission: str
    doc: Doc


PATH = "/registry-svc/openapi.json"
SELF = Operation("get", PATH, auth.PUBLIC, Doc("This document", {200: None}))
HEALTH = Operation("get", "/health", auth.PUBLIC, Doc("Liveness, and in cluster mode the replica's state", {200: replies.Health}))  # fmt: skip
XDS = [
    Operation("post", path, auth.INSTANCE_VIEW, Doc(
        summary, {200: replies.DiscoveryResponse, 304: None}, body=models.DiscoveryRequest, body_optional=True,
    ))
    for path, summary in (
        ("/v3/discovery:endpoints", "Envoy REST EDS: endpoints of the slugs named (held up to 3 s while unchanged)"),
        ("/v3/discovery:clusters", "Envoy REST CDS: one EDS cluster per slug"),
    )
]  # fmt: skip
PROXY_DOC = Doc(
    "The built-in proxy: forwards to a routable instance of the slug (any path below it, any method); the "
    "answer is the upstream's",
    {},
    errors=(400, 404, 413, 502, 504, 508),
)
PROXY = [Operation(method, "/{slug}/{path}", auth.PUBLIC, PROXY_DOC) for method in ("get", "post", "put", "delete")]


def operations(routes: Iterable[Route]) -> list[Operation]:
    """Every operation of the API port: the routes, then those wired outside the table."""
    return [Operation(r.method, r.path, r.permission, r.doc) for r in routes] + [SELF, HEALTH, *XDS, *PROXY]


def document(ops: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `ops`."""
    schemas = _schemas(ops)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        path = _openapi_path(op.path)
        paths.setdefault(path, {})[op.method] = _operation(op, path, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "registry-svc",
            "version": str(version_info()["version"]),
            "description": "Service registry and discovery: definitions, instances with health, nodes with "
            'telemetry. Every error is `{"error": "..."}`. A token goes in `Authorization: Bearer rsv_...`. '
            "On any path the gate in front of the port may also refuse a request by its head: 400 (ambiguous "
            "framing), 405 (a method the API does not have), 408 (too slow), 431 (head over 32 KiB).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an `rsv_...` token"}},
        },
    }


def _schemas(ops: Sequence[Operation]) -> dict[str, Any]:
    used: dict[str, type[BaseModel]] = {"Error": replies.Error, "BlockingQuery": models.BlockingQuery}
    for op in ops:
        for model in (op.doc.body, op.doc.query, *op.doc.replies.values()):
            if model is not None:
                used[model.__name__] = model
    _, top = models_json_schema([(m, "validation") for m in used.values()], ref_template=REF)
    return dict(sorted(top.get("$defs", {}).items()))


def _openapi_path(path: str) -> str:
    """`/registry-svc/instance/:id` -> `/registry-svc/instance/{id}`; `*url` -> `{url}`."""
    return re.sub(r"(?<=/)[:*]([A-Za-z_]+)", r"{\1}", path)


def _operation(op: Operation, path: str, schemas: dict[str, Any]) -> dict[str, Any]:
    doc = op.doc
    out: dict[str, Any] = {
        "summary": doc.summary,
        "operationId": _operation_id(op.method, path),
        "tags": [_tag(path)],
    }
    parameters = [_path_parameter(name) for name in re.findall(r"{([A-Za-z_]+)}", path)]
    if doc.query is not None:
        parameters += _query_parameters(doc.query, schemas)
    if doc.blocking:
        parameters += _query_parameters(models.BlockingQuery, schemas)
    if parameters:
        out["parameters"] = parameters
    if doc.body is not None:
        out["requestBody"] = {
            "required": not doc.body_optional,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=doc.body.__name__)}}},
        }
    if op.permission != auth.PUBLIC:
        out["security"] = [{"bearer": []}]
        holders = [role for role, granted in auth.ROLE_PERMISSIONS.items() if op.permission in granted]
        out["x-permission"] = op.permission
        out["description"] = f"Needs `{op.permission}` (roles: {', '.join(holders)})."
    out["responses"] = _responses(op, bool(parameters) or doc.body is not None)
    return out


def _responses(op: Operation, takes_input: bool) -> dict[str, Any]:
    doc = op.doc
    responses: dict[str, Any] = {}
    for status, model in sorted(doc.replies.items()):
        reply: dict[str, Any] = {"description": STATUS_TEXT.get(status, "OK")}
        if model is not None:
            reply["content"] = {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}
        elif status == 200:
            reply["content"] = {media: {"schema": {"type": "string"}} for media in doc.content_types}
        if status < 300 and _carries_index(op):
            reply["headers"] = INDEX_HEADER
        responses[str(status)] = reply
    if not doc.replies:
        responses["default"] = {"description": "the upstream's answer, passed through"}
    errors = set(doc.errors) | {503}
    if op.path.startswith("/{slug}"):
        errors.add(400)  # a multipart/form-data body without a boundary
    else:
        errors.add(415)
    if takes_input:
        errors.add(400)
    if doc.body is not None:
        errors.add(413)
    if op.permission != auth.PUBLIC:
        errors |= {401, 403}
    if op.method in WRITES and op.permission != auth.PUBLIC:
        errors |= {409, 507}
    if doc.blocking:
        errors.add(504)
    error = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
    for status in sorted(errors):
        responses[str(status)] = {"description": STATUS_TEXT[status], "content": error}
    return responses


def _carries_index(op: Operation) -> bool:
    if op.doc.index is not None:
        return op.doc.index
    return op.doc.blocking or (op.method in WRITES and op.permission != auth.PUBLIC)


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = schemas[model.__name__]
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        prop = _not_null(prop)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            parameter["description"] = prop["description"]
        out.append(parameter)
    return out


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query value is never null: an optional parameter is left out instead."""
    branches = [b for b in schema.get("anyOf", []) if b != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default") or (k == "default" and v is not None)}
    return {**branches[0], **rest} if len(branches) == 1 else rest


def _path_parameter(name: str) -> dict[str, Any]:
    described = {
        "id": "the record's id",
        "url": "the node's URL (percent-encoded, or as is)",
        "name": "a file of the dashboard",
        "slug": "the service",
        "path": "the rest of the path, forwarded below the instance's own path",
    }
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": described[name]}


def _operation_id(method: str, path: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", path.replace("registry-svc", ""))
    return method + "".join(word[:1].upper() + word[1:] for word in words)


def _tag(path: str) -> str:
    if path.startswith("/v3/") or "discovery" in path:
        return "discovery"
    if path.startswith("/{slug}"):
        return "proxy"
    for tag in ("instance", "definition", "node", "token"):
        if f"/{tag}" in path:
            return tag + "s"
    return "server"
