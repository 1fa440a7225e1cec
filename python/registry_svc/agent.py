"""The node agent: this node's heartbeat, node liveness, and instance health checks.

Exactly one agent runs per node, whatever `--processes` is: it lives in the supervisor
process (`registry-svc serve`), which exists once per node, while the Robyn worker
processes only serve HTTP. It runs on its own asyncio loop in a thread.

Which instances this node checks: those whose `nodeUrl` is this node's URL, plus orphans
(no `nodeUrl`, one that names no registered node, or one whose node is not Healthy),
which the Healthy node with the smallest id adopts. Every agent derives the same answer
from the same store, so no lease is needed. A node whose heartbeats stop for three of its
intervals is marked Unhealthy by whichever agent notices first, and so is every instance
on it; the adopting node then probes those instances, so a backend that still answers
turns Healthy again instead of being stranded. When the node comes back, it takes its
instances back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import orjson

from registry_svc import _core, nodes, records, status, telemetry
from registry_svc.clock import parse_time
from registry_svc.gpu import GpuSampler
from registry_svc.health import HealthChecker, pause, write_status
from registry_svc.netguard import NetworkPolicy
from registry_svc.settings import Settings

log = logging.getLogger("registry_svc")

MISSED_HEARTBEATS = 3


class NodeAgent:
    """Heartbeats this node and checks the instances it is responsible for."""

    def __init__(self, store: _core.Store, settings: Settings, gpus: GpuSampler) -> None:
        self.store = store
        self.settings = settings
        self.gpus = gpus
        self.checker = HealthChecker(store, self.is_mine, NetworkPolicy.of(settings.probe_networks, "probe"))
        self._live_node_urls: set[str] = set()
        self._adopts_orphans = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="registry-node-agent", daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        self.refresh_nodes()
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        """Stops the agent's loop and waits for it (nothing to do if it never started)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def is_mine(self, instance: dict[str, Any]) -> bool:
        node_url = instance.get("nodeUrl")
        if node_url == self.settings.self_url:
            return True
        return self._adopts_orphans and (node_url is None or node_url not in self._live_node_urls)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await asyncio.gather(self._heartbeat_loop(self._stop), self.checker.run(self._stop))

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await loop.run_in_executor(None, self.heartbeat)
            except Exception:
                log.exception("node heartbeat failed")
            await pause(stop, self.settings.heartbeat_seconds)

    def heartbeat(self) -> None:
        """Writes this node's fresh usage and GPUs, then sweeps for silent nodes."""
        usage = telemetry.usage_sample(self.settings.data_dir)
        gpus = self.gpus.sample(self.settings.self_url)
        nodes.upsert_self(self.store, self.settings, usage, gpus)
        self.refresh_nodes()

    def refresh_nodes(self) -> None:
        """Marks nodes that missed their heartbeats Unhealthy (with their instances) and
        recomputes which URLs are known and whether this node adopts orphans."""
        now = time.time()
        _, raws = self.store.list(nodes.NODES)
        node_records = [orjson.loads(raw) for raw in raws]
        for node in node_records:
            if node["url"] != self.settings.self_url and node.get("status") == "Healthy":
                interval = float(node.get("heartbeatIntervalSeconds") or 10)
                silent = now - parse_time(node["lastHeartbeat"]).timestamp()
                if silent > MISSED_HEARTBEATS * interval:
                    self.mark_node_unhealthy(node, silent)
                    node["status"] = "Unhealthy"
        live = {node["url"] for node in node_records if node.get("status") == "Healthy"}
        healthy = sorted(node["id"] for node in node_records if node.get("status") == "Healthy")
        own = nodes.find_by_url(self.store, self.settings.self_url)
        adopts = bool(healthy) and own is not None and own[1]["id"] == healthy[0]
        if (live, adopts) != (self._live_node_urls, self._adopts_orphans):
            self._live_node_urls, self._adopts_orphans = live, adopts
            self.checker.request_full_reload()  # which instances are this node's changed

    def mark_node_unhealthy(self, node: dict[str, Any], silent: float) -> None:
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
        log.warning("%s; marking its instances Unhealthy", reason)
        for instance_id in self.store.ids_by("instances", "nodeUrl", node["url"]):
            write_status(self.store, instance_id, lambda current: status.after_node_lost(current, reason), alive=False)
