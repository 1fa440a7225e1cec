"""The one way a record is changed after reading it: compare-and-set on its version.

Every read-modify-write of the server (registration, heartbeats, health transitions, node
records, the node-death sweep, token revocation) goes through `retrying`/`update`, so a
decision is always taken on the record as it is now, inside the write that depends on it,
and a concurrent change turns into a fresh decision, never into a lost update. The rules
themselves (which status wins) live in `status.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from registry_svc import _core
from registry_svc.errors import ApiError

MAX_ATTEMPTS = 8
# A concurrent write to the record (version), or to a unique field it claims (conflict).
RETRY = (_core.VersionMismatchError, _core.ConflictError)
T = TypeVar("T")


class Delete:
    """What a change returns to delete the record it was given."""


DELETE = Delete()
# A change gets a copy of the current record (None when absent) and returns the record to
# write, DELETE, or None to write nothing.
Change = Callable[[dict[str, Any] | None], "dict[str, Any] | Delete | None"]


@dataclass(frozen=True)
class Applied:
    """The outcome of `update`: what the record is now, and whether this call wrote it."""

    record: dict[str, Any] | None
    wrote: bool
    index: int | None  # the registry index of the write (None when nothing was written)
    previous: dict[str, Any] | None = None  # the record as it was before the write


def gave_up(what: str) -> ApiError:
    return ApiError(409, f"{what} kept changing concurrently; retry")


def retrying(attempt: Callable[[], T], what: str, attempts: int = MAX_ATTEMPTS) -> T:
    """Runs `attempt` (read, decide, write with preconditions) until no precondition fails."""
    for _ in range(attempts):
        try:
            return attempt()
        except RETRY:
            continue
    raise gave_up(what)


async def retrying_async(attempt: Callable[[], Awaitable[T]], what: str, attempts: int = MAX_ATTEMPTS) -> T:
    """`retrying` for the event loop."""
    for _ in range(attempts):
        try:
            return await attempt()
        except RETRY:
            continue
    raise gave_up(what)


def read(store: _core.Store, collection: str, record_id: str) -> tuple[int, dict[str, Any] | None]:
    """(version, record), or (0, None) when absent."""
    found = store.get(collection, record_id)
    return (0, None) if found is None else (found[0], orjson.loads(found[1]))


def _apply(store: _core.Store, collection: str, record_id: str, change: Change) -> Applied:
    version, current = read(store, collection, record_id)
    outcome = change(None if current is None else dict(current))
    if outcome is None:
        return Applied(current, False, None, current)
    if isinstance(outcome, Delete):
        if current is None:
            return Applied(None, False, None)
        return Applied(None, True, store.delete(collection, record_id, version), current)
    return Applied(outcome, True, store.put(collection, record_id, orjson.dumps(outcome), version), current)


def update(store: _core.Store, collection: str, record_id: str, change: Change, what: str = "the record") -> Applied:
    """Applies `change` to the current record with its version as precondition, again on
    the fresh record whenever another write got there first."""
    return retrying(lambda: _apply(store, collection, record_id, change), what)
