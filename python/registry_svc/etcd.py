"""A small client of etcd's v3 API through its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
`/v3/watch`, `/v3/lease/*`), over plain HTTP/1.1 with pooled keep-alive connections. The
calls, the watch stream and the listings go through the Rust client (`_core.EtcdClient`,
rust/etcd/), the one the write path uses; Python builds the JSON of its own calls.

etcd serves this gateway on every client port beside gRPC, with the same semantics (it
translates each call to the gRPC service in process), so no protoc-built stubs are needed.
Keys and values travel base64-encoded; revisions are strings of digits. A request that
fails to reach a member moves on to the next endpoint; an answer from etcd that is an
error (compacted, no leader, too many ops) is raised as `EtcdError` with etcd's code.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from registry_svc import _core

# etcd's errors, raised by the Rust client (rust/etcd/client.rs, watch.rs, list.rs).
EtcdUnavailable = _core.EtcdUnavailable
EtcdAmbiguous = _core.EtcdAmbiguous
EtcdError = _core.EtcdError
Compacted = _core.Compacted


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


# The range end covering every key that starts with a prefix (the watch's rule too).
prefix_end = _core.etcd_prefix_end


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0

    @classmethod
    def of(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(
            key=unb64(kv["key"]),
            value=unb64(kv.get("value", "")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            lease=int(kv.get("lease", 0)),
        )


# One message of a watch stream: `revision` (the header's), `events` as (key, value or
# None for a delete, mod revision), `created`, `canceled`, `compact_revision`,
# `cancel_reason`. Read and decoded in Rust (rust/etcd/watch.rs).
WatchMessage = _core.WatchMessage
Watch = _core.EtcdWatch


def parse_endpoints(text: str) -> list[str]:
    """`http://H:P[,http://H:P...]` as a list of `H:P`; ValueError names a bad one."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"'{item}' is not an etcd endpoint such as http://127.0.0.1:2379 (https is not supported)")
        try:
            port = parts.port or 2379
        except ValueError:
            raise ValueError(f"'{item}' has a bad port") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        out.append(f"{host}:{port}")
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


class Client:
    """etcd through its JSON gateway, with failover across `endpoints` (`host:port`).

    Thread-safe: each thread keeps its own keep-alive connection to each endpoint.
    """

    def __init__(self, endpoints: list[str], timeout: float = 3.0, connect_timeout: float = 1.0) -> None:
        self.endpoints = list(endpoints)
        # The unary calls: the same client the write path calls from Rust (`Store(etcd=)`).
        self.core = _core.EtcdClient(self.endpoints, timeout, connect_timeout)

    # -- transport ------------------------------------------------------------------

    def call(
        self, path: str, body: dict[str, Any], timeout: float | None = None, *, idempotent: bool = True
    ) -> dict[str, Any]:
        """POSTs `body` to `path` on the first endpoint that answers; returns the JSON answer.
        Raises EtcdUnavailable when none answers, EtcdError for an error answer. A request
        that is not `idempotent` (a txn) moves to the next endpoint only when it was not
        sent; sent and unanswered, it raises EtcdAmbiguous instead of being sent again.
        The rule and the failover are the Rust client's, which the write path uses too."""
        answer: dict[str, Any] = orjson.loads(self.core.call(path, orjson.dumps(body), timeout, idempotent))
        return answer

    # -- KV -------------------------------------------------------------------------

    def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        if count_only:
            body["count_only"] = True
        if serializable:
            body["serializable"] = True
        return self.call("/v3/kv/range", body, timeout)

    def get(self, key: bytes) -> KeyValue | None:
        kvs = self.range(key).get("kvs") or []
        return KeyValue.of(kvs[0]) if kvs else None

    def list_prefix(self, prefix: bytes, page: int = 1000) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` at one revision (paginated, in Rust): (revision,
        key-values). Raises Compacted if that revision is compacted between pages."""
        listing = self.core.list_prefix(prefix, page=page)
        return listing.revision, [KeyValue(k, v, 0, r) for k, v, r in listing.items()]

    def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        return self.call(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []}, idempotent=False
        )

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete_prefix(self, prefix: bytes) -> int:
        answer = self.call("/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return int(answer["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True}, timeout=10.0)

    # -- leases ---------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Renews the lease once; returns its remaining TTL (0: expired or revoked)."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease_id)})
        return int((answer.get("result") or {}).get("TTL", 0))

    def lease_revoke(self, lease_id: int) -> None:
        self.call("/v3/lease/revoke", {"ID": str(lease_id)})

    # -- watch ----------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int, progress_notify: bool = True) -> Watch:
        """A watch of every key under `prefix` from `start_revision`, on the first endpoint
        that takes it: `next()` for each message, `close()` from any thread."""
        return _core.EtcdWatch(self.core, prefix, start_revision, progress_notify)
