"""About the server itself: `GET /version`, and 1Backend's `/registry-svc/echo`. No token."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from robyn import Response

from registry_svc import auth, replies
from registry_svc import metrics as metrics_mod
from registry_svc.about import version_info
from registry_svc.api import Call, Doc, Route
from registry_svc.errors import ApiError
from registry_svc.http import json_response, query_params, raw_json


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


def openapi_handler(document: bytes) -> Callable[[Call], Response]:
    """`GET /registry-svc/openapi.json`: the document, made once when the app is built."""

    def openapi_json(call: Call) -> Response:
        return raw_json(200, document)

    return openapi_json


def metrics(call: Call) -> Response:
    """`GET /metrics`: the Prometheus text exposition of the whole server."""
    settings = call.ctx.settings
    body = metrics_mod.exposition(call.ctx.store, settings.map_size, settings.data_dir)
    return Response(status_code=200, headers={"content-type": metrics_mod.CONTENT_TYPE}, description=body)


ECHO_BODY = Doc("1Backend's echo: the JSON body sent", {200: replies.Echo}, body=replies.Echo, body_optional=True)
METRICS_DOC = Doc(
    "Prometheus metrics of the whole server (all its processes)",
    {200: None},
    content_types=("text/plain",),
)
ROUTES = [
    Route("get", "/version", version, auth.PUBLIC, Doc("Versions of the server and its parts", {200: replies.Version})),
    Route("get", "/registry-svc/echo", echo, auth.PUBLIC, Doc(
        "1Backend's echo: the query as a map", {200: replies.Echo}
    )),
    Route("post", "/registry-svc/echo", echo, auth.PUBLIC, ECHO_BODY),
    Route("put", "/registry-svc/echo", echo, auth.PUBLIC, ECHO_BODY),
]  # fmt: skip
