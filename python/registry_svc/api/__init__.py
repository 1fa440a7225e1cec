"""HTTP resources, one module each. Every module exports `ROUTES`, wired by `server.py`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel
from robyn import Request, Response

from registry_svc import _core
from registry_svc.access import CLIENT_ADDR_HEADER, QUERY_HEADER
from registry_svc.auth import Authenticator, Caller
from registry_svc.settings import Settings
from registry_svc.watch import Holder, WatchHub


@dataclass(frozen=True)
class Context:
    """What every handler of this process shares: the store, settings, authenticator, the
    watchers of blocking queries, and (cluster mode) how stale the replica is: seconds
    since it heard from etcd, None while fresh; every answer then says so."""

    store: _core.Store
    settings: Settings
    auth: Authenticator
    watch: WatchHub
    staleness: Callable[[], float | None] | None = None


@dataclass(slots=True)
class Call:
    """One authenticated request."""

    request: Request
    caller: Caller
    ctx: Context

    @property
    def holder(self) -> Holder:
        """Who a blocking query of this call is held for (its caps, its token's recheck)."""
        return holder_of(self.caller, self.request)


def holder_of(caller: Caller, request: Request) -> Holder:
    """Who a blocking query is held for: the caller's token, the client's address and the
    query's id as the gate sent them (`x-registry-client-addr`, `x-registry-query`)."""
    query = request.headers.get(QUERY_HEADER) or ""
    return Holder(caller.token_id, request.headers.get(CLIENT_ADDR_HEADER) or "", int(query) if query.isdigit() else 0)


Handler = Callable[[Call], Response]
AsyncHandler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Doc:
    """What the OpenAPI document says of a route (`openapi.py` adds the refusals every
    route of its kind can give: 400 for bad input, 401/403, 409/507 for writes, 503)."""

    summary: str
    # Success statuses and their bodies (None: no body).
    replies: Mapping[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    # An empty body is taken as `{}`.
    body_optional: bool = False
    query: type[BaseModel] | None = None
    # Refusals particular to the route, such as 404 for an unknown id.
    errors: tuple[int, ...] = ()
    # Takes `?index=N&wait=D` (a blocking query).
    blocking: bool = False
    # Its successes carry `X-Registry-Index` (default: blocking reads and token-holding writes).
    index: bool | None = None
    # The media types of a success that is not JSON.
    content_types: tuple[str, ...] = ("application/json",)


@dataclass(frozen=True)
class Route:
    """A route: method, Robyn path pattern, handler, the permission it requires, and its
    documentation."""

    method: str
    path: str
    # An async handler is awaited on Robyn's event loop; a sync one runs inline (reads) or
    # on the write pool (writes).
    handler: Handler | AsyncHandler
    permission: str
    doc: Doc
