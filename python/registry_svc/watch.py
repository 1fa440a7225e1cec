"""Blocking queries (Consul's semantics): `?index=N&wait=30s` on list and get endpoints
answers as soon as the result's own index passes N, or after `wait` with what is there.

The index a client passes back is the `X-Registry-Index` of its previous answer: the
registry index at which that answer was read, so every write it does not contain has a
higher index. A watcher waits until the *stamp* of its result passes N: the per-slug index
for instances of one slug (a write to slug A does not wake a watcher of slug B), a
record's version for a get, otherwise the collection's index.

One poller per process serves every watcher: while any waits, it sleeps until the store's
notifier moves (`_core.ChangeSignal`, a file descriptor on the loop: every write by any
process, a replica apply included, and every query a gate saw abandoned, moves it), then
reads the registry index and checks the watchers' stamps only when it moved. Idle watchers
cost nothing until something is written; without a notice it still looks every
`FALLBACK_S` (a writer killed between its commit and its notice).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from registry_svc import _core
from registry_svc.auth import TOKENS
from registry_svc.errors import ApiError

FALLBACK_S = 1.0
# How long a read with `?index=N` waits at most for a cluster replica to reach N.
CATCH_UP_S = 5.0

# Blocking queries one process holds at once for one token, and for one client address
# (Consul's default is 200 connections per client); past either, a 429.
MAX_HELD_PER_TOKEN = 2000
MAX_HELD_PER_CLIENT = 256

Stamp = Callable[[], int]


@dataclass(frozen=True)
class Holder:
    """Who holds a blocking query: the token's id ("" without one) and the client's
    address as the gate saw it."""

    token_id: str
    client: str
    # The gate's id of the query (`x-registry-query`; 0: none), to drop the waiter when
    # the gate says its client went away.
    query: int = 0


class ClientGone(Exception):
    """The gate said the client of a held query went away."""


def parse_index(text: str | None) -> int | None:
    """An index as a client sends it (`?index=`, an xDS `version_info`): up to 19 ASCII
    digits, else None (`rust/query.rs`). `str.isdigit()` is not enough: it takes '²'."""
    return None if text is None else _core.parse_index(text)


def take_blocking(params: dict[str, list[str]]) -> tuple[int, float] | None:
    """Removes `index` and `wait` from query `params`: (index, seconds to wait with jitter),
    or None for a plain query. 400s name the bad parameter. The rule is the gates' too
    (`rust/query.rs` `blocking`: it tells them which reads the workers will hold)."""
    index_values = params.pop("index", None)
    wait_values = params.pop("wait", None)
    try:
        blocking = _core.blocking_params(
            index_values[-1] if index_values else None, wait_values[-1] if wait_values else None
        )
    except ValueError as e:
        error, errors = e.args
        raise ApiError(400, error, errors=errors or None) from None
    if blocking is None:
        return None
    index, wait = blocking
    # Jitter spreads the answers of watchers that timed out together (Consul adds wait/16).
    return index, wait + random.uniform(0, wait / 16)


class WatchHub:
    """The watchers of one process and the poller that wakes them."""

    def __init__(self, store: _core.Store, replica: bool = False) -> None:
        self.store = store
        # Cluster mode: the store is a replica of etcd, and an index may be ahead of it.
        self.replica = replica
        self._waiters: list[tuple[Stamp, int, asyncio.Future[None]]] = []
        # Held queries by the gate's id, and how far the ring of abandoned ones was read.
        self._by_query: dict[int, asyncio.Future[None]] = {}
        self._cancels_seen = store.cancelled_queries(0)[0]
        self._poller: asyncio.Task[None] | None = None
        # The store's notifier, watched by the loop once a query first waits.
        self._signal: _core.ChangeSignal | None = None
        self._moved = asyncio.Event()
        self._by_token: Counter[str] = Counter()
        self._by_client: Counter[str] = Counter()

    @contextlib.contextmanager
    def _held(self, holder: Holder | None) -> Iterator[None]:
        """Counts a held query against its token and client; a 429 past either cap."""
        if holder is None:
            yield
            return
        for counts, key, cap, what in (
            (self._by_token, holder.token_id, MAX_HELD_PER_TOKEN, "this token"),
            (self._by_client, holder.client, MAX_HELD_PER_CLIENT, f"client {holder.client}"),
        ):
            if key and counts[key] >= cap:
                raise ApiError(
                    429,
                    f"index: {what} holds {cap} blocking queries on this server process already (the most it may); "
                    "retry when one has answered",
                    {"retry-after": "1"},
                )
        self._by_token[holder.token_id] += 1
        self._by_client[holder.client] += 1
        try:
            yield
        finally:
            for counts, key in ((self._by_token, holder.token_id), (self._by_client, holder.client)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait_past(self, stamp: Stamp, index: int, timeout: float, holder: Holder | None = None) -> None:
        """Returns once `stamp()` passes `index`, or after `timeout` seconds. On a replica,
        first waits (at most `CATCH_UP_S`, or `timeout` if longer) until it has applied
        revision `index`, so that a client can read on any server what it wrote on
        another; a 504 names the revision it is at when it cannot. With a `holder`, the
        wait counts against its caps (429 past them), and a token revoked meanwhile gets
        a 401 instead of the answer."""
        with self._held(holder):
            try:
                await self._wait_past(stamp, index, timeout, holder.query if holder is not None else 0)
            except ClientGone:
                raise ApiError(499, "the client went away while its query waited") from None
        if holder is not None and holder.token_id and self.store.get(TOKENS, holder.token_id) is None:
            raise ApiError(401, "token revoked while the query waited")

    async def _wait_past(self, stamp: Stamp, index: int, timeout: float, query: int) -> None:
        if self.replica and self.store.index() < index:
            catch_up = max(CATCH_UP_S, timeout)
            started = asyncio.get_running_loop().time()
            await self._wait(self.store.index, index - 1, catch_up, query)
            applied = self.store.index()
            if applied < index:
                raise ApiError(
                    504,
                    f"index: this server's replica is at revision {applied}, behind {index}, after {catch_up:g}s; "
                    "etcd may be unreachable from it (see /health); retry or read another server",
                )
            timeout = max(0.0, timeout - (asyncio.get_running_loop().time() - started))
        await self._wait(stamp, index, timeout, query)

    async def catch_up(self, index: int) -> bool:
        """Whether this store has applied revision `index`, after waiting at most
        `CATCH_UP_S` for it when it is a replica that has not (always false elsewhere)."""
        if not self.replica:
            return False
        if self.store.index() < index:
            await self._wait(self.store.index, index - 1, CATCH_UP_S)
        return self.store.index() >= index

    async def _wait(self, stamp: Stamp, index: int, timeout: float, query: int = 0) -> None:
        if stamp() > index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (stamp, index, future)
        self._waiters.append(waiter)
        if query:
            self._by_query[query] = future
        if self._signal is None:
            self._signal = _core.ChangeSignal(self.store)
            asyncio.get_running_loop().add_reader(self._signal.fileno(), self._on_signal)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.remove(waiter)
            if query:
                self._by_query.pop(query, None)

    def _on_signal(self) -> None:
        if self._signal is not None:
            self._signal.clear()
        self._moved.set()

    async def _poll(self) -> None:
        seen = -1
        while self._waiters:
            # Cleared before looking: a change after the look sets it again.
            self._moved.clear()
            self._cancels_seen, gone = self.store.cancelled_queries(self._cancels_seen)
            for query in gone:
                future = self._by_query.get(query)
                if future is not None and not future.done():
                    future.set_exception(ClientGone())
            now = self.store.index()
            if now != seen:
                seen = now
                for stamp, index, future in list(self._waiters):
                    if not future.done() and stamp() > index:
                        future.set_result(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), FALLBACK_S)


def collection_stamp(store: _core.Store, collection: str) -> Stamp:
    return lambda: store.collection_index(collection)


def record_stamp(store: _core.Store, collection: str, record_id: str) -> Stamp:
    """A record's version; the collection's index once it is gone (its delete moved it)."""

    def stamp() -> int:
        found = store.get(collection, record_id)
        return found[0] if found is not None else store.collection_index(collection)

    return stamp


async def wait_if_asked(hub: WatchHub, params: dict[str, list[str]], stamp: Stamp, holder: Holder) -> None:
    """Waits as the query's `index` and `wait` ask (not at all for a plain query). Takes
    them out of `params`, so what remains are the endpoint's own parameters."""
    blocking = take_blocking(params)
    if blocking is not None:
        await hub.wait_past(stamp, *blocking, holder=holder)
