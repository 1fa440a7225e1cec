"""`GET /registry-svc/instance/pick`: the sidecar hot path. One Rust call chooses an
instance and returns its ready-made `{"instance": ...}` body; nothing is parsed here."""

from __future__ import annotations

from robyn import Response

from registry_svc import auth
from registry_svc import validation as v
from registry_svc.api import Call, Route
from registry_svc.errors import ApiError
from registry_svc.http import query_params, raw_json
from registry_svc.settings import POLICIES

PICK_PARAMS = ("slug", "policy", "zone", "key", "tag")
MAX_TAGS = 16


def pick(call: Call) -> Response:
    params = query_params(call.request)
    for name, values in params.items():
        if name not in PICK_PARAMS:
            raise v.fail(name, f"unknown parameter; use {', '.join(PICK_PARAMS)}")
        if name != "tag" and len(values) > 1:
            raise v.fail(name, "give it once")

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[0] if values else None

    slug = one("slug")
    if not slug:
        raise v.fail("slug", "required")
    slug = v.slug(slug)
    zone = one("zone")
    if zone is not None:
        v.string(zone, "zone", max_len=128)
    # Tags are a set: repeats are one tag, and each distinct query is a cache entry.
    tags = sorted({v.string(tag, "tag", max_len=128) for tag in params.get("tag", [])})
    if len(tags) > MAX_TAGS:
        raise v.fail("tag", f"at most {MAX_TAGS} distinct tags per query")
    policy = one("policy")
    if policy is not None and policy not in POLICIES:
        raise v.fail("policy", f"must be one of {', '.join(POLICIES)}")
    key = one("key")
    if key is not None:
        v.string(key, "key", max_len=256)
    if policy == "consistent_hash" and not key:
        raise v.fail("key", "required with policy=consistent_hash")
    caller = call.caller
    if not caller.sees_every_slug and slug != caller.slug:
        raise ApiError(404, f"no instances are registered for slug '{slug}'")
    body = call.ctx.store.pick_json(slug, policy, zone, key, tags)
    return raw_json(200, body)


ROUTES = [Route("get", "/registry-svc/instance/pick", pick, auth.INSTANCE_VIEW)]
