"""Where a registry lives in etcd, and the JSON of the transactions Python itself sends
(membership, the bootstrap token, the benchmarks).

The key layout and the guard-key rule are Rust's (rust/etcd/keys.rs), the ones the write
path (rust/etcd/writes.rs) uses: `Layout` is `_core.EtcdLayout`, and `record_ops` asks
Rust for the ops that put a record with its guard keys in step.

    v1/rec/<collection>/<id>              the record's JSON, exactly as served
    v1/uniq/<collection>/<field>/<b64>    guard of a unique field value -> the holder's id
    v1/coll/<collection>                  touched by every write of a guarded collection
    v1/live/<node id>                     node liveness, bound to the node's lease
    v1/elect/sweeper                      the server running cluster-wide sweeps (leased)
    v1/meta/bootstrap                     the first admin token's id (created once)
"""

from __future__ import annotations

from typing import Any

import orjson

from registry_svc import _core
from registry_svc.etcd import b64

DEFAULT_PREFIX = _core.ETCD_DEFAULT_PREFIX
COLLECTIONS = tuple(_core.COLLECTIONS)
# etcd's --max-txn-ops (its default): the most operations (or compares) one txn may carry.
MAX_TXN_OPS = _core.ETCD_MAX_TXN_OPS
Layout = _core.EtcdLayout
prefix_problem = _core.etcd_prefix_problem


def cmp_mod(key: bytes, revision: int, result: str = "EQUAL") -> dict[str, Any]:
    """Compare a key's mod revision (0 for an absent key)."""
    return {"target": "MOD", "key": b64(key), "result": result, "mod_revision": str(revision)}


def cmp_absent(key: bytes) -> dict[str, Any]:
    return {"target": "CREATE", "key": b64(key), "result": "EQUAL", "create_revision": "0"}


def op_put(key: bytes, value: bytes | str, lease: int = 0) -> dict[str, Any]:
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def op_get(key: bytes) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def range_kv(answer: dict[str, Any], position: int) -> dict[str, Any] | None:
    """The key-value of the `position`-th range in a txn's answer (None if absent)."""
    responses = answer.get("responses") or []
    kvs = (responses[position].get("response_range") or {}).get("kvs") or []
    return kvs[0] if kvs else None


def record_ops(layout: Layout, collection: str, record_id: str, json: bytes) -> tuple[list[Any], list[Any]]:
    """The compares (newly claimed guards absent) and ops that put a new record with its
    guard keys, by the write path's own rule."""
    compares, ops = orjson.loads(_core.etcd_record_ops(layout, collection, record_id, json))
    return compares, ops
