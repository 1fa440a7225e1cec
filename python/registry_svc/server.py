"""The Robyn app of one worker process: wiring only (routes -> handlers), startup, shutdown.

Run by the supervisor (`registry-svc serve`) as `python -m registry_svc.server`, with the
settings in the environment. Robyn forks its own processes when `--processes` > 1; each
opens the store in its startup handler, after the fork, as LMDB requires.
"""

# No `from __future__ import annotations` here: Robyn injects handler arguments by reading
# their annotations at runtime.

import asyncio
import inspect
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import orjson
from robyn import Request, Response, Robyn

from registry_svc import _core, access, auth, cluster, http, metrics, openapi, watch
from registry_svc.api import (
    AsyncHandler,
    Call,
    Context,
    Handler,
    Route,
    definitions,
    discovery,
    instances,
    meta,
    nodes,
    pick,
    routing,
    tokens,
    ui,
)  # fmt: skip
from registry_svc.auth import Authenticator, Caller
from registry_svc.errors import ApiError
from registry_svc.http import error_response, json_response, store_error_response
from registry_svc.lifecycle import SUPERVISOR_PID_ENV, die_with_parent
from registry_svc.settings import Settings

log = logging.getLogger("registry_svc")

# `pick` comes before `instance/:id`; Robyn prefers static segments anyway.
ROUTES: list[Route] = [
    *pick.ROUTES, *instances.ROUTES, *definitions.ROUTES, *nodes.ROUTES, *tokens.ROUTES, *meta.ROUTES, *ui.ROUTES, *routing.ROUTES,
    *discovery.ROUTES,
]  # fmt: skip
# Methods the JSON fallback answers (404/405). Robyn cannot route extension methods
# (`FOO /x`): see README, "HTTP limits of the API port".
METHODS = ("get", "post", "put", "delete", "patch", "head", "options", "trace")


class ProcessState:
    """This process's context, set by the startup handler once the store is open."""

    ctx: Context | None = None
    # Writes wait on disk syncs; running them on a pool lets many share one group commit.
    writes: ThreadPoolExecutor | None = None
    # This process's share of the data port.
    data_plane: _core.Front | None = None
    # This process's share of the DNS port.
    dns: _core.Dns | None = None


def error_for(route: Route, err: Exception) -> Response:
    """The response for an exception a handler raised."""
    if isinstance(err, ApiError):
        response = error_response(err.status, err.message, err.errors)
        for name, value in err.headers.items():
            response.headers.set(name, value)
        return response
    if isinstance(err, _core.StoreError):
        return store_error_response(err)
    log.error("unhandled error in %s %s", route.method.upper(), route.path, exc_info=err)
    return error_response(500, "internal error; the server log has the details")


def authorized(route: Route, state: ProcessState, request: Request) -> Call:
    """The request as a call of an authenticated caller holding the route's permission."""
    ctx = state.ctx
    if ctx is None:
        raise ApiError(503, "the server is starting; retry shortly")
    if route.permission == auth.PUBLIC:
        return Call(request, ctx.auth.authenticate_optional(request), ctx)
    caller = ctx.auth.authenticate(request)
    caller.require(route.permission)
    return Call(request, caller, ctx)


async def authorized_after_catch_up(route: Route, state: ProcessState, request: Request) -> Call:
    """`authorized`, except that in cluster mode a token this replica does not know yet is
    looked up again once the replica reached the request's `?index=N`: a token created on
    another server is then usable at once, like any other write read with its index. The
    wait is on the event loop (a waiter, not a thread) and bounded by `watch.CATCH_UP_S`."""
    try:
        return authorized(route, state, request)
    except ApiError as e:
        index = watch.parse_index(request.query_params.get("index", None))
        ctx = state.ctx
        if e.status != 401 or ctx is None or index is None or not await ctx.watch.catch_up(index):
            raise
    return authorized(route, state, request)


# Tests only (rust/edge/answer.rs `name_the_answerer`): answers say who gave them.
NAME_THE_ANSWERER = os.environ.get("REGISTRY_SVC_ANSWERED_BY") == "1"


def answered(
    state: ProcessState, route: str, request: Request, response: Response, started: float, caller: Caller | None
) -> Response:
    """Every answer of the workers passes here: a stale cluster replica says how stale
    (`x-registry-stale-seconds`), and the request is counted and logged."""
    staleness = state.ctx.staleness if state.ctx is not None else None
    if staleness is not None and (age := staleness()) is not None:
        response.headers.set(http.STALE_HEADER, f"{age:.1f}")
    if NAME_THE_ANSWERER:
        response.headers.set("x-registry-answered-by", "workers")
    access.observe(route, request, response, started, caller)
    return response


def guarded(route: Route, state: ProcessState) -> Callable[[Request], Response]:
    """The Robyn handler for `route`: authenticate, check the permission, run, map errors;
    counted in the metrics and the access log."""
    handler = cast(Handler, route.handler)

    def endpoint(request: Request) -> Response:
        started, caller = time.perf_counter(), None
        try:
            call = authorized(route, state, request)
            caller = call.caller
            response = handler(call)
        except Exception as e:
            response = error_for(route, e)
        return answered(state, route.path, request, response, started, caller)

    endpoint.__name__ = route.handler.__name__
    return endpoint


def awaited(route: Route, state: ProcessState) -> Callable[[Request], Awaitable[Response]]:
    """`guarded` for an async handler, run on Robyn's event loop."""
    handler = cast(AsyncHandler, route.handler)

    async def endpoint(request: Request) -> Response:
        started, caller = time.perf_counter(), None
        try:
            call = await authorized_after_catch_up(route, state, request)
            caller = call.caller
            response = await handler(call)
        except Exception as e:
            response = error_for(route, e)
        return answered(state, route.path, request, response, started, caller)

    endpoint.__name__ = route.handler.__name__
    return endpoint


WRITE_THREADS = 32
# Tokio threads of a process's data plane: the cores, shared out over the processes.
DATA_THREADS_TOTAL = os.cpu_count() or 2
# The route label of what no built-in route matched (bounded: never a raw path).
UNROUTED = "unrouted"


def offloaded(route: Route, state: ProcessState) -> Callable[[Request], Awaitable[Response]]:
    """`guarded(route)` run on the process's write pool, so that a request waiting for its
    commit does not hold one of Robyn's few worker threads."""
    handler = guarded(route, state)

    async def endpoint(request: Request) -> Response:
        if state.writes is None:
            return handler(request)
        return await asyncio.get_running_loop().run_in_executor(state.writes, handler, request)

    endpoint.__name__ = route.handler.__name__
    return endpoint


def _pattern(path: str) -> "re.Pattern[str]":
    regex = re.sub(r":[A-Za-z_]+", "[^/]+", path)
    regex = re.sub(r"\*[A-Za-z_]+", ".+", regex)
    return re.compile(f"^{regex}$")


def not_routed(
    patterns: list[tuple["re.Pattern[str]", str]], state: ProcessState
) -> Callable[[Request], Awaitable[Response]]:
    """Everything no built-in route matched: xDS, a JSON 405 for a known path with the
    wrong method, or a JSON 404. (A slug's path never gets here: the gates proxy it in
    Rust, rust/forward.rs; what does get here is no slug, e.g. `/Not_A_Slug/x`.)"""

    async def fallback(request: Request) -> Response:
        started = time.perf_counter()
        response, route = await answer(request)
        return answered(state, route, request, response, started, None)

    async def answer(request: Request) -> tuple[Response, str]:
        """The response, and the route to count it under."""
        path = request.url.path
        if discovery.is_xds(path) and state.ctx is not None:
            if request.method.upper() != "POST":
                return error_response(405, f"{request.method} is not allowed on {path}; use POST"), path
            return await discovery.xds(state.ctx, request), path
        allowed = sorted({method.upper() for pattern, method in patterns if pattern.match(path)})
        if allowed:
            return error_response(405, f"{request.method} is not allowed on {path}; use {', '.join(allowed)}"), path
        if _core.is_registry_route(path):
            return error_response(404, f"no such endpoint: {request.method} {path}"), UNROUTED
        return error_response(
            404, f"no route for {request.method} {path}, and no registered service '{path.split('/')[1]}'"
        ), UNROUTED

    return fallback


def build_app(settings: Settings) -> Robyn:
    """The app with every route wired; the store opens in the startup handler."""
    app = Robyn(__file__)
    state = ProcessState()

    @app.startup_handler
    def open_store() -> None:
        if settings.processes > 1:
            die_with_parent()  # a forked worker goes when the Robyn parent goes
        store = settings.open_store()
        hub = watch.WatchHub(store, replica=settings.clustered)
        staleness = store.replica_staleness if settings.clustered else None
        state.ctx = Context(store=store, settings=settings, auth=Authenticator(store), watch=hub, staleness=staleness)
        state.writes = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="write")
        if settings.data_port:
            # The data plane of this process (rust/edge/, Role::Data): its own Tokio
            # threads, no GIL; every process joins the port (SO_REUSEPORT).
            threads = max(1, DATA_THREADS_TOTAL // settings.processes)
            state.data_plane = settings.open_gate(
                store, settings.data_port, settings.internal_port, threads, data_plane=True
            )
        # DNS (rust/dns/), like the data port: every process answers its share.
        state.dns = settings.open_dns(store, max(1, DATA_THREADS_TOTAL // settings.processes))
        metrics.setup(store, state.data_plane, port="data", dns=state.dns)

    @app.shutdown_handler
    def close_store() -> None:
        if state.data_plane is not None:
            state.data_plane.close()
        if state.dns is not None:
            state.dns.close()
        if state.ctx is not None:
            state.ctx.store.close()

    def health(request: Request) -> Response:
        started = time.perf_counter()
        if state.ctx is None:
            response = error_response(503, "store not open yet")
        elif settings.clustered:
            response = json_response(200, cluster.health(state.ctx.store, list(settings.etcd_endpoints)))
        else:
            response = json_response(200, {"status": "ok"})
        return answered(state, "/health", request, response, started, None)

    app.get("/health")(health)
    app.head("/health")(health)

    metrics_route = Route(
        "get", "/metrics", meta.metrics, auth.PUBLIC if settings.metrics == "open" else auth.NODE_VIEW, meta.METRICS_DOC
    )
    routes = [*ROUTES, metrics_route]
    document = orjson.dumps(openapi.document(openapi.operations(routes)))
    routes.append(Route("get", openapi.PATH, meta.openapi_handler(document), auth.PUBLIC, openapi.SELF.doc))
    for route in routes:
        # Reads are fast and never block: they run inline on Robyn's workers. Writes await
        # their commit (async handlers) or wait for it on the write pool.
        endpoint: Callable[[Request], Response] | Callable[[Request], Awaitable[Response]]
        if inspect.iscoroutinefunction(route.handler):
            endpoint = awaited(route, state)
        elif route.method == "get":
            endpoint = guarded(route, state)
        else:
            endpoint = offloaded(route, state)
        getattr(app, route.method)(route.path)(endpoint)
        if route.method == "get":
            # HEAD answers like GET; the server sends the headers (Content-Length
            # included) without the body.
            app.head(route.path)(endpoint)

    patterns = [(_pattern(r.path), r.method) for r in ROUTES] + [(re.compile("^/health$"), "get")]
    patterns += [(pattern, "head") for pattern, method in patterns if method == "get"]
    fallback = not_routed(patterns, state)
    for method in METHODS:
        getattr(app, method)("/")(fallback)
        getattr(app, method)("/*path")(fallback)
    return app


def main() -> None:
    """Entry point of a worker process started by the supervisor."""
    # Go when the supervisor goes, even if it is SIGKILLed.
    die_with_parent(int(os.environ[SUPERVISOR_PID_ENV]) if SUPERVISOR_PID_ENV in os.environ else None)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s")
    if settings.log_format == "json":
        access.use_json_logs()
    # Robyn's and actix's own info lines (handlers added, workers started) are noise in
    # our log.
    if settings.log_level != "debug":
        for name in ("robyn", "actix_server", "actix_web", "actix_http"):
            logging.getLogger(name).setLevel(logging.WARNING)
    app = build_app(settings)
    # Behind the gate (rust/edge/), which holds the public port: loopback only.
    app.start(host="127.0.0.1", port=settings.internal_port, _check_port=False)


if __name__ == "__main__":
    main()
