"""The node agent: this node's heartbeat, node liveness, and instance health checks.

Exactly one agent runs per node, whatever `--processes` is: it lives in the supervisor
process (`registry-svc serve`), which exists once per node, while the Robyn worker
processes only serve HTTP. It runs on its own asyncio loop in a thread.

Which instances this node checks: those whose `nodeUrl` is this node's URL, plus orphans
(no `nodeUrl`, one that names no registered node, or one whose node is not Healthy),
each adopted by one Healthy node chosen by rendezvous hashing of the instance id over the
Healthy nodes, so a dead node's instances are shared among the survivors. Every agent
derives the same answer from the same store (in cluster mode, the same replicated
records), so each instance has exactly one checker and no lease is needed for that.

A node whose heartbeats stop for three of its intervals is marked Unhealthy, and so is
every instance on it; the adopting nodes then probe those instances, so a backend that
still answers turns Healthy again instead of being stranded. When the node comes back, it
takes its instances back. On one machine whichever agent notices first marks it (the
write is a compare-and-set); in a cluster only the elected sweeper does, and a node whose
lease-bound live key is gone counts as silent after one interval (`membership.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from typing import Any

import orjson

from registry_svc import _core, auth, nodes, records, status, telemetry
from registry_svc.clock import parse_time
from registry_svc.cluster import replica_state
from registry_svc.etcd import EtcdError, EtcdUnavailable
from registry_svc.gpu import GpuSampler
from registry_svc.health import HealthChecker, pause, write_status
from registry_svc.membership import Membership
from registry_svc.settings import Settings

log = logging.getLogger("registry_svc")

MISSED_HEARTBEATS = 3
# How often the balancer counts of dead worker processes are looked for.
REAP_INTERVAL_S = 1.0


def checker_of(instance_id: str, node_ids: list[str]) -> str | None:
    """The node (of `node_ids`) that adopts an orphaned instance: rendezvous hashing, so
    adding or losing a node moves only the instances it gains or held."""
    if not node_ids:
        return None
    return max(node_ids, key=lambda node_id: hashlib.sha256(f"{node_id}/{instance_id}".encode()).digest())


class NodeAgent:
    """Heartbeats this node and checks the instances it is responsible for."""

    def __init__(
        self, store: _core.Store, settings: Settings, gpus: GpuSampler, membership: Membership | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.gpus = gpus
        self.membership = membership
        self.checker = HealthChecker(store, self.is_mine, _core.NetPolicy(list(settings.probe_networks), "probe"))
        self._live_node_urls: set[str] = set()
        self._healthy_ids: list[str] = []
        self._own_id: str | None = None
        # Cluster mode: since when etcd took this node's writes again after it could not
        # (silence before that counts against no node: nobody could heartbeat), and since
        # when this node is the sweeper (a fresh one waits a lease before judging).
        self._etcd_ok_since = time.time()
        self._etcd_failing = False
        self._sweeper_since: float | None = None
        # The node's instances that its absence made Unhealthy are given back once, at the
        # first heartbeat (a restart), and whenever the node was not Healthy before one.
        self._restore_due = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.load_scraper: _core.LoadScraper | None = None
        self._thread = threading.Thread(target=self._run, name="registry-node-agent", daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        self.refresh_nodes()
        # Model servers' load, scraped in Rust (rust/load/), fenced like the health checks.
        self.load_scraper = _core.LoadScraper(self.store, list(self.settings.probe_networks))
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        """Stops the agent's loop and waits for it (nothing to do if it never started)."""
        if self.load_scraper is not None:
            self.load_scraper.stop()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def is_mine(self, instance: dict[str, Any]) -> bool:
        node_url = instance.get("nodeUrl")
        if node_url == self.settings.self_url:
            return True
        if node_url is not None and node_url in self._live_node_urls:
            return False
        return self._own_id is not None and checker_of(instance["id"], self._healthy_ids) == self._own_id

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await asyncio.gather(
            self._heartbeat_loop(self._stop), self.checker.run(self._stop), self._reap_loop(self._stop)
        )

    async def _reap_loop(self, stop: asyncio.Event) -> None:
        """Every second, the in-flight counts of worker processes that died are taken out of
        the balancer's shared state (a crashed worker's requests are nobody's any more)."""
        while not stop.is_set():
            forgotten = self.store.reap_dead_processes()
            if forgotten:
                log.warning("forgot %d in-flight proxied request(s) of server processes that died", forgotten)
            await pause(stop, REAP_INTERVAL_S)

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        """Heartbeats every interval; in a cluster, sweeps twice per interval in between, so
        that a lease gone is noticed within half an interval."""
        loop = asyncio.get_running_loop()
        interval = self.settings.heartbeat_seconds
        tick = interval / 2 if self.membership is not None else interval
        next_beat = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval - tick / 4
                    await loop.run_in_executor(None, self.heartbeat)
                    if self._etcd_failing:
                        self._etcd_failing = False
                        self._etcd_ok_since = time.time()
                else:
                    await loop.run_in_executor(None, self.refresh_nodes)
            except (EtcdUnavailable, EtcdError, _core.StoreError) as e:
                self._etcd_failing = True
                log.warning("node heartbeat failed: %s", e)
            except Exception:
                log.exception("node heartbeat failed")
            await pause(stop, tick)

    def heartbeat(self) -> None:
        """Writes this node's fresh usage and GPUs (and renews its lease in a cluster), then
        sweeps for silent nodes."""
        usage = telemetry.usage_sample(self.settings.data_dir)
        gpus = self.gpus.sample(self.settings.self_url)
        before = nodes.find_by_url(self.store, self.settings.self_url)
        record = nodes.upsert_self(self.store, self.settings, usage, gpus)
        if self.membership is not None:
            was_sweeper = self.membership.sweeper
            self.membership.beat(record["id"])
            if self.membership.sweeper and not was_sweeper:
                self._sweeper_since = time.monotonic()
        if self._restore_due or (before is not None and before[1].get("status") != "Healthy"):
            self.restore_instances(record["id"])
            self._restore_due = False
        self.refresh_nodes()
        if self.judging():  # in a cluster, the sweeper alone
            for token_id in auth.sweep_expired(self.store):
                log.info("token %s expired and was removed", token_id)

    def restore_instances(self, node_id: str) -> None:
        """Gives this node's instances back what its absence took (`status.after_node_returned`)."""
        for instance_id in self.store.ids_by("instances", "nodeUrl", self.settings.self_url):
            write_status(
                self.store, instance_id, lambda current: status.after_node_returned(current, node_id), alive=False
            )

    def judging(self) -> bool:
        """Whether this node sweeps now: always on a single machine; in a cluster, when it
        holds the sweeper election and has held it for a full lease (a node whose lease
        lapsed under the previous sweeper is then gone for it too)."""
        if self.membership is None:
            return True
        if self._etcd_failing or not self.membership.sweeper or self._sweeper_since is None:
            return False
        if self._replica_in_contact_since() is None:
            return False
        return time.monotonic() - self._sweeper_since >= self.membership.ttl

    def _replica_in_contact_since(self) -> float | None:
        """Cluster mode: since when (unix s) this node's replica is in unbroken contact with
        etcd, None while it is not. A heartbeat that hung through an outage and then went
        through never saw the outage; the replicator's pings did."""
        state = replica_state(self.store)
        if not state.get("connected") or self.store.replica_staleness() is not None:
            return None
        return float(state.get("since") or 0)

    def refresh_nodes(self) -> None:
        """Marks nodes that missed their heartbeats Unhealthy (with their instances) and
        recomputes which URLs are live and which orphans this node adopts."""
        now = time.time()
        _, raws = self.store.list(nodes.NODES)
        node_records = [orjson.loads(raw) for raw in raws]
        sweeps = self.judging()
        leased = self.membership.live_node_ids() if self.membership is not None and sweeps else None
        # In a cluster, silence while etcd took no writes is nobody's fault.
        counted_from = 0.0
        if self.membership is not None:
            counted_from = max(self._etcd_ok_since, self._replica_in_contact_since() or 0.0)
        for node in node_records:
            if not sweeps or node["url"] == self.settings.self_url or node.get("status") != "Healthy":
                continue
            interval = float(node.get("heartbeatIntervalSeconds") or 10)
            silent = now - max(parse_time(node["lastHeartbeat"]).timestamp(), counted_from)
            lease_gone = leased is not None and node["id"] not in leased and silent > interval
            if silent > MISSED_HEARTBEATS * interval or lease_gone:
                self.mark_node_unhealthy(node, silent, "its lease expired" if lease_gone else None)
                node["status"] = "Unhealthy"
        live = {node["url"] for node in node_records if node.get("status") == "Healthy"}
        healthy = sorted(node["id"] for node in node_records if node.get("status") == "Healthy")
        own = next((node["id"] for node in node_records if node["url"] == self.settings.self_url), None)
        if (live, healthy, own) != (self._live_node_urls, self._healthy_ids, self._own_id):
            self._live_node_urls, self._healthy_ids, self._own_id = live, healthy, own
            self.checker.request_full_reload()  # which instances are this node's changed

    def mark_node_unhealthy(self, node: dict[str, Any], silent: float, why: str | None = None) -> None:
        """Marks a silent node Unhealthy, and then its instances, unless it heartbeated
        (or another agent marked it) meanwhile."""

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if (
                current is None
                or current.get("status") != "Healthy"
                or current["lastHeartbeat"] != node["lastHeartbeat"]
            ):
                return None
            current["status"] = "Unhealthy"
            return current

        if not records.update(self.store, nodes.NODES, node["id"], change, f"node '{node['id']}'").wrote:
            return
        reason = f"node {node['id']} ({node['url']}) missed {MISSED_HEARTBEATS} heartbeats ({int(silent)}s silent)"
        if why is not None:
            reason = f"node {node['id']} ({node['url']}) is gone: {why} ({int(silent)}s silent)"
        log.warning("%s; marking its instances Unhealthy", reason)
        for instance_id in self.store.ids_by("instances", "nodeUrl", node["url"]):
            write_status(self.store, instance_id, lambda current: status.after_node_lost(current, reason), alive=False)
