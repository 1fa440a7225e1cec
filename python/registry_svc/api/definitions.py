"""Service definitions: validated templates (image or repository, ports, envars, API specs)."""

from __future__ import annotations

from typing import Any

import orjson
from robyn import Response

from registry_svc import _core, auth, models, replies, watch
from registry_svc.api import Call, Doc, Route
from registry_svc.errors import ApiError
from registry_svc.http import json_response, no_content, path_param, query_params, raw_json, read_json_object

DEFINITIONS = "definitions"


def save_definition(call: Call) -> Response:
    """Saves a definition; with `?dryRun=true`, only validates it (200, nothing written)."""
    dry_run = models.parse_query(models.DryRunQuery, query_params(call.request)).dryRun == "true"
    definition = parse_definition(read_json_object(call.request))
    if dry_run:
        return json_response(200, {"definition": definition, "dryRun": True})
    store = call.ctx.store
    existed = store.get(DEFINITIONS, definition["id"]) is not None
    index = store.put(DEFINITIONS, definition["id"], orjson.dumps(definition))
    return json_response(200 if existed else 201, {"definition": definition}, index)


async def list_definitions(call: Call) -> Response:
    stamp = watch.collection_stamp(call.ctx.store, DEFINITIONS)
    await watch.wait_if_asked(call.ctx.watch, query_params(call.request), stamp, call.holder)
    index, body = call.ctx.store.list_json(DEFINITIONS, [], DEFINITIONS)
    return raw_json(200, body, index)


async def get_definition(call: Call) -> Response:
    definition_id = path_param(call.request, "id")
    stamp = watch.record_stamp(call.ctx.store, DEFINITIONS, definition_id)
    await watch.wait_if_asked(call.ctx.watch, query_params(call.request), stamp, call.holder)
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


def parse_definition(body: dict[str, Any]) -> dict[str, Any]:
    """The definition of a `{"definition": {...}}` body, validated, in canonical field
    order with unset fields left out; 400 names the first bad field."""
    definition = models.parse(models.SaveDefinition, body).definition
    return definition.model_dump(exclude_none=True)


ROUTES = [
    Route("put", "/registry-svc/definition", save_definition, auth.DEFINITION_EDIT, Doc(
        "Save a service definition (201 new, 200 replaced); with dryRun=true only validate it (200, `dryRun: true`)",
        {200: replies.DefinitionReply, 201: replies.DefinitionReply}, body=models.SaveDefinition,
        query=models.DryRunQuery,
    )),
    Route("get", "/registry-svc/definitions", list_definitions, auth.DEFINITION_VIEW, Doc(
        "List service definitions", {200: replies.DefinitionList}, blocking=True,
    )),
    Route("get", "/registry-svc/definition/:id", get_definition, auth.DEFINITION_VIEW, Doc(
        "One service definition", {200: replies.DefinitionReply}, errors=(404,), blocking=True,
    )),
    Route("delete", "/registry-svc/definition/:id", delete_definition, auth.DEFINITION_DELETE, Doc(
        "Delete a service definition", {204: None}, errors=(404,),
    )),
]  # fmt: skip
