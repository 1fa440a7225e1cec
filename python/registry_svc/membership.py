"""This server's membership of a cluster: node liveness and the sweeper election, on etcd.

Each server holds one lease (TTL about three heartbeats) that it renews at every heartbeat.
The lease carries `live/<node id>`: when a server dies or is cut off, the lease expires and
etcd deletes the key at one revision, which every server sees. The same lease carries the
sweeper election (`elect/sweeper`, created if absent): the holder runs the cluster-wide
sweeps (marking dead nodes and their instances Unhealthy), and when it dies its key goes
with its lease and the next server to campaign takes over.
"""

from __future__ import annotations

import logging
import math
import time

import orjson

from registry_svc.etcd import Client, prefix_end, unb64
from registry_svc.etcd_keys import Layout, cmp_absent, op_get, op_put, range_kv

log = logging.getLogger("registry_svc")

SWEEPER = "sweeper"


class Membership:
    """The lease, the live key and the sweeper election of one server."""

    def __init__(self, client: Client, layout: Layout, heartbeat_seconds: float) -> None:
        self.client = client
        self.layout = layout
        # etcd's shortest effective TTL is about 1.5 election timeouts (1.5 s by default).
        self.ttl = max(2, math.ceil(3 * heartbeat_seconds))
        self.lease = 0
        self.sweeper = False

    def beat(self, node_id: str) -> None:
        """Renews the lease (granting a new one if it expired), re-puts the live key and
        campaigns for the sweeper. Raises the etcd client's errors."""
        if self.lease and self.client.lease_keepalive(self.lease) == 0:
            log.warning("cluster: lease %x of node %s expired; granting a new one", self.lease, node_id)
            self.lease = 0
        if not self.lease:
            self.lease = self.client.lease_grant(self.ttl)
        self.client.put(self.layout.live(node_id), orjson.dumps({"since": time.time()}), self.lease)
        key = self.layout.elect(SWEEPER)
        answer = self.client.txn([cmp_absent(key)], [op_put(key, node_id, self.lease)], [op_get(key)])
        holder = node_id if answer.get("succeeded") else unb64((range_kv(answer, 0) or {}).get("value", "")).decode()
        if (holder == node_id) != self.sweeper:
            log.info("cluster: node %s %s the sweeper", node_id, "is now" if holder == node_id else "is no longer")
        self.sweeper = holder == node_id

    def live_node_ids(self) -> set[str]:
        """Ids of the nodes whose lease is alive."""
        prefix = self.layout.live_prefix
        answer = self.client.range(prefix, prefix_end(prefix), keys_only=True)
        return {unb64(kv["key"])[len(prefix) :].decode() for kv in answer.get("kvs") or []}

    def leave(self) -> None:
        """Revokes the lease on a clean stop: the live and election keys go at once."""
        if self.lease:
            self.client.lease_revoke(self.lease)
            self.lease = 0
