"""HTTP resources, one module each. Every module exports `ROUTES`, wired by `server.py`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from robyn import Request, Response

from registry_svc import _core
from registry_svc.auth import Authenticator, Caller
from registry_svc.settings import Settings
from registry_svc.watch import WatchHub


@dataclass(frozen=True)
class Context:
    """What every handler of this process shares: the store, settings, authenticator, and
    the watchers of blocking queries."""

    store: _core.Store
    settings: Settings
    auth: Authenticator
    watch: WatchHub


@dataclass(slots=True)
class Call:
    """One authenticated request."""

    request: Request
    caller: Caller
    ctx: Context


Handler = Callable[[Call], Response]
AsyncHandler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """A route: method, Robyn path pattern, handler, and the permission it requires."""

    method: str
    path: str
    # An async handler is awaited on Robyn's event loop; a sync one runs inline (reads) or
    # on the write pool (writes).
    handler: Handler | AsyncHandler
    permission: str
