"""Nodes: list with filters, this server's own node, removal by URL."""

from __future__ import annotations

import re
from typing import Any

import orjson
from robyn import Response

from registry_svc import auth, models, nodes, records, replies, watch
from registry_svc.api import Call, Doc, Route
from registry_svc.api.instances import INSTANCES, log_maintenance, maintenance_of
from registry_svc.errors import ApiError
from registry_svc.http import json_response, no_content, path_param, query_params, raw_json, read_json_object

# A proxy in front may merge the '//' of an unencoded URL in the path; put it back.
_MERGED_SCHEME = re.compile(r"^(https?):/(?!/)")


GPU_FILTERS = ("gpuFreeMiB", "gpuMaxUtilization", "gpuCount")


def gpu_free_mib(gpu: dict[str, Any]) -> int | None:
    """A GPU's free memory in MiB: total less used and driver-reserved (None: unknown)."""
    total, used = gpu.get("memoryTotal"), gpu.get("memoryUsage")
    if total is None or used is None:
        return None
    return int(total) - int(used) - int(gpu.get("memoryReserved") or 0)


def _gpu_fits(gpu: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Whether one GPU meets the free-memory and utilisation filters (unknown fails)."""
    if "gpuFreeMiB" in filters:
        free = gpu_free_mib(gpu)
        if free is None or free < filters["gpuFreeMiB"]:
            return False
    if "gpuMaxUtilization" in filters:
        busy = gpu.get("gpuUtilization")
        if busy is None or busy > filters["gpuMaxUtilization"]:
            return False
    return True


def _matches(node: dict[str, Any], filters: dict[str, Any]) -> bool:
    if "ids" in filters and node.get("id") not in filters["ids"]:
        return False
    for key in ("region", "availabilityZone"):
        if key in filters and node.get(key) != filters[key]:
            return False
    if "hasGpu" in filters and bool(node.get("gpus")) != filters["hasGpu"]:
        return False
    if any(key in filters for key in GPU_FILTERS):
        fitting = sum(1 for gpu in node.get("gpus") or [] if _gpu_fits(gpu, filters))
        return fitting >= int(filters.get("gpuCount", 1))
    return True


async def list_nodes(call: Call) -> Response:
    stamp = watch.collection_stamp(call.ctx.store, nodes.NODES)
    await watch.wait_if_asked(call.ctx.watch, query_params(call.request), stamp, call.holder)
    body = models.parse(models.NodeFilter, read_json_object(call.request, allow_empty=True))
    filters: dict[str, Any] = body.model_dump(exclude_none=True)
    if "ids" in filters:
        filters["ids"] = set(filters["ids"])
    store = call.ctx.store
    if not filters:
        index, raw = store.list_json(nodes.NODES, [], "nodes")
        return raw_json(200, raw, index)
    index = store.collection_index(nodes.NODES)  # read first: never older than the list
    _, records = store.list(nodes.NODES)
    # Stored bytes are embedded as they are; only the filter fields are parsed.
    chosen = [orjson.Fragment(r) for r in records if _matches(orjson.loads(r), filters)]
    return json_response(200, {"nodes": chosen}, index)


async def node_self(call: Call) -> Response:
    stamp = watch.collection_stamp(call.ctx.store, nodes.NODES)
    await watch.wait_if_asked(call.ctx.watch, query_params(call.request), stamp, call.holder)
    found = nodes.find_by_url(call.ctx.store, call.ctx.settings.self_url)
    if found is None:
        raise ApiError(
            404,
            f"this node ({call.ctx.settings.self_url}) is not registered; it registers again at its next heartbeat",
        )
    return json_response(200, {"node": found[1]}, found[0])


def node_maintenance(call: Call) -> Response:
    """Maintenance for every instance on a node (by the node's id or URL). Turning it off
    clears what the node's maintenance set, not an instance's own."""
    body = models.parse(models.NodeMaintenance, read_json_object(call.request))
    store = call.ctx.store
    by_id = store.get(nodes.NODES, body.node)
    found = (by_id[0], orjson.loads(by_id[1])) if by_id is not None else nodes.find_by_url(store, body.node)
    if found is None:
        raise ApiError(404, f"no node with id or url '{body.node}'")
    node = found[1]
    changed = []
    index = store.collection_index(INSTANCES)
    for instance_id in store.ids_by(INSTANCES, "nodeUrl", node["url"]):

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None:
                return None
            held = current.get("maintenance")
            if body.enable and not held:
                current["maintenance"] = maintenance_of(call, True, body.reason, node["id"])
            elif not body.enable and held and held.get("node") == node["id"]:
                current["maintenance"] = None
            else:
                return None  # nothing to change
            return current

        applied = records.update(store, INSTANCES, instance_id, change, "the instance")
        if applied.wrote and applied.record is not None and applied.index is not None:
            index = max(index, applied.index)
            changed.append(applied.record["id"])
            log_maintenance(applied.record)
    return json_response(200, {"node": node["id"], "maintenance": body.enable, "instances": changed}, index)


def delete_node(call: Call) -> Response:
    url = _MERGED_SCHEME.sub(r"\1://", path_param(call.request, "url"))
    found = nodes.find_by_url(call.ctx.store, url)
    if found is None:
        raise ApiError(404, f"no node with url '{url}'")
    index = call.ctx.store.delete(nodes.NODES, found[1]["id"])
    return no_content(index)


ROUTES = [
    Route("post", "/registry-svc/nodes", list_nodes, auth.NODE_VIEW, Doc(
        "List nodes with their telemetry; every filter given must match", {200: replies.NodeList},
        body=models.NodeFilter, body_optional=True, blocking=True,
    )),
    # Public: this node's own record only (its URL, zone, usage and GPUs), what any
    # client that can reach the port learns anyway; other nodes need node:view.
    Route("get", "/registry-svc/node/self", node_self, auth.PUBLIC, Doc(
        "This server's own node", {200: replies.NodeReply}, errors=(404,), blocking=True,
    )),
    Route("put", "/registry-svc/node/maintenance", node_maintenance, auth.ADMIN, Doc(
        "Maintenance for every instance on a node (`enable: false` clears what this set)",
        {200: replies.NodeMaintenanceReply}, body=models.NodeMaintenance, errors=(404,),
    )),
    Route("delete", "/registry-svc/node/*url", delete_node, auth.NODE_DELETE, Doc(
        "Remove a node by its URL (it comes back at its next heartbeat if it still runs)", {204: None},
        errors=(404,),
    )),
]  # fmt: skip
