"""HTTP plumbing shared by every endpoint: JSON responses, errors, body and query parsing.

Store errors are mapped to status codes here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from robyn import Request, Response

from registry_svc import _core
from registry_svc.errors import ApiError
from registry_svc.settings import MAX_API_BODY

log = logging.getLogger("registry_svc")

MAX_BODY_BYTES = MAX_API_BODY  # the gate refuses larger bodies before they are read
JSON_CONTENT_TYPE = "application/json"
INDEX_HEADER = "x-registry-index"
# Cluster mode, while the local replica has not heard from etcd for a while: how many
# seconds its answers may be behind.
STALE_HEADER = "x-registry-stale-seconds"


def _headers(index: int | None) -> dict[str, str]:
    headers = {"content-type": JSON_CONTENT_TYPE}
    if index is not None:
        headers[INDEX_HEADER] = str(index)
    return headers


def raw_json(status: int, body: bytes, index: int | None = None) -> Response:
    """A response whose body is already serialized JSON (e.g. bytes joined by the store)."""
    return Response(status_code=status, headers=_headers(index), description=body)


def json_response(status: int, payload: Any, index: int | None = None) -> Response:
    """A response serializing `payload` with orjson."""
    return raw_json(status, orjson.dumps(payload), index)


def no_content(index: int | None = None) -> Response:
    """204 with the registry index of the write that caused it."""
    headers = {} if index is None else {INDEX_HEADER: str(index)}
    return Response(status_code=204, headers=headers, description=b"")


def error_response(status: int, message: str, errors: list[str] | None = None) -> Response:
    """The one error shape of the API: `{"error": message}`, and `errors` (every problem,
    `message` first) when a body had several."""
    return json_response(status, {"error": message} if not errors else {"error": message, "errors": errors})


_STORE_ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (_core.NotFoundError, 404),
    (_core.ConflictError, 409),
    (_core.VersionMismatchError, 409),
    (_core.InvalidRecordError, 400),
    (_core.StoreFullError, 507),
    (_core.NoRoutableError, 503),
    (_core.StoreError, 503),
]


def store_error_response(err: Exception) -> Response:
    """Maps an exception raised by the Rust store to its HTTP status."""
    for cls, status in _STORE_ERROR_STATUS:
        if isinstance(err, cls):
            message = err.args[0] if err.args else str(err)
            if status >= 500:
                log.error("store error: %s", message)
            return error_response(status, str(message))
    raise err


async def put_async(
    store: _core.Store, collection: str, record_id: str, json: bytes, expect_version: int | None
) -> int:
    """`store.put` for the event loop: the write is submitted, and the loop is woken by the
    store's writer thread once it is durable. Raises what `put` would raise."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    def settle(result: int | BaseException) -> None:
        if future.cancelled():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    store.put_nowait(collection, record_id, json, expect_version, lambda r: loop.call_soon_threadsafe(settle, r))
    return await future


def read_json_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """Parses the request body as a JSON object, enforcing the size limit.

    An empty body is `{}` when `allow_empty`, otherwise a 400.
    """
    body = request.body
    raw = body.encode() if isinstance(body, str) else bytes(body or b"")
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "request body must be a JSON object")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"invalid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, f"request body must be a JSON object, not {type(parsed).__name__}")
    return parsed


def query_params(request: Request) -> dict[str, list[str]]:
    """Query parameters, percent-decoded by the gates' rule (Robyn hands them over raw), by
    name in sorted order: Robyn's map has no order of its own (a random one per request),
    and which of several problems a 400 names first must not change from one request to
    the next. A part that is not percent-encoded UTF-8 is a 400, as the gates decline it."""
    raw: list[tuple[str, str]] = request.query_params.multi_items()
    try:
        pairs = _core.query_pairs(sorted(raw, key=lambda pair: pair[0]))
    except ValueError as e:
        error, errors = e.args
        raise ApiError(400, error, errors=errors) from None
    return dict(pairs)


def path_param(request: Request, name: str) -> str:
    """A path parameter, percent-decoded by the gates' rule (Robyn hands them over raw);
    one that is not percent-encoded UTF-8 is a 400 naming it."""
    try:
        return _core.path_segment(name, request.path_params[name])
    except ValueError as e:
        error, errors = e.args
        raise ApiError(400, error, errors=errors) from None
