"""About the server itself: `GET /version`, and 1Backend's `/registry-svc/echo`. No token."""

from __future__ import annotations

import orjson
from robyn import Response

from registry_svc import auth
from registry_svc import metrics as metrics_mod
from registry_svc.about import version_info
from registry_svc.api import Call, Route
from registry_svc.errors import ApiError
from registry_svc.http import json_response, query_params


def version(call: Call) -> Response:
    return json_response(200, version_info())


def echo(call: Call) -> Response:
    """1Backend's echo: the query as a map for GET, the JSON body for PUT and POST."""
    if call.request.method.upper() == "GET":
        return json_response(200, {name: values[-1] for name, values in query_params(call.request).items()})
    body = call.request.body
    raw = body.encode() if isinstance(body, str) else bytes(body or b"")
    if not raw.strip():
        return json_response(200, {})
    try:
        return json_response(200, orjson.loads(raw))
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"invalid JSON: {e}") from None


def metrics(call: Call) -> Response:
    """`GET /metrics`: the Prometheus text exposition of the whole server."""
    settings = call.ctx.settings
    body = metrics_mod.exposition(call.ctx.store, settings.map_size, settings.data_dir)
    return Response(status_code=200, headers={"content-type": metrics_mod.CONTENT_TYPE}, description=body)


ROUTES = [
    Route("get", "/version", version, auth.PUBLIC),
    Route("get", "/registry-svc/echo", echo, auth.PUBLIC),
    Route("post", "/registry-svc/echo", echo, auth.PUBLIC),
    Route("put", "/registry-svc/echo", echo, auth.PUBLIC),
]
