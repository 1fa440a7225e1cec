"""`GET /registry-svc/instance/pick`: the sidecar hot path. One Rust call chooses an
instance and returns its ready-made `{"instance": ...}` body; nothing is parsed here."""

from __future__ import annotations

from robyn import Response

from registry_svc import _core, auth, models, replies
from registry_svc.api import Call, Doc, Route
from registry_svc.errors import ApiError
from registry_svc.http import query_params, raw_json


def pick(call: Call) -> Response:
    # The query's rule is the gates' too (rust/query.rs); the model only describes it.
    try:
        slug, policy, zone, key, tags, model = _core.pick_query(list(query_params(call.request).items()))
    except ValueError as e:
        error, errors = e.args
        raise ApiError(400, error, errors=errors or None) from None
    caller = call.caller
    if not caller.sees_every_slug and slug != caller.slug:
        raise ApiError(404, f"no instances are registered for slug '{slug}'")
    prefix = call.request.headers.get(_core.PREFIX_HEADER)
    try:
        body = call.ctx.store.pick_json(slug, policy, zone, key, tags, model, prefix.encode() if prefix else None)
    except _core.SaturatedError as e:
        raise ApiError(429, str(e), headers={"retry-after": "1"}) from None
    return raw_json(200, body)


ROUTES = [
    Route("get", "/registry-svc/instance/pick", pick, auth.INSTANCE_VIEW, Doc(
        "Choose one routable instance of a slug by a load-balancing policy", {200: replies.InstanceReply},
        query=models.PickQuery, errors=(404, 429, 503),
    )),
]  # fmt: skip
