"""Where a registry lives in etcd, and the transactions that keep it consistent.

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
from dataclasses import dataclass
from typing import Any

from registry_svc import _core
from registry_svc.etcd import b64

DEFAULT_PREFIX = "/registry-svc/"
COLLECTIONS = tuple(_core.COLLECTIONS)
# Fields at most one record of the collection may hold: the store's unique indexes.
UNIQUE: dict[str, tuple[str, ...]] = {name: tuple(fields) for name, fields in _core.UNIQUE_FIELDS.items()}
# Collections whose deletes may be guarded on "nothing else changed" (the last admin token).
GUARDED = ("tokens",)
# etcd's --max-txn-ops (its default): the most operations (or compares) one txn may carry.
MAX_TXN_OPS = 128


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
