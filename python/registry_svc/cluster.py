"""Cluster mode: etcd is the source of truth, the local LMDB store a replica that serves reads.

`EtcdStore` is the store every handler, the health checker and the node agent already use
(`_core.Store`), with its write methods applied to etcd instead of the local writer: each
write is one etcd transaction whose compares carry the write's preconditions, and whose
guard keys keep unique fields unique across the cluster. A write is answered once the
local replica (fed by `replica.py`) has applied the transaction's revision, so the next
read on this server sees it; its `X-Registry-Index` is that etcd revision.

The keys and the transactions that keep them consistent are `etcd_keys.py`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from registry_svc import _core
from registry_svc.etcd import Client, EtcdAmbiguous, EtcdError, EtcdUnavailable, unb64
from registry_svc.etcd_keys import (
    GUARDED,
    MAX_TXN_OPS,
    Layout,
    cmp_mod,
    cmp_value,
    op_delete,
    op_get,
    op_put,
    range_kv,
    record_ops,
    unique_values,
)

log = logging.getLogger("registry_svc")

MAX_ATTEMPTS = 8


class LostAnswer(Exception):
    """A txn was sent and its answer lost: it may have been applied."""


# The replica's state, written by the replicator (replica.py) beside the records.
REPLICA_STATE = "replica"
# A replica that has not heard from etcd for this long is stale: reads say so, writes are
# refused without being sent.
STALE_AFTER_S = 3.0


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
