"""Instances: register (upsert), list with filters, get, delete.

Registration is an optimistic read-modify-write: read the instance that holds the URL (or
id), merge, and write with the version read as precondition. The store's unique URL index
and version check turn a concurrent registration into a retry, never into a duplicate or
a lost update.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from robyn import Response

from registry_svc import _core, addresses, auth, models, records, replies, status, watch
from registry_svc.api import Call, Doc, Route
from registry_svc.clock import utc_now
from registry_svc.errors import ApiError, field_error
from registry_svc.http import json_response, no_content, path_param, put_async, query_params, raw_json, read_json_object

INSTANCES = "instances"
log = logging.getLogger("registry_svc")
RESERVED_SLUGS = frozenset(_core.RESERVED_SLUGS)  # the gates' table (rust/rules.rs)
FIELD_ORDER = (
    "id", "url", "slug", "scheme", "host", "ip", "port", "path", "deploymentId", "nodeUrl", "tags",
    "metadata", "weight", "zone", "status", "statusReason", "details", "lastHeartbeat", "registeredAt",
    "healthCheck", "checks", "checkStatus", "maintenance",
)  # fmt: skip
# Fields a record has only once they were set (a model server's): after the others.
OPTIONAL_FIELDS = ("models", "load")


# Objects a re-registration merges into what is stored (RFC 7396), rather than replaces.
MERGED = {"healthCheck": models.HEALTH_CHECK_DEFAULTS, "metadata": {}}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: `patch` applied to `target`. An object merges member by member, a null
    member removes that member, and anything else replaces the target."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _without_nulls(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """The body with the null members of the merged objects taken out (for validation),
    and those members' names."""
    removed: dict[str, set[str]] = {}
    for key in MERGED:
        if isinstance(raw.get(key), dict):
            removed[key] = {k for k, v in raw[key].items() if v is None}
            raw = {**raw, key: {k: v for k, v in raw[key].items() if v is not None}}
    return raw, removed


def parse_registration(raw: dict[str, Any]) -> dict[str, Any]:
    """The writable fields the body sets (address fields always), validated. A null is
    the field's default, except for fields that are null when unset. `healthCheck` and
    `metadata` are merge patches (RFC 7396), applied to what is stored by `merge`."""
    raw, removed = _without_nulls(raw)
    body = models.parse(models.InstanceRegistration, raw)
    fields = addresses.parse_address(body)
    sent = body.model_fields_set
    if body.id is not None:
        fields["id"] = body.id
    if body.slug is not None:
        if body.slug in RESERVED_SLUGS:
            raise field_error("slug", f"'{body.slug}' is reserved for built-in routes")
        fields["slug"] = body.slug
    for key in ("deploymentId", "zone", "nodeUrl"):
        if key in sent:
            fields[key] = getattr(body, key)
    if "tags" in sent:
        fields["tags"] = body.tags or []
    if "metadata" in sent:
        patch = None if body.metadata is None else dict(body.metadata)
        fields["metadata"] = None if patch is None else {**patch, **dict.fromkeys(removed.get("metadata", ()))}
    if "weight" in sent:
        fields["weight"] = 100 if body.weight is None else body.weight
    if body.status is not None:
        fields["status"] = body.status
    if "healthCheck" in sent:
        check = body.healthCheck
        patch = None if check is None else check.model_dump(include=check.model_fields_set)
        fields["healthCheck"] = None if patch is None else {**patch, **dict.fromkeys(removed.get("healthCheck", ()))}
    if "models" in sent:
        fields["models"] = body.models or None
    if "load" in sent:
        fields["load"] = None if body.load is None else body.load.model_dump(exclude=set(models.LOAD_READING))
    if "checks" in sent:
        fields["checks"] = models.named_checks(body.checks) if body.checks else None
        if fields["checks"]:
            if (fields.get("healthCheck") or {}).get("type", "none") != "none":
                raise field_error(
                    "checks", "give either healthCheck or checks (healthCheck is one more check: put it in checks)"
                )
            fields["healthCheck"] = {"type": "none"}  # the checks judge the instance
    return fields


def merged_objects(record: dict[str, Any], fields: dict[str, Any]) -> None:
    """Applies the merge patches of `fields` to `record`'s `healthCheck` and `metadata`:
    a sent member replaces the stored one, a null member goes back to its default, and a
    null object to all defaults. A check's timeout that no longer fits a shorter interval
    follows it (as when omitted); one sent that does not fit is a 400."""
    for key, defaults in MERGED.items():
        if key not in fields:
            continue
        patch = fields[key]
        stored = {**defaults, **(record.get(key) or {})} if key == "healthCheck" else record.get(key) or {}
        value = dict(defaults) if patch is None else merge_patch(stored, patch)
        if key == "healthCheck":
            value = {**defaults, **value}
            if value["timeoutSeconds"] > value["intervalSeconds"]:
                if patch and patch.get("timeoutSeconds") is not None:
                    raise field_error("healthCheck.timeoutSeconds", "must not exceed intervalSeconds")
                value["timeoutSeconds"] = min(defaults["timeoutSeconds"], value["intervalSeconds"])
        record[key] = value


def owning_slug(call: Call, requested: str | None) -> str | None:
    """The slug a registration is made under: a service token's own, or what an admin sets."""
    caller = call.caller
    if not caller.sees_every_slug:
        if requested is not None and requested != caller.slug:
            raise ApiError(403, f"a token of slug '{caller.slug}' cannot register instances of slug '{requested}'")
        return caller.slug
    return requested


def slug_name(slug: str | None) -> str:
    """`slug 'web'`, or `no slug`: never Python's None in a message."""
    return "no slug" if slug is None else f"slug '{slug}'"


def ordered(record: dict[str, Any]) -> dict[str, Any]:
    out = {key: record.get(key) for key in FIELD_ORDER}
    out.update({key: record[key] for key in OPTIONAL_FIELDS if record.get(key) is not None})
    return out


def merge(
    existing: dict[str, Any] | None, fields: dict[str, Any], instance_id: str, slug: str | None, node_url: str
) -> dict[str, Any]:
    """The record after a registration: existing values, overridden by what was sent."""
    now = utc_now()
    record: dict[str, Any] = existing.copy() if existing else {
        "tags": [], "metadata": {}, "weight": 100, "status": "Unknown", "nodeUrl": node_url,
        "healthCheck": dict(models.HEALTH_CHECK_DEFAULTS), "registeredAt": now,
    }  # fmt: skip
    record.update({k: v for k, v in fields.items() if k not in MERGED})
    if "checks" in fields:
        record["checkStatus"] = None  # judged afresh
    merged_objects(record, fields)
    record["id"] = instance_id
    record["slug"] = slug
    record["lastHeartbeat"] = now
    if "status" in fields:
        status.apply(record, status.Transition(fields["status"], "set at registration"))
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
    previous_status: str | None = None

    def response(self, index: int) -> Response:
        return json_response(201 if self.created else 200, {"instance": self.record}, index)


def can_see(caller: auth.Caller, record: dict[str, Any]) -> bool:
    """Whether the caller may read `record` (services see only their own slug's)."""
    return caller.sees_every_slug or record.get("slug") == caller.slug


def plan_registration(call: Call, fields: dict[str, Any]) -> Plan:
    """Reads the instance that holds the URL (or id) and merges the registration into it.

    A refusal caused by a record the caller cannot read says only that the URL or id is
    taken: never that record's id, URL or slug."""
    store = call.ctx.store
    holders = store.ids_by(INSTANCES, "url", fields["url"])
    by_url = load(store, holders[0]) if holders else None
    if "id" in fields:
        current = load(store, fields["id"])
        if by_url is not None and by_url[1]["id"] != fields["id"]:
            if can_see(call.caller, by_url[1]):
                raise ApiError(409, f"url '{fields['url']}' is already registered as instance '{by_url[1]['id']}'")
            raise ApiError(409, f"url '{fields['url']}' is already registered")
    else:
        current = by_url
    existing = current[1] if current else None
    requested = fields.get("slug", existing.get("slug") if existing and call.caller.sees_every_slug else None)
    slug = owning_slug(call, requested)
    # An admin may give a slug to an instance that has none (registered the product page's
    # way, without one); moving an instance between slugs stays a conflict.
    gives_a_slug = existing is not None and existing.get("slug") is None and call.caller.role == "admin"
    if existing is not None and existing.get("slug") != slug and not gives_a_slug:
        if not can_see(call.caller, existing):
            taken = f"instance id '{existing['id']}'" if "id" in fields else f"url '{fields['url']}'"
            raise ApiError(409, f"{taken} is already registered")
        raise ApiError(
            409,
            f"instance '{existing['id']}' ({existing['url']}) is registered under {slug_name(existing.get('slug'))}; "
            f"it cannot move to {slug_name(slug)} (deregister it first)",
        )
    instance_id = existing["id"] if existing else fields.get("id") or new_instance_id()
    record = merge(existing, fields, instance_id, slug, call.ctx.settings.self_url)
    previous = existing.get("status") if existing else None
    return Plan(instance_id, record, current[0] if current else 0, existing is None, previous)


async def register(call: Call) -> Response:
    """Register or re-register. Runs on the event loop and awaits the durable write instead
    of holding a thread, so many registrations share one group commit. A concurrent write
    to the same URL or id makes it plan again on what is stored now."""
    raw = read_json_object(call.request)
    fields = parse_registration(raw)
    addresses.refuse_unsafe_address(
        fields, "url" if raw.get("url") else ("ip" if raw.get("ip") else "host"), call.ctx.settings
    )

    async def attempt() -> Response:
        plan = plan_registration(call, fields)
        index = await put_async(
            call.ctx.store, INSTANCES, plan.instance_id, orjson.dumps(plan.record), plan.expect_version
        )
        status.log_transition(plan.record, None if plan.created else plan.previous_status)
        return plan.response(index)

    return await records.retrying_async(attempt, "the instance")


def new_instance_id() -> str:
    import secrets

    return "inst_" + secrets.token_hex(8)


def parse_filters(params: dict[str, list[str]]) -> list[tuple[str, str]]:
    """The store filters of a list query, by the rule the gates apply too (`rust/query.rs`):
    known names only, values checked and put in the stored form (so `nodeUrl=HTTP://N:80`
    finds `http://n`), repeats removed, sorted. Every distinct query is a response-cache
    entry, so absurd ones are refused."""
    try:
        return _core.lookup_filters(list(params.items()))
    except ValueError as e:
        error, errors = e.args
        raise ApiError(400, error, errors=errors or None) from None


async def list_instances(call: Call) -> Response:
    params = query_params(call.request)
    blocking = watch.take_blocking(params)
    filters = parse_filters(params)
    if not call.caller.sees_every_slug:
        filters.append(("slug", call.caller.slug or ""))
    store = call.ctx.store
    if blocking is not None:
        await call.ctx.watch.wait_past(instances_stamp(store, filters), *blocking, holder=call.holder)
    index, body = store.list_json(INSTANCES, filters, INSTANCES)
    return raw_json(200, store.with_load(body), index)


def instances_stamp(store: _core.Store, filters: list[tuple[str, str]]) -> watch.Stamp:
    """What a list of instances depends on: its slug's index when it is about one slug."""
    slugs = {value for field, value in filters if field == "slug"}
    if len(slugs) == 1:
        (slug,) = slugs
        return lambda: store.partition_index(INSTANCES, slug)
    return watch.collection_stamp(store, INSTANCES)


def visible(call: Call, instance_id: str) -> tuple[int, bytes]:
    """The stored instance, or 404 if it does not exist or belongs to another slug."""
    found = call.ctx.store.get(INSTANCES, instance_id)
    if found is not None and not can_see(call.caller, orjson.loads(found[1])):
        found = None
    if found is None:
        raise ApiError(404, f"instance '{instance_id}' not found")
    return found


async def get_instance(call: Call) -> Response:
    instance_id = path_param(call.request, "id")
    stamp = watch.record_stamp(call.ctx.store, INSTANCES, instance_id)
    await watch.wait_if_asked(call.ctx.watch, query_params(call.request), stamp, call.holder)
    version, body = visible(call, instance_id)
    return raw_json(200, call.ctx.store.with_load(b'{"instance":' + body + b"}"), version)


def heartbeat(call: Call) -> Response:
    """Renews an instance's heartbeat; `{"status": ...}` in the body also sets its status.
    A `ttl` instance that heartbeats without a status becomes Healthy (`status.py`)."""
    instance_id = path_param(call.request, "id")
    requested = models.parse(models.Heartbeat, read_json_object(call.request, allow_empty=True)).status

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None or not can_see(call.caller, current):
            raise ApiError(404, f"instance '{instance_id}' not found")
        status.apply(current, status.after_heartbeat(current, requested, call.caller.token_id or None))
        current["lastHeartbeat"] = utc_now()
        return current

    applied = records.update(call.ctx.store, INSTANCES, instance_id, change, "the instance")
    if applied.record is None:  # `change` always returns a record or raises; no assert on a request path
        raise ApiError(404, f"instance '{instance_id}' not found")
    status.log_transition(applied.record, (applied.previous or {}).get("status"))
    return json_response(200, {"instance": applied.record}, applied.index)


def maintenance_of(call: Call, on: bool, reason: str | None, node: str | None = None) -> dict[str, Any] | None:
    """The `maintenance` value an operator's request sets."""
    if not on:
        return None
    return {"reason": reason, "since": utc_now(), "by": call.caller.token_id or None, "node": node}


def log_maintenance(record: dict[str, Any]) -> None:
    held = record.get("maintenance")
    if held:
        where = f" (node {held['node']})" if held.get("node") else ""
        log.info(
            "instance %s (%s): maintenance on%s: %s", record["id"], record["url"], where, held.get("reason") or "-"
        )
    else:
        log.info("instance %s (%s): maintenance off; status %s", record["id"], record["url"], record.get("status"))


def set_maintenance(call: Call) -> Response:
    """Takes an instance out of routing (pick, the proxy, DNS, EDS), or puts it back. Its
    checks go on meanwhile, so it returns to what they say, not to a forced Healthy."""
    instance_id = path_param(call.request, "id")
    body = models.parse(models.Maintenance, read_json_object(call.request, allow_empty=True))

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None or not can_see(call.caller, current):
            raise ApiError(404, f"instance '{instance_id}' not found")
        current["maintenance"] = maintenance_of(call, body.enable, body.reason)
        return current

    applied = records.update(call.ctx.store, INSTANCES, instance_id, change, "the instance")
    if applied.record is None:
        raise ApiError(404, f"instance '{instance_id}' not found")
    log_maintenance(applied.record)
    return json_response(200, {"instance": applied.record}, applied.index)


def report_load(call: Call) -> Response:
    """A model server's load, pushed (`core/load.rs`): kept in shared memory with the time
    it arrived, never written to the store. Judged by the interval the instance declares
    (`load.intervalMs`), else the default."""
    instance_id = path_param(call.request, "id")
    body = models.parse(models.LoadReport, read_json_object(call.request))
    _, stored = visible(call, instance_id)
    declared = orjson.loads(stored).get("load") or {}
    interval = declared.get("intervalMs") or _core.LOAD_DEFAULT_INTERVAL_MS
    if not call.ctx.store.report_load(instance_id, body.queued, body.running, body.kvCacheUsage, interval):
        raise ApiError(503, "the load table has no room for this instance now; try again in a minute")
    return no_content()


def delete_instance(call: Call) -> Response:
    instance_id = path_param(call.request, "id")
    try:
        index = call.ctx.store.delete(INSTANCES, instance_id)
    except _core.NotFoundError:
        raise ApiError(404, f"instance '{instance_id}' not found") from None
    return no_content(index)


ROUTES = [
    Route("put", "/registry-svc/instance", register, auth.INSTANCE_EDIT, Doc(
        "Register an instance, or re-register it (an upsert by url, or by id)",
        {200: replies.InstanceReply, 201: replies.InstanceReply}, body=models.InstanceRegistration,
    )),
    Route("get", "/registry-svc/instances", list_instances, auth.INSTANCE_VIEW, Doc(
        "List instances; every filter given must match", {200: replies.InstanceList},
        query=models.InstanceFilters, blocking=True,
    )),
    Route("get", "/registry-svc/instance/:id", get_instance, auth.INSTANCE_VIEW, Doc(
        "One instance", {200: replies.InstanceReply}, errors=(404,), blocking=True,
    )),
    Route("put", "/registry-svc/instance/:id/heartbeat", heartbeat, auth.INSTANCE_EDIT, Doc(
        "Renew an instance's heartbeat; optionally set its status", {200: replies.InstanceReply},
        body=models.Heartbeat, body_optional=True, errors=(404,),
    )),
    Route("put", "/registry-svc/instance/:id/maintenance", set_maintenance, auth.INSTANCE_EDIT, Doc(
        "Maintenance: out of routing with a reason (`enable: false` puts it back); its checks go on",
        {200: replies.InstanceReply}, body=models.Maintenance, body_optional=True, errors=(404,),
    )),
    Route("put", "/registry-svc/instance/:id/load", report_load, auth.INSTANCE_EDIT, Doc(
        "Report a model server's load (queued, running, KV-cache usage): kept in memory for picks",
        {204: None}, body=models.LoadReport, errors=(404, 503),
    )),
    Route("delete", "/registry-svc/instance/:id", delete_instance, auth.INSTANCE_DELETE, Doc(
        "Deregister an instance", {204: None}, errors=(404,),
    )),
]  # fmt: skip
