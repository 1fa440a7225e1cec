"""Cluster mode: etcd is the source of truth, the local LMDB store a replica that serves reads.

A cluster server's store is `_core.Store(..., etcd=...)`: reads come from the replica (fed
by `replica.py`), and every write goes through the Rust write path's etcd backend
(rust/etcd/writes.rs): one etcd transaction whose compares carry the write's
preconditions and whose guard keys keep unique fields unique across the cluster, answered
once the local replica applied its revision (its `X-Registry-Index`). This module holds
what Python reads of the replica's state: freshness for the workers' staleness header,
`/health` and the metrics.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from registry_svc import _core

# The replica's state, written by the replicator (replica.py) beside the records.
REPLICA_STATE = _core.REPLICA_STATE
# A replica that has not heard from etcd for this long is stale: reads say so, writes are
# refused without being sent (rust/etcd/writes.rs holds the same number: it is exported).
STALE_AFTER_S = _core.STALE_AFTER_S
# How long a write waits for the local replica to apply it before answering anyway.
CATCH_UP_S = _core.CATCH_UP_S


def replica_state(store: _core.Store) -> dict[str, Any]:
    """What the replicator last wrote about itself ({} before it ran)."""
    raw = store.state(REPLICA_STATE)
    return orjson.loads(raw) if raw else {}


def fresh_until(state: dict[str, Any]) -> int:
    """Until when (unix ms) a replica in `state` counts as fresh: the Rust readers (the
    gates, DNS) answer by themselves only until then. 0 while it is not connected."""
    return int((float(state.get("contact") or 0) + STALE_AFTER_S) * 1000) if state.get("connected") else 0


def health(store: _core.Store, endpoints: list[str]) -> dict[str, Any]:
    """`/health` of a cluster server: the mode, the replica's revision, etcd's state."""
    state = replica_state(store)
    applied = store.index()
    contact = float(state.get("contact") or 0)
    stale = store.replica_staleness()
    etcd_revision = int(state.get("etcdRevision") or 0)
    return {
        "status": "ok",
        "mode": "cluster",
        "appliedRevision": applied,
        "etcd": {
            "connected": bool(state.get("connected")) and stale is None,
            "endpoints": endpoints,
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
