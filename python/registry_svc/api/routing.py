"""How a slug is routed: `GET /registry-svc/routing` (the policies and every slug's proxy
settings), and one slug's settings, `GET|PUT|DELETE /registry-svc/routing/{slug}`:
`stripPrefix`, `retries`, `timeoutSeconds`, `loadWeights`. The rules of a body are the gates' own
(`_core.route_record`, `rust/route.rs`): what is accepted here is what the proxy does."""

from __future__ import annotations

import re
from typing import Any

import orjson
from robyn import Response

from registry_svc import _core, auth, models, replies
from registry_svc.api import Call, Doc, Route
from registry_svc.errors import ApiError
from registry_svc.http import json_response, no_content, path_param, read_json_object

ROUTES_COLLECTION = "routes"


def effective(call: Call, slug: str, stored: dict[str, Any] | None) -> dict[str, Any]:
    """What the proxy does for `slug`: its stored settings (or the defaults), its policy,
    and its timeout (its own, or the server's `--proxy-timeout-seconds`)."""
    settings = call.ctx.settings
    defaults = orjson.loads(_core.route_record(slug, b"{}"))
    record = stored or defaults
    return {
        "slug": slug,
        "policy": settings.slug_policies.get(slug, settings.default_policy),
        "ownPolicy": slug in settings.slug_policies,
        "stripPrefix": record["stripPrefix"],
        "retries": record["retries"],
        "timeoutSeconds": record.get("timeoutSeconds", settings.proxy_timeout_seconds),
        "loadWeights": record.get("loadWeights", defaults["loadWeights"]),
        "custom": stored is not None,
    }


def stored_routes(call: Call) -> dict[str, dict[str, Any]]:
    _, body = call.ctx.store.list_json(ROUTES_COLLECTION, [], ROUTES_COLLECTION)
    return {r["id"]: r for r in orjson.loads(body)[ROUTES_COLLECTION]}


def visible_slug(call: Call) -> str:
    """The path's slug, checked; a service token sees only its own (404 for others)."""
    slug = path_param(call.request, "slug")
    if not re.fullmatch(models.SLUG_PATTERN, slug):
        raise ApiError(400, f"slug: {models.PATTERN_PROBLEMS[models.SLUG_PATTERN]}")
    if not call.caller.sees_every_slug and slug != call.caller.slug:
        raise ApiError(404, f"no routing settings for slug '{slug}'")
    return slug


def routing(call: Call) -> Response:
    """The default load-balancing policy, the per-slug ones (`--policy`, `--slug-policy`),
    the default proxy timeout and every slug's proxy settings."""
    settings = call.ctx.settings
    policies = settings.slug_policies
    routes = {slug: effective(call, slug, r) for slug, r in stored_routes(call).items()}
    if not call.caller.sees_every_slug:
        policies = {slug: p for slug, p in policies.items() if slug == call.caller.slug}
        routes = {slug: r for slug, r in routes.items() if slug == call.caller.slug}
    return json_response(200, {"defaultPolicy": settings.default_policy, "slugPolicies": policies,
                               "proxyTimeoutSeconds": settings.proxy_timeout_seconds, "slugRoutes": routes})  # fmt: skip


def get_slug_routing(call: Call) -> Response:
    slug = visible_slug(call)
    found = call.ctx.store.get(ROUTES_COLLECTION, slug)
    return json_response(200, {"routing": effective(call, slug, None if found is None else orjson.loads(found[1]))})


def put_slug_routing(call: Call) -> Response:
    """Replaces `slug`'s proxy settings (absent fields take their defaults)."""
    slug = visible_slug(call)
    body = read_json_object(call.request)
    try:
        record = _core.route_record(slug, orjson.dumps(body))
    except ValueError as e:
        field, message = e.args
        raise ApiError(400, f"{field}: {message}") from None
    store = call.ctx.store
    existed = store.get(ROUTES_COLLECTION, slug) is not None
    index = store.put(ROUTES_COLLECTION, slug, record.encode())
    return json_response(200 if existed else 201, {"routing": effective(call, slug, orjson.loads(record))}, index)


def delete_slug_routing(call: Call) -> Response:
    """Back to the defaults."""
    slug = visible_slug(call)
    try:
        index = call.ctx.store.delete(ROUTES_COLLECTION, slug)
    except _core.NotFoundError:
        raise ApiError(404, f"slug '{slug}' has no routing settings of its own") from None
    return no_content(index)


ROUTES = [
    Route("get", "/registry-svc/routing", routing, auth.INSTANCE_VIEW, Doc(
        "The load-balancing policies (the default and the per-slug ones) and every slug's proxy settings",
        {200: replies.Routing},
    )),
    Route("get", "/registry-svc/routing/:slug", get_slug_routing, auth.INSTANCE_VIEW, Doc(
        "What the proxy does for one slug: policy, stripPrefix, retries, timeoutSeconds", {200: replies.SlugRoutingReply},
        errors=(404,),
    )),
    Route("put", "/registry-svc/routing/:slug", put_slug_routing, auth.ADMIN, Doc(
        "Set a slug's proxy settings (201 new, 200 replaced); an absent field takes its default",
        {200: replies.SlugRoutingReply, 201: replies.SlugRoutingReply}, body=replies.SlugRouteBody,
    )),
    Route("delete", "/registry-svc/routing/:slug", delete_slug_routing, auth.ADMIN, Doc(
        "Put a slug's proxy settings back to the defaults", {204: None}, errors=(404,),
    )),
]  # fmt: skip
