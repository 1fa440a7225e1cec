"""A small client of etcd's v3 API through its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
`/v3/watch`, `/v3/lease/*`), over plain HTTP/1.1 with pooled keep-alive connections.

etcd serves this gateway on every client port beside gRPC, with the same semantics (it
translates each call to the gRPC service in process), so no protoc-built stubs are needed.
Keys and values travel base64-encoded; revisions are strings of digits. A request that
fails to reach a member moves on to the next endpoint; an answer from etcd that is an
error (compacted, no leader, too many ops) is raised as `EtcdError` with etcd's code.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from registry_svc import _core

# gRPC codes etcd answers with.
CODE_OUT_OF_RANGE = 11  # "required revision has been compacted"
CODE_UNAVAILABLE = 14  # "no leader", "leader changed", member stopping

# A member that cannot reach a leader refuses requests carrying this metadata instead of
# answering from its own (possibly stale) state, and cancels such watches.
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
_HEADERS = list(REQUIRE_LEADER.items())


class EtcdUnavailable(Exception):
    """No endpoint answered (refused, reset, timed out, or no leader)."""


class EtcdAmbiguous(EtcdUnavailable):
    """A write was sent and its answer lost (a timeout, a reset, or etcd's own "unavailable"
    after it took the request): it may have been applied. Never sent again blindly: the
    caller reads what it would have written (`cluster.py`)."""


class EtcdError(Exception):
    """etcd answered the request with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Compacted(EtcdError):
    """The revision asked for is older than etcd's compaction."""


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


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


@dataclass(frozen=True)
class Event:
    """One change seen by a watch: a put (value set) or a delete (value None)."""

    key: bytes
    value: bytes | None
    revision: int


@dataclass(frozen=True)
class WatchMessage:
    """One message of a watch stream."""

    revision: int  # the header revision
    events: list[Event]
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


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
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._preferred = 0

    # -- transport ------------------------------------------------------------------

    def call(
        self, path: str, body: dict[str, Any], timeout: float | None = None, *, idempotent: bool = True
    ) -> dict[str, Any]:
        """POSTs `body` to `path` on the first endpoint that answers; returns the JSON answer.
        Raises EtcdUnavailable when none answers, EtcdError for an error answer. A request
        that is not `idempotent` (a txn) moves to the next endpoint only when it was not
        sent; sent and unanswered, it raises EtcdAmbiguous instead of being sent again."""
        payload = orjson.dumps(body)
        errors: list[str] = []
        start = self._preferred
        for attempt in range(len(self.endpoints)):
            index = (start + attempt) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                status, raw = self._post(endpoint, path, payload, timeout or self.timeout)
            except _core.MaybeAppliedError as e:
                if not idempotent:
                    raise EtcdAmbiguous("; ".join([*errors, str(e)])) from None
                errors.append(f"{endpoint}: {e}")
                continue
            except OSError as e:
                errors.append(f"{endpoint}: {e or type(e).__name__}")
                continue
            answer: dict[str, Any] = orjson.loads(raw) if raw else {}
            if status != 200:
                code = int(answer.get("code", 0))
                message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
                if code == CODE_UNAVAILABLE:
                    # "No leader" (refused before any proposal, require-leader) is never
                    # applied; "request timed out" or "leader changed" may be.
                    if not idempotent and "no leader" not in message:
                        raise EtcdAmbiguous("; ".join([*errors, f"{endpoint}: {message}"]))
                    errors.append(f"{endpoint}: {message}")
                    continue
                if code == CODE_OUT_OF_RANGE and "compacted" in message:
                    raise Compacted(code, message)
                raise EtcdError(code, message)
            self._preferred = index
            return answer
        raise EtcdUnavailable("; ".join(errors) or "no etcd endpoint")

    def _post(self, endpoint: str, path: str, payload: bytes, timeout: float) -> tuple[int, bytes]:
        # In Rust with the GIL released: the write path's threads then hold the GIL only for
        # their own JSON, not for HTTP parsing (see rust/etcd_http.rs).
        return _core.http_post(endpoint, path, payload, _HEADERS, timeout, self.connect_timeout)

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
        """Every key under `prefix` at one revision (paginated): (revision, key-values).
        Raises Compacted if that revision is compacted between pages."""
        end = prefix_end(prefix)
        first = self.range(prefix, end, limit=page)
        revision = int(first["header"]["revision"])
        kvs = [KeyValue.of(kv) for kv in first.get("kvs") or []]
        more = bool(first.get("more"))
        while more and kvs:
            answer = self.range(kvs[-1].key + b"\0", end, revision=revision, limit=page)
            kvs.extend(KeyValue.of(kv) for kv in answer.get("kvs") or [])
            more = bool(answer.get("more"))
        return revision, kvs

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
        that takes it."""
        body = {
            "create_request": {
                "key": b64(prefix),
                "range_end": b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
                "progress_notify": progress_notify,
            }
        }
        errors = []
        start = self._preferred
        for attempt in range(len(self.endpoints)):
            endpoint = self.endpoints[(start + attempt) % len(self.endpoints)]
            host, _, port = endpoint.rpartition(":")
            conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.connect_timeout)
            try:
                conn.connect()
                assert conn.sock is not None
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.sock.settimeout(self.timeout)
                conn.request(
                    "POST", "/v3/watch", orjson.dumps(body), {"Content-Type": "application/json", **REQUIRE_LEADER}
                )
                response = conn.getresponse()
                # Established: the stream may rightly stay silent for long; the
                # replicator's ping tells a dead stream from a quiet one and closes it.
                conn.sock.settimeout(None)
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                errors.append(f"{endpoint}: {e or type(e).__name__}")
                continue
            if response.status != 200:
                conn.close()
                errors.append(f"{endpoint}: HTTP {response.status}")
                continue
            return Watch(conn, response, endpoint)
        raise EtcdUnavailable("; ".join(errors) or "no etcd endpoint")


class Watch:
    """An open watch stream: iterate for messages; `close` (from any thread) ends it."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, endpoint: str) -> None:
        self._conn = conn
        self._response = response
        self.endpoint = endpoint

    def __iter__(self) -> Iterator[WatchMessage]:
        while True:
            try:
                line = self._response.readline()
            # AttributeError: http.client's reader when `close` ran from another thread.
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
                raise EtcdUnavailable(f"{self.endpoint}: watch stream broke: {e or type(e).__name__}") from None
            if not line:
                raise EtcdUnavailable(f"{self.endpoint}: watch stream ended")
            if not line.strip():
                continue
            message = orjson.loads(line)
            if "error" in message:
                error = message["error"]
                raise EtcdUnavailable(f"{self.endpoint}: watch failed: {error.get('message') or error}")
            yield _watch_message(message.get("result") or {})

    def close(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()


def _watch_message(result: dict[str, Any]) -> WatchMessage:
    events = []
    for event in result.get("events") or []:
        kv = event.get("kv") or {}
        deleted = event.get("type") == "DELETE"
        events.append(
            Event(
                key=unb64(kv["key"]),
                value=None if deleted else unb64(kv.get("value", "")),
                revision=int(kv.get("mod_revision", 0)),
            )
        )
    return WatchMessage(
        revision=int((result.get("header") or {}).get("revision", 0)),
        events=events,
        created=bool(result.get("created")),
        canceled=bool(result.get("canceled")),
        compact_revision=int(result.get("compact_revision", 0)),
        cancel_reason=str(result.get("cancel_reason", "")),
    )
