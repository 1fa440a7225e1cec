"""Service definitions: validated templates (image or repository, ports, envars, API specs)."""

from __future__ import annotations

import re
from typing import Any

import orjson
from robyn import Response

from registry_svc import _core, auth, watch
from registry_svc import validation as v
from registry_svc.api import Call, Route
from registry_svc.errors import ApiError
from registry_svc.http import json_response, no_content, path_param, query_params, raw_json, read_json_object

DEFINITIONS = "definitions"
_DEFINITION_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
FIELD_ORDER = ("id", "image", "repository", "ports", "envars", "apiSpecs", "clients")


def _ports(value: Any, field: str) -> list[int]:
    return [v.port(p, f"{field}[{i}]") for i, p in enumerate(v.array(value, field, max_items=64))]


def _items(value: Any, field: str, parse: Any) -> list[dict[str, Any]]:
    """Parses each object of the array `value` with `parse(obj, name)`."""
    return [parse(v.obj(item, f"{field}[{i}]"), f"{field}[{i}]") for i, item in enumerate(v.array(value, field))]


def _required(body: dict[str, Any], key: str, where: str) -> Any:
    if body.get(key) is None:
        raise v.fail(f"{where}.{key}", "required")
    return body[key]


def _image(body: dict[str, Any], where: str) -> dict[str, Any]:
    v.reject_unknown(body, ("name", "internalPorts"), where)
    image: dict[str, Any] = {"name": v.string(_required(body, "name", where), f"{where}.name", max_len=512)}
    if body.get("internalPorts") is not None:
        image["internalPorts"] = _ports(body["internalPorts"], f"{where}.internalPorts")
    return image


def _repository(body: dict[str, Any], where: str) -> dict[str, Any]:
    v.reject_unknown(body, ("url", "version", "buildContext", "containerFile", "internalPorts"), where)
    repo: dict[str, Any] = {"url": v.string(_required(body, "url", where), f"{where}.url", max_len=2048)}
    for key in ("version", "buildContext", "containerFile"):
        if body.get(key) is not None:
            repo[key] = v.string(body[key], f"{where}.{key}", max_len=1024)
    if body.get("internalPorts") is not None:
        repo["internalPorts"] = _ports(body["internalPorts"], f"{where}.internalPorts")
    return repo


def _port_mapping(body: dict[str, Any], where: str) -> dict[str, Any]:
    v.reject_unknown(body, ("internal", "host"), where)
    return {
        "internal": v.port(_required(body, "internal", where), f"{where}.internal"),
        "host": v.port(_required(body, "host", where), f"{where}.host"),
    }


def _envar(body: dict[str, Any], where: str) -> dict[str, Any]:
    v.reject_unknown(body, ("key", "value"), where)
    value = body.get("value", "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # YAML turns `value: 32` into a number; an env var is text.
    return {
        "key": v.string(_required(body, "key", where), f"{where}.key", max_len=256),
        "value": v.string(value, f"{where}.value", max_len=8192, allow_empty=True),
    }


def _api_spec(body: dict[str, Any], where: str) -> dict[str, Any]:
    v.reject_unknown(body, ("url", "protocolType", "version", "metadata"), where)
    spec: dict[str, Any] = {"url": v.string(_required(body, "url", where), f"{where}.url", max_len=2048)}
    for key in ("protocolType", "version"):
        if body.get(key) is not None:
            spec[key] = v.string(body[key], f"{where}.{key}", max_len=256)
    if body.get("metadata") is not None:
        spec["metadata"] = v.string_map(body["metadata"], f"{where}.metadata")
    return spec


def _client(body: dict[str, Any], where: str) -> dict[str, Any]:
    v.reject_unknown(body, ("language", "url"), where)
    return {
        "language": v.string(_required(body, "language", where), f"{where}.language", max_len=64),
        "url": v.string(_required(body, "url", where), f"{where}.url", max_len=2048),
    }


def parse_definition(body: dict[str, Any]) -> dict[str, Any]:
    """A validated definition in canonical field order; 400 names the first bad field."""
    v.reject_unknown(body, FIELD_ORDER, "definition")
    raw_id = body.get("id")
    if raw_id is None or raw_id == "":
        raise v.fail("definition.id", "required")
    definition_id = v.string(raw_id, "definition.id", max_len=63)
    if not _DEFINITION_ID.match(definition_id):
        raise v.fail(
            "definition.id",
            "must be lowercase letters, digits and '-', starting and ending with a letter or digit",
        )
    has_image, has_repo = body.get("image") is not None, body.get("repository") is not None
    if has_image == has_repo:
        raise v.fail("definition.image", "exactly one of 'image' or 'repository' is required")
    out: dict[str, Any] = {"id": definition_id}
    if has_image:
        out["image"] = _image(v.obj(body["image"], "definition.image"), "definition.image")
    else:
        out["repository"] = _repository(v.obj(body["repository"], "definition.repository"), "definition.repository")
    parsers = {"ports": _port_mapping, "envars": _envar, "apiSpecs": _api_spec, "clients": _client}
    for key, parse in parsers.items():
        if body.get(key) is not None:
            out[key] = _items(body[key], f"definition.{key}", parse)
    return out


def save_definition(call: Call) -> Response:
    """Saves a definition; with `?dryRun=true`, only validates it (200, nothing written)."""
    params = query_params(call.request)
    for name in params:
        if name != "dryRun":
            raise v.fail(name, "unknown parameter; use dryRun=true to validate without saving")
    dry_run = params.get("dryRun", ["false"])[-1]
    if dry_run not in ("true", "false"):
        raise v.fail("dryRun", "must be true or false")
    body = read_json_object(call.request)
    v.reject_unknown(body, ("definition",), "")
    if body.get("definition") is None:
        raise v.fail("definition", 'required: send {"definition": {...}}')
    definition = parse_definition(v.obj(body["definition"], "definition"))
    if dry_run == "true":
        return json_response(200, {"definition": definition, "dryRun": True})
    store = call.ctx.store
    existed = store.get(DEFINITIONS, definition["id"]) is not None
    index = store.put(DEFINITIONS, definition["id"], orjson.dumps(definition))
    return json_response(200 if existed else 201, {"definition": definition}, index)


async def list_definitions(call: Call) -> Response:
    stamp = watch.collection_stamp(call.ctx.store, DEFINITIONS)
    await watch.wait_if_asked(call.ctx.watch, query_params(call.request), stamp)
    index, body = call.ctx.store.list_json(DEFINITIONS, [], DEFINITIONS)
    return raw_json(200, body, index)


async def get_definition(call: Call) -> Response:
    definition_id = path_param(call.request, "id")
    stamp = watch.record_stamp(call.ctx.store, DEFINITIONS, definition_id)
    await watch.wait_if_asked(call.ctx.watch, query_params(call.request), stamp)
    found = call.ctx.store.get(DEFINITIONS, definition_id)
    if found is None:
        raise ApiError(404, f"definition '{definition_id}' not found")
    return raw_json(200, b'{"definition":' + found[1] + b"}", found[0])


def delete_definition(call: Call) -> Response:
    definition_id = path_param(call.request, "id")
    try:
        index = call.ctx.store.delete(DEFINITIONS, definition_id)
    except _core.NotFoundError:
        raise ApiError(404, f"definition '{definition_id}' not found") from None
    return no_content(index)


ROUTES = [
    Route("put", "/registry-svc/definition", save_definition, auth.DEFINITION_EDIT),
    Route("get", "/registry-svc/definitions", list_definitions, auth.DEFINITION_VIEW),
    Route("get", "/registry-svc/definition/:id", get_definition, auth.DEFINITION_VIEW),
    Route("delete", "/registry-svc/definition/:id", delete_definition, auth.DEFINITION_DELETE),
]
