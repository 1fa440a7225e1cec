"""The node agent: this node's heartbeat, node liveness, and instance health checks.

Exactly one agent runs per node, whatever `--processes` is: it lives in the supervisor
process (`registry-svc serve`), which exists once per node, while the Robyn worker
processes only serve HTTP. It runs on its own asyncio loop in a thread.

Which instances this node checks: those whose `nodeUrl` is this node's URL, plus orphans
(no `nodeUrl`, or one that names no registered node), which the Healthy node with the
smallest id adopts. Every agent derives the same answer from the same store, so no lease
is needed. A node whose heartbeats stop for three of its intervals is marked Unhealthy by
whichever agent notices first, and so is every instance on it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import orjson

from registry_svc import _core, nodes, telemetry
from registry_svc.clock import parse_time
from registry_svc.gpu import GpuSampler
from registry_svc.health import HealthChecker, Transition, pause, write_status
from registry_svc.settings import Settings

log = logging.getLogger("registry_svc")

MISSED_HEARTBEATS = 3


class NodeAgent:
    """Heartbeats this node and checks the instances it is responsible for."""

    def __init__(self, store: _core.Store, settings: Settings, gpus: GpuSampler) -> None:
        self.store = store
        self.settings = settings
        self.gpus = gpus
        self.checker = HealthChecker(store, self.is_mine)
        self._node_urls: set[str] = set()
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
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)

    def is_mine(self, instance: dict[str, Any]) -> bool:
        node_url = instance.get("nodeUrl")
        if node_url == self.settings.self_url:
            return True
        return self._adopts_orphans and (node_url is None or node_url not in self._node_urls)

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
        records = [orjson.loads(raw) for raw in raws]
        for node in records:
            if node["url"] != self.settings.self_url and node.get("status") == "Healthy":
                interval = float(node.get("heartbeatIntervalSeconds") or 10)
                silent = now - parse_time(node["lastHeartbeat"]).timestamp()
                if silent > MISSED_HEARTBEATS * interval:
                    self.mark_node_unhealthy(node, silent)
                    node["status"] = "Unhealthy"
        node_urls = {node["url"] for node in records}
        healthy = sorted(node["id"] for node in records if node.get("status") == "Healthy")
        own = nodes.find_by_url(self.store, self.settings.self_url)
        adopts = bool(healthy) and own is not None and own[1]["id"] == healthy[0]
        if (node_urls, adopts) != (self._node_urls, self._adopts_orphans):
            self._node_urls, self._adopts_orphans = node_urls, adopts
            self.checker.request_full_reload()  # which instances are this node's changed

    def mark_node_unhealthy(self, node: dict[str, Any], silent: float) -> None:
        found = self.store.get(nodes.NODES, node["id"])
        if found is None:
            return
        version, raw = found
        record = orjson.loads(raw)
        if record.get("status") != "Healthy":
            return
        record["status"] = "Unhealthy"
        try:
            self.store.put(nodes.NODES, node["id"], orjson.dumps(record), version)
        except _core.VersionMismatchError:
            return  # it heartbeated meanwhile, or another agent got there first
        reason = f"node {node['id']} ({node['url']}) missed {MISSED_HEARTBEATS} heartbeats ({int(silent)}s silent)"
        log.warning("%s; marking its instances Unhealthy", reason)
        for instance_id in self.store.ids_by("instances", "nodeUrl", node["url"]):
            write_status(self.store, instance_id, Transition("Unhealthy", reason), alive=False)
