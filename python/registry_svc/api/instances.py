"""Instances: register (upsert), list with filters, get, delete.

Registration is an optimistic read-modify-write: read the instance that holds the URL (or
id), merge, and write with the version read as precondition. The store's unique URL index
and version check turn a concurrent registration into a retry, never into a duplicate or
a lost update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from robyn import Response

from registry_svc import _core, auth
from registry_svc import validation as v
from registry_svc.api import Call, Route
from registry_svc.clock import utc_now
from registry_svc.errors import ApiError
from registry_svc.health import HEALTH_CHECK_DEFAULTS
from registry_svc.http import json_response, no_content, path_param, put_async, query_params, raw_json, read_json_object

INSTANCES = "instances"
STATUSES = ("Unknown", "Healthy", "Unhealthy", "Starting", "Stopping")
RESERVED_SLUGS = frozenset({"registry-svc", "health", "metrics"})
FIELD_ORDER = (
    "id", "url", "slug", "scheme", "host", "ip", "port", "path", "deploymentId", "nodeUrl", "tags",
    "metadata", "weight", "zone", "status", "statusReason", "lastHeartbeat", "registeredAt", "healthCheck",
)  # fmt: skip
# Read-only fields are accepted and ignored, so a fetched instance can be sent back as is.
ACCEPTED = frozenset(FIELD_ORDER)
HEALTH_CHECK_TYPES = ("tcp", "http", "ttl", "none")
# Query parameter -> indexed field of the store.
FILTERS = {
    "id": "id", "slug": "slug", "host": "host", "ip": "ip", "deploymentId": "deploymentId",
    "nodeUrl": "nodeUrl", "status": "status", "tag": "tags", "zone": "zone",
}  # fmt: skip
MAX_ATTEMPTS = 8


def parse_health_check(value: Any) -> dict[str, Any]:
    """A health check object with defaults filled in."""
    body = v.obj(value, "healthCheck")
    v.reject_unknown(body, HEALTH_CHECK_DEFAULTS, "healthCheck")
    check = dict(HEALTH_CHECK_DEFAULTS)
    if "type" in body:
        if body["type"] not in HEALTH_CHECK_TYPES:
            raise v.fail("healthCheck.type", f"must be one of {', '.join(HEALTH_CHECK_TYPES)}")
        check["type"] = body["type"]
    if "path" in body:
        path = v.string(body["path"], "healthCheck.path", max_len=1024)
        if not path.startswith("/"):
            raise v.fail("healthCheck.path", "must start with '/'")
        check["path"] = path
    limits = {
        "intervalSeconds": (1, 3600),
        "timeoutSeconds": (1, 300),
        "healthyThreshold": (1, 100),
        "unhealthyThreshold": (1, 100),
        "deregisterAfterSeconds": (0, 30 * 86400),
    }
    for key, (low, high) in limits.items():
        if key in body:
            check[key] = v.integer(body[key], f"healthCheck.{key}", low, high)
    if check["timeoutSeconds"] > check["intervalSeconds"]:
        if "timeoutSeconds" in body:
            raise v.fail("healthCheck.timeoutSeconds", "must not exceed intervalSeconds")
        check["timeoutSeconds"] = check["intervalSeconds"]  # the default follows a short interval
    return check


def parse_address(body: dict[str, Any]) -> dict[str, Any]:
    """The address fields, from `url` or composed from scheme/host/ip/port/path.

    Parts given beside a `url` must agree with it.
    """
    given: dict[str, Any] = {}
    if body.get("scheme") is not None:
        if body["scheme"] not in ("http", "https"):
            raise v.fail("scheme", "must be 'http' or 'https'")
        given["scheme"] = body["scheme"]
    if body.get("host") is not None:
        given["host"] = v.hostname(body["host"], "host")
    if body.get("ip") is not None:
        given["ip"] = v.ip_address(body["ip"], "ip")
    if body.get("port") is not None:
        given["port"] = v.port(body["port"], "port")
    if body.get("path") is not None:
        path = v.string(body["path"], "path", max_len=1024)
        if not path.startswith("/"):
            raise v.fail("path", "must start with '/'")
        given["path"] = path

    if body.get("url") is not None:
        url = v.http_url(body["url"], "url")
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise v.fail("url", "must not have a query string or fragment")
        name = parts.hostname or ""
        derived: dict[str, Any] = {
            "scheme": parts.scheme,
            "host": None if v.is_ip(name) else name,
            "ip": name if v.is_ip(name) else given.get("ip"),
            "port": parts.port,
            "path": parts.path or None,
        }
        for key in ("scheme", "host", "port", "path"):
            if key in given and given[key] != derived[key]:
                raise v.fail(key, f"'{given[key]}' does not match url '{url}'")
        if "ip" in given and v.is_ip(name) and given["ip"] != derived["ip"]:
            raise v.fail("ip", f"'{given['ip']}' does not match url '{url}'")
        return {"url": url, **derived}

    if "host" not in given and "ip" not in given:
        raise v.fail("url", "required (or give host or ip, with scheme, port and path)")
    scheme = given.get("scheme", "http")
    host = given.get("host") or given["ip"]
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    url = f"{scheme}://{host}"
    if "port" in given:
        url += f":{given['port']}"
    url += given.get("path", "")
    return {
        "url": url,
        "scheme": scheme,
        "host": given.get("host"),
        "ip": given.get("ip"),
        "port": given.get("port"),
        "path": given.get("path"),
    }


def parse_registration(body: dict[str, Any]) -> dict[str, Any]:
    """The writable fields the body sets (address fields always), validated."""
    v.reject_unknown(body, ACCEPTED, "")
    fields = parse_address(body)
    if "id" in body and body["id"] is not None:
        fields["id"] = v.record_id(body["id"])
    if "slug" in body and body["slug"] is not None:
        fields["slug"] = v.slug(body["slug"])
        if fields["slug"] in RESERVED_SLUGS:
            raise v.fail("slug", f"'{fields['slug']}' is reserved for built-in routes")
    for key in ("deploymentId", "zone"):
        if key in body:
            fields[key] = v.optional_string(body[key], key, max_len=128)
    if "nodeUrl" in body:
        fields["nodeUrl"] = None if body["nodeUrl"] is None else v.http_url(body["nodeUrl"], "nodeUrl")
    if "tags" in body:
        fields["tags"] = [] if body["tags"] is None else v.string_list(body["tags"], "tags")
    if "metadata" in body:
        fields["metadata"] = {} if body["metadata"] is None else v.string_map(body["metadata"], "metadata")
    if "weight" in body:
        fields["weight"] = 100 if body["weight"] is None else v.integer(body["weight"], "weight", 1, 1000)
    if body.get("status") is not None:
        if body["status"] not in STATUSES:
            raise v.fail("status", f"must be one of {', '.join(STATUSES)}")
        fields["status"] = body["status"]
    if "healthCheck" in body:
        fields["healthCheck"] = parse_health_check({} if body["healthCheck"] is None else body["healthCheck"])
    return fields


def owning_slug(call: Call, requested: str | None) -> str | None:
    """The slug a registration is made under: a service token's own, or what an admin sets."""
    caller = call.caller
    if caller.role == "service":
        if requested is not None and requested != caller.slug:
            raise ApiError(403, f"a token of slug '{caller.slug}' cannot register instances of slug '{requested}'")
        return caller.slug
    return requested


def ordered(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in FIELD_ORDER}


def merge(
    existing: dict[str, Any] | None, fields: dict[str, Any], instance_id: str, slug: str | None, node_url: str
) -> dict[str, Any]:
    """The record after a registration: existing values, overridden by what was sent."""
    now = utc_now()
    record: dict[str, Any] = existing.copy() if existing else {
        "tags": [], "metadata": {}, "weight": 100, "status": "Unknown", "nodeUrl": node_url,
        "healthCheck": dict(HEALTH_CHECK_DEFAULTS), "registeredAt": now,
    }  # fmt: skip
    record.update(fields)
    record["id"] = instance_id
    record["slug"] = slug
    record["lastHeartbeat"] = now
    if "status" in fields:
        record["statusReason"] = "set at registration"
    return ordered(record)


def load(store: _core.Store, instance_id: str) -> tuple[int, dict[str, Any]] | None:
    found = store.get(INSTANCES, instance_id)
    return None if found is None else (found[0], orjson.loads(found[1]))


@dataclass(frozen=True)
class Plan:
    """One attempt at a registration: the record to write and the version it expects."""

    instance_id: str
    record: dict[str, Any]
    expect_version: int
    created: bool

    def response(self, index: int) -> Response:
        return json_response(201 if self.created else 200, {"instance": self.record}, index)


def plan_registration(call: Call, fields: dict[str, Any]) -> Plan:
    """Reads the instance that holds the URL (or id) and merges the registration into it."""
    store = call.ctx.store
    holders = store.ids_by(INSTANCES, "url", fields["url"])
    by_url = load(store, holders[0]) if holders else None
    if "id" in fields:
        current = load(store, fields["id"])
        if by_url is not None and by_url[1]["id"] != fields["id"]:
            raise ApiError(409, f"url '{fields['url']}' is already registered as instance '{by_url[1]['id']}'")
    else:
        current = by_url
    existing = current[1] if current else None
    requested = fields.get("slug", existing.get("slug") if existing and call.caller.role != "service" else None)
    slug = owning_slug(call, requested)
    if existing is not None and existing.get("slug") != slug:
        owner = existing.get("slug")
        raise ApiError(409, f"instance '{existing['id']}' ({existing['url']}) belongs to slug '{owner}', not '{slug}'")
    instance_id = existing["id"] if existing else fields.get("id") or new_instance_id()
    record = merge(existing, fields, instance_id, slug, call.ctx.settings.self_url)
    return Plan(instance_id, record, current[0] if current else 0, existing is None)


RETRY = (_core.ConflictError, _core.VersionMismatchError)  # someone wrote the URL or id meanwhile
GAVE_UP = "the instance kept changing concurrently; retry the registration"


async def register(call: Call) -> Response:
    """Register or re-register. Runs on the event loop and awaits the durable write instead
    of holding a thread, so many registrations share one group commit."""
    fields = parse_registration(read_json_object(call.request))
    for _ in range(MAX_ATTEMPTS):
        plan = plan_registration(call, fields)
        try:
            index = await put_async(
                call.ctx.store, INSTANCES, plan.instance_id, orjson.dumps(plan.record), plan.expect_version
            )
        except RETRY:
            continue
        return plan.response(index)
    raise ApiError(409, GAVE_UP)


def new_instance_id() -> str:
    import secrets

    return "inst_" + secrets.token_hex(8)


def list_instances(call: Call) -> Response:
    filters: list[tuple[str, str]] = []
    for name, values in query_params(call.request).items():
        field = FILTERS.get(name)
        if field is None:
            raise v.fail(name, f"unknown filter; use one of {', '.join(FILTERS)}")
        filters.extend((field, value) for value in values)
    if not call.caller.sees_every_slug:
        filters.append(("slug", call.caller.slug or ""))
    index, body = call.ctx.store.list_json(INSTANCES, filters, INSTANCES)
    return raw_json(200, body, index)


def visible(call: Call, instance_id: str) -> tuple[int, bytes]:
    """The stored instance, or 404 if it does not exist or belongs to another slug."""
    found = call.ctx.store.get(INSTANCES, instance_id)
    if found is not None and not call.caller.sees_every_slug and orjson.loads(found[1]).get("slug") != call.caller.slug:
        found = None
    if found is None:
        raise ApiError(404, f"instance '{instance_id}' not found")
    return found


def get_instance(call: Call) -> Response:
    _version, body = visible(call, path_param(call.request, "id"))
    return raw_json(200, b'{"instance":' + body + b"}", call.ctx.store.index())


def heartbeat(call: Call) -> Response:
    """Renews an instance's heartbeat; `{"status": ...}` in the body also sets its status.
    A `ttl` instance that heartbeats without a status becomes Healthy."""
    instance_id = path_param(call.request, "id")
    body = read_json_object(call.request, allow_empty=True)
    v.reject_unknown(body, ("status",), "")
    status = body.get("status")
    if status is not None and status not in STATUSES:
        raise v.fail("status", f"must be one of {', '.join(STATUSES)}")
    store = call.ctx.store
    for _ in range(MAX_ATTEMPTS):
        version, raw = visible(call, instance_id)
        record = orjson.loads(raw)
        record["lastHeartbeat"] = utc_now()
        if status is not None:
            record["status"], record["statusReason"] = status, "set by heartbeat"
        elif record["healthCheck"]["type"] == "ttl" and record["status"] not in ("Starting", "Stopping"):
            record["status"], record["statusReason"] = "Healthy", "TTL heartbeat received"
        try:
            index = store.put(INSTANCES, instance_id, orjson.dumps(record), version)
        except _core.VersionMismatchError:
            continue
        return json_response(200, {"instance": record}, index)
    raise ApiError(409, "the instance kept changing concurrently; retry the heartbeat")


def delete_instance(call: Call) -> Response:
    instance_id = path_param(call.request, "id")
    try:
        index = call.ctx.store.delete(INSTANCES, instance_id)
    except _core.NotFoundError:
        raise ApiError(404, f"instance '{instance_id}' not found") from None
    return no_content(index)


ROUTES = [
    Route("put", "/registry-svc/instance", register, auth.INSTANCE_EDIT),
    Route("get", "/registry-svc/instances", list_instances, auth.INSTANCE_VIEW),
    Route("get", "/registry-svc/instance/:id", get_instance, auth.INSTANCE_VIEW),
    Route("put", "/registry-svc/instance/:id/heartbeat", heartbeat, auth.INSTANCE_EDIT),
    Route("delete", "/registry-svc/instance/:id", delete_instance, auth.INSTANCE_DELETE),
]
