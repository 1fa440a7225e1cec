"""Cluster mode: etcd is the source of truth, the local LMDB store a replica that serves reads.

`EtcdStore` is the store every handler, the health checker and the node agent already use
(`_core.Store`), with its write methods applied to etcd instead of the local writer: each
write is one etcd transaction whose compares carry the write's preconditions, and whose
guard keys keep unique fields unique across the cluster. A write is answered once the
local replica (fed by `replica.py`) has applied the transaction's revision, so the next
read on this server sees it; its `X-Registry-Index` is that etcd revision.

Key layout under the prefix (default `/registry-svc/`), versioned so that a later format
can live beside this one:

    v1/rec/<collection>/<id>              the record's JSON, exactly as served
    v1/uniq/<collection>/<field>/<b64>    guard of a unique field value -> the holder's id
    v1/coll/<collection>                  touched by every write of a guarded collection
    v1/live/<node id>                     node liveness, bound to the node's lease
    v1/elect/sweeper                      the server running cluster-wide sweeps (leased)
    v1/meta/bootstrap                     the first admin token's id (created once)

Invariant kept by every transaction: a guard key exists exactly while a record holds that
value, and names that record.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from registry_svc import _core
from registry_svc.etcd import Client, EtcdAmbiguous, EtcdError, EtcdUnavailable, b64, unb64

log = logging.getLogger("registry_svc")

DEFAULT_PREFIX = "/registry-svc/"
COLLECTIONS = ("instances", "definitions", "nodes", "tokens", "routes")
# Fields at most one record of the collection may hold (the Rust store's unique indexes).
UNIQUE: dict[str, tuple[str, ...]] = {"instances": ("url",), "nodes": ("url",), "tokens": ("secretHash",)}
# Collections whose deletes may be guarded on "nothing else changed" (the last admin token).
GUARDED = ("tokens",)
MAX_ATTEMPTS = 8
# etcd's --max-txn-ops (its default): the most operations (or compares) one txn may carry.
MAX_TXN_OPS = 128


class LostAnswer(Exception):
    """A txn was sent and its answer lost: it may have been applied."""


# The replica's state, written by the replicator (replica.py) beside the records.
REPLICA_STATE = "replica"
# A replica that has not heard from etcd for this long is stale: reads say so, writes are
# refused without being sent.
STALE_AFTER_S = 3.0


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot hold a registry's keys, or None: it must start and end with
    '/' and name something below the root (the root is every other tenant's key space)."""
    if not prefix.startswith("/") or not prefix.endswith("/"):
        return f"must start and end with '/', got '{prefix}'"
    if prefix == "/":
        return "must name a prefix below '/' (e.g. /registry-svc/), not the root of etcd's key space"
    return None


@dataclass(frozen=True)
class Layout:
    """Where each thing lives in etcd."""

    prefix: str = DEFAULT_PREFIX

    @property
    def root(self) -> bytes:
        return f"{self.prefix}v1/".encode()

    @property
    def rec_prefix(self) -> bytes:
        return self.root + b"rec/"

    def rec(self, collection: str, record_id: str) -> bytes:
        return self.rec_prefix + f"{collection}/{record_id}".encode()

    def parse_rec(self, key: bytes) -> tuple[str, str] | None:
        """(collection, id) of a record key, None for anything else."""
        if not key.startswith(self.rec_prefix):
            return None
        collection, sep, record_id = key[len(self.rec_prefix) :].decode().partition("/")
        return (collection, record_id) if sep and collection in COLLECTIONS and record_id else None

    def uniq(self, collection: str, field: str, value: str) -> bytes:
        encoded = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
        return self.root + f"uniq/{collection}/{field}/{encoded}".encode()

    def coll(self, collection: str) -> bytes:
        return self.root + f"coll/{collection}".encode()

    @property
    def live_prefix(self) -> bytes:
        return self.root + b"live/"

    def live(self, node_id: str) -> bytes:
        return self.live_prefix + node_id.encode()

    def elect(self, job: str) -> bytes:
        return self.root + f"elect/{job}".encode()

    @property
    def bootstrap(self) -> bytes:
        return self.root + b"meta/bootstrap"


def cmp_mod(key: bytes, revision: int, result: str = "EQUAL") -> dict[str, Any]:
    """Compare a key's mod revision (0 for an absent key)."""
    return {"target": "MOD", "key": b64(key), "result": result, "mod_revision": str(revision)}


def cmp_absent(key: bytes) -> dict[str, Any]:
    return {"target": "CREATE", "key": b64(key), "result": "EQUAL", "create_revision": "0"}


def cmp_value(key: bytes, value: str) -> dict[str, Any]:
    return {"target": "VALUE", "key": b64(key), "result": "EQUAL", "value": b64(value)}


def op_put(key: bytes, value: bytes | str, lease: int = 0) -> dict[str, Any]:
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def op_delete(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def op_get(key: bytes) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def range_kv(answer: dict[str, Any], position: int) -> dict[str, Any] | None:
    """The key-value of the `position`-th range in a txn's answer (None if absent)."""
    responses = answer.get("responses") or []
    kvs = (responses[position].get("response_range") or {}).get("kvs") or []
    return kvs[0] if kvs else None


def unique_values(collection: str, record: dict[str, Any]) -> dict[str, str]:
    return {f: v for f in UNIQUE.get(collection, ()) if isinstance(v := record.get(f), str)}


def record_ops(
    layout: Layout, collection: str, record_id: str, json: bytes, new: dict[str, Any], old: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, str, bytes]]]:
    """The compares and ops that put a record and keep its guard keys in step: (compares on
    newly claimed guards, success ops, claimed (field, value, guard key))."""
    compares: list[dict[str, Any]] = []
    ops = [op_put(layout.rec(collection, record_id), json)]
    claimed = []
    old_values = unique_values(collection, old or {})
    new_values = unique_values(collection, new)
    for field, value in new_values.items():
        if old_values.get(field) == value:
            continue
        guard = layout.uniq(collection, field, value)
        compares.append(cmp_absent(guard))
        ops.append(op_put(guard, record_id))
        claimed.append((field, value, guard))
    for field, value in old_values.items():
        if new_values.get(field) != value:
            ops.append(op_delete(layout.uniq(collection, field, value)))
    if collection in GUARDED:
        ops.append(op_put(layout.coll(collection), b""))
    return compares, ops, claimed


def replica_state(store: _core.Store) -> dict[str, Any]:
    """What the replicator last wrote about itself ({} before it ran)."""
    raw = store.state(REPLICA_STATE)
    return orjson.loads(raw) if raw else {}


def staleness(state: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since the replica last heard from etcd, when that is more than
    STALE_AFTER_S (None while it is fresh)."""
    contact = float(state.get("contact") or 0)
    age = (time.time() if now is None else now) - contact
    return age if age > STALE_AFTER_S else None


def fresh_until(state: dict[str, Any]) -> int:
    """Until when (unix ms) a replica in `state` counts as fresh: the Rust readers (the
    gates, DNS) answer by themselves only until then. 0 while it is not connected."""
    return int((float(state.get("contact") or 0) + STALE_AFTER_S) * 1000) if state.get("connected") else 0


def health(store: EtcdStore) -> dict[str, Any]:
    """`/health` of a cluster server: the mode, the replica's revision, etcd's state."""
    state = store.replica()
    applied = store.index()
    contact = float(state.get("contact") or 0)
    stale = staleness(state)
    etcd_revision = int(state.get("etcdRevision") or 0)
    return {
        "status": "ok",
        "mode": "cluster",
        "appliedRevision": applied,
        "etcd": {
            "connected": bool(state.get("connected")) and stale is None,
            "endpoints": store.etcd.endpoints,
            "watchEndpoint": state.get("endpoint"),
            "revision": etcd_revision,
            "lastContactSecondsAgo": round(time.time() - contact, 3) if contact else None,
            "lastError": state.get("lastError"),
        },
        # etcd's revision counts every key of the cluster (leases, other prefixes), so a
        # replica that is caught up may still show a small lag here.
        "replicaLagRevisions": max(0, etcd_revision - applied),
        "staleSeconds": round(stale, 1) if stale is not None else None,
        "relists": state.get("relists", 0),
        "divergencesRepaired": state.get("divergences", 0),
    }


class EtcdStore(_core.Store):
    """The store of a cluster server: reads from the local replica, writes through etcd."""

    def __new__(
        cls,
        path: str,
        map_size: int,
        *,
        etcd: Client,
        layout: Layout,
        catch_up_seconds: float = 5.0,
        **options: Any,
    ) -> EtcdStore:
        return super().__new__(cls, path, map_size, **options)

    def __init__(
        self,
        path: str,
        map_size: int,
        *,
        etcd: Client,
        layout: Layout,
        catch_up_seconds: float = 5.0,
        **options: Any,
    ) -> None:
        self.etcd = etcd
        self.layout = layout
        self.catch_up_seconds = catch_up_seconds
        self._async = ThreadPoolExecutor(32, thread_name_prefix="etcd-write")
        self._state: tuple[float, dict[str, Any]] = (0.0, {})

    # -- helpers --------------------------------------------------------------------

    def replica(self) -> dict[str, Any]:
        """The replica's state, re-read at most every 50 ms."""
        at, state = self._state
        now = time.monotonic()
        if now - at > 0.05:
            state = replica_state(self)
            self._state = (now, state)
        return state

    def wait_applied(self, revision: int) -> bool:
        """Waits (at most `catch_up_seconds`) until the local replica applied `revision`."""
        if self.wait_index(revision, self.catch_up_seconds):
            return True
        log.warning(
            "the local replica did not reach revision %d within %gs (it is at %d); answering anyway",
            revision, self.catch_up_seconds, self.index(),
        )  # fmt: skip
        return False

    def _require_etcd(self) -> None:
        age = staleness(self.replica())
        if age is not None:
            raise _core.StoreError(
                f"etcd is unreachable from this server (no contact for {age:.1f}s); nothing was written"
            )

    def _txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The txn's answer. LostAnswer when it was sent and its answer lost (it may have
        been applied: the caller reads the record before anything is sent again)."""
        try:
            return self.etcd.txn(compare, success, failure)
        except EtcdAmbiguous as e:
            raise LostAnswer(str(e)) from None
        except EtcdUnavailable as e:
            raise _core.StoreError(
                f"etcd did not confirm the write ({e}); it was not acknowledged: read before retrying"
            ) from None
        except EtcdError as e:
            raise _core.StoreError(f"etcd refused the write: {e}") from None

    def _fetch(self, collection: str, record_id: str) -> tuple[int, bytes] | None:
        try:
            kv = self.etcd.get(self.layout.rec(collection, record_id))
        except (EtcdUnavailable, EtcdError) as e:
            raise _core.StoreError(f"etcd is unavailable ({e}); nothing was written") from None
        return None if kv is None else (kv.mod_revision, kv.value)

    def _read_back(self, collection: str, record_id: str) -> tuple[int, tuple[int, bytes] | None]:
        """After a lost answer: etcd's revision and the record as it is now (a linearizable
        read). StoreError when etcd cannot say: the write is then neither confirmed nor
        refused."""
        try:
            answer = self.etcd.range(self.layout.rec(collection, record_id))
        except (EtcdUnavailable, EtcdError) as e:
            raise _core.StoreError(
                f"etcd did not confirm the write and cannot be read back ({e}); it was not acknowledged: "
                "read before retrying"
            ) from None
        kvs = answer.get("kvs") or []
        now = (int(kvs[0]["mod_revision"]), unb64(kvs[0].get("value", ""))) if kvs else None
        return int(answer["header"]["revision"]), now

    @staticmethod
    def _mismatch(collection: str, record_id: str, expected: int | None, actual: int) -> _core.VersionMismatchError:
        return _core.VersionMismatchError(
            f"{collection}/{record_id}: expected version {expected}, found {actual or None} (changed concurrently)"
        )

    # -- writes ---------------------------------------------------------------------

    def put(self, collection_name: str, id: str, json: bytes, expect_version: int | None = None) -> int:
        """Writes the record to etcd (one txn) and returns its revision once the local
        replica applied it. Same preconditions and errors as the local store."""
        self.check_record(collection_name, id, json)
        self._require_etcd()
        revision = self._put(collection_name, id, json, expect_version)
        self.wait_applied(revision)
        return revision

    def _put(self, collection: str, record_id: str, json: bytes, expect: int | None) -> int:
        new = orjson.loads(json)
        current = self.get(collection, record_id)
        key = self.layout.rec(collection, record_id)
        own_guards: set[bytes] = set()
        for _ in range(MAX_ATTEMPTS):
            version, old_json = current if current is not None else (0, None)
            if expect is not None and version != expect:
                raise self._mismatch(collection, record_id, expect or None, version)
            old = orjson.loads(old_json) if old_json else None
            compares, ops, claimed = record_ops(self.layout, collection, record_id, json, new, old)
            compares = [
                cmp_value(c[2], record_id) if c[2] in own_guards else cmp
                for c, cmp in zip(claimed, compares, strict=True)
            ]
            try:
                answer = self._txn(
                    [cmp_mod(key, version), *compares], ops, [op_get(key), *(op_get(guard) for _, _, guard in claimed)]
                )
            except LostAnswer:
                # Applied or not: the record says. Ours (the same bytes) means applied; still
                # at the version the txn compared, not applied, so it may be sent again;
                # anything else was written by someone else meanwhile: decide again on it.
                _, now = self._read_back(collection, record_id)
                if now is not None and now[1] == json:
                    return now[0]
                if (now[0] if now else 0) != version and expect is not None:
                    raise self._mismatch(collection, record_id, expect or None, now[0] if now else 0) from None
                current = now
                continue
            revision = int(answer["header"]["revision"])
            if answer.get("succeeded"):
                return revision
            kv = range_kv(answer, 0)
            now = (int(kv["mod_revision"]), unb64(kv.get("value", ""))) if kv else None
            if (now[0] if now else 0) != version:
                # Changed meanwhile (or this replica is behind): decide again on etcd's record,
                # and let a caller that retries read a replica that has caught up.
                self.wait_applied(revision)
                if expect is not None:
                    raise self._mismatch(collection, record_id, expect or None, now[0] if now else 0)
                current = now
                continue
            for position, (field, value, guard) in enumerate(claimed, start=1):
                holder_kv = range_kv(answer, position)
                if holder_kv is None:
                    continue
                holder = unb64(holder_kv.get("value", "")).decode()
                if holder == record_id:
                    own_guards.add(guard)
                    continue
                self.wait_applied(revision)
                raise _core.ConflictError(f"{collection}: {field} '{value}' is already held by '{holder}'", holder)
        raise self._mismatch(collection, record_id, expect, current[0] if current else 0)

    def put_nowait(
        self,
        collection_name: str,
        id: str,
        json: bytes,
        expect_version: int | None,
        done: Callable[[int | _core.StoreError], object],
    ) -> None:
        """`put` on a pool thread; `done(revision or exception)` is called from there."""

        def run() -> None:
            result: int | _core.StoreError
            try:
                result = self.put(collection_name, id, json, expect_version)
            except _core.StoreError as e:
                result = e
            except Exception as e:
                log.exception("cluster write failed")
                result = _core.StoreError(f"the write failed: {e}")
            done(result)

        self._async.submit(run)

    def put_many(self, collection_name: str, items: list[tuple[str, bytes]]) -> int:
        """Writes every record, each with its guard keys, in one etcd txn: all or nothing, as
        on the local store. More than etcd's ops per txn (MAX_TXN_OPS) is refused, with
        nothing written; returns the txn's revision."""
        if len({record_id for record_id, _ in items}) != len(items):
            raise _core.InvalidRecordError(f"{collection_name}: the same id twice in one write")
        for record_id, json in items:
            self.check_record(collection_name, record_id, json)
        self._require_etcd()
        theirs = {record_id for record_id, _ in items}
        for _ in range(MAX_ATTEMPTS):
            compares: list[dict[str, Any]] = []
            ops: list[dict[str, Any]] = []
            claimed: list[tuple[str, str, bytes]] = []
            for record_id, json in items:
                current = self._fetch(collection_name, record_id)
                version, old_json = current if current is not None else (0, None)
                old = orjson.loads(old_json) if old_json else None
                own_compares, own_ops, own_claimed = record_ops(
                    self.layout, collection_name, record_id, json, orjson.loads(json), old
                )
                compares += [cmp_mod(self.layout.rec(collection_name, record_id), version), *own_compares]
                ops += own_ops
                claimed += own_claimed
            if max(len(ops), len(compares)) > MAX_TXN_OPS:
                raise _core.InvalidRecordError(
                    f"{len(items)} records need {max(len(ops), len(compares))} operations in one etcd txn, past "
                    f"etcd's {MAX_TXN_OPS}; nothing was written: write fewer at once"
                )
            try:
                answer = self._txn(compares, ops, [op_get(guard) for _, _, guard in claimed])
            except LostAnswer:
                if all((now := self._fetch(collection_name, i)) is not None and now[1] == j for i, j in items):
                    revision = self.etcd.range(self.layout.rec(collection_name, items[0][0]))["header"]["revision"]
                    self.wait_applied(int(revision))
                    return int(revision)
                continue  # one txn: none of it applied (or another changed them): decide again
            revision = int(answer["header"]["revision"])
            if answer.get("succeeded"):
                self.wait_applied(revision)
                return revision
            for position, (field, value, _) in enumerate(claimed):
                holder_kv = range_kv(answer, position)
                holder = unb64(holder_kv.get("value", "")).decode() if holder_kv else None
                if holder is not None and holder not in theirs:
                    self.wait_applied(revision)
                    raise _core.ConflictError(
                        f"{collection_name}: {field} '{value}' is already held by '{holder}'", holder
                    )
            # A record changed meanwhile: read the versions again.
        raise _core.VersionMismatchError(
            f"{collection_name}: the records kept changing concurrently; nothing was written"
        )

    def delete(
        self,
        collection_name: str,
        id: str,
        expect_version: int | None = None,
        expect_collection_index: int | None = None,
    ) -> int:
        """Deletes the record and its guard keys in one txn. With `expect_collection_index`,
        only if nothing in the collection was written after that revision."""
        self._require_etcd()
        key = self.layout.rec(collection_name, id)
        current = self.get(collection_name, id) or self._fetch(collection_name, id)
        for _ in range(MAX_ATTEMPTS):
            if current is None:
                raise _core.NotFoundError(f"{collection_name}: no record with id '{id}'")
            version, old_json = current
            if expect_version is not None and version != expect_version:
                raise self._mismatch(collection_name, id, expect_version or None, version)
            old = orjson.loads(old_json)
            ops = [op_delete(key)]
            ops += [
                op_delete(self.layout.uniq(collection_name, f, v))
                for f, v in unique_values(collection_name, old).items()
            ]
            compares = [cmp_mod(key, version)]
            if expect_collection_index is not None:
                # Every write of a guarded collection touches its coll key at its revision.
                compares.append(cmp_mod(self.layout.coll(collection_name), expect_collection_index + 1, "LESS"))
            if collection_name in GUARDED:
                ops.append(op_put(self.layout.coll(collection_name), b""))
            try:
                answer = self._txn(compares, ops, [op_get(key), op_get(self.layout.coll(collection_name))])
            except LostAnswer:
                # Gone means applied (or deleted by another: gone either way); still at the
                # compared version, not applied; otherwise decide again on what is there.
                revision, now = self._read_back(collection_name, id)
                if now is None:
                    self.wait_applied(revision)
                    return revision
                if now[0] != version and expect_version is not None:
                    raise self._mismatch(collection_name, id, expect_version or None, now[0]) from None
                current = now
                continue
            revision = int(answer["header"]["revision"])
            if answer.get("succeeded"):
                self.wait_applied(revision)
                return revision
            self.wait_applied(revision)
            kv = range_kv(answer, 0)
            now = (int(kv["mod_revision"]), unb64(kv.get("value", ""))) if kv else None
            if (now[0] if now else 0) == version:
                coll_kv = range_kv(answer, 1)
                actual = int(coll_kv["mod_revision"]) if coll_kv else 0
                raise _core.VersionMismatchError(
                    f"{collection_name}: expected collection index {expect_collection_index}, found {actual} (changed concurrently)"
                )
            if expect_version is not None:
                raise self._mismatch(collection_name, id, expect_version or None, now[0] if now else 0)
            current = now
        raise self._mismatch(collection_name, id, expect_version, current[0] if current else 0)

    def close(self) -> None:
        self._async.shutdown(wait=True)
        super().close()
