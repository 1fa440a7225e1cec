"""Prometheus metrics (`GET /metrics`), correct for the whole server across its processes.

The server is several processes: the supervisor (gate, node agent, health checker, cluster
replicator) and one or more Robyn workers. Each counts what it does itself with the
official client in its multiprocess mode: every process writes its samples to its own
memory-mapped file under `<data-dir>/run/metrics-<port>/` (emptied at start; per port, as
servers may share a data dir), and the worker that
answers a scrape sums them all. Counts kept in Rust (the gate's answered and refused
requests, the writer's commits) are folded into the same counters by a thread in each
process every `SYNC_S`, so they lag the truth by at most that. What every process sees
alike (the registry index, instances by status, store size, node telemetry, replica lag)
is read from the shared store at scrape time.

Requests are not written to the client's files as they happen: its multiprocess values
check the process id on every update (a system call, slow in sandboxes; measured here it
halved `/health`'s rate). A request costs a dict update under a lock instead, and the same
thread folds the pending counts and latencies in every `SYNC_S`.

Until `setup` runs (a store opened by a test or a benchmark), every call here does
nothing.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from registry_svc import _core, cluster
from registry_svc.status import STATUSES

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_S = 0.5
log = logging.getLogger("registry_svc")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def prepare(data_dir: str, port: int) -> str:
    """Empties and returns this server's metrics directory, and points this process and
    its children at it (before anything imports prometheus_client)."""
    path = Path(data_dir) / "run" / f"metrics-{port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)
    return str(path)


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "registry_http_requests", "HTTP requests answered by the workers", ["route", "method", "status"]
        )
        self.latency = Histogram(
            "registry_http_request_duration_seconds", "Time to answer a request in the workers",
            ["route", "method"], buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.gate = Counter(
            "registry_gate_requests", "Requests the gates (API and data port) answered, forwarded or refused",
            ["port", "outcome"],
        )  # fmt: skip
        self.writes = Counter("registry_store_writes", "Writes committed to the local LMDB store")
        self.batches = Counter("registry_store_commit_batches", "LMDB transactions committed (group commits)")
        self.probes = Counter("registry_health_probes", "Health probes run, by result", ["type", "result"])
        self.upstream = Counter("registry_proxy_upstream_requests", "Proxied requests, by outcome", ["outcome"])
        self.worker_restarts = Counter(
            "registry_worker_restarts", "Times the supervisor restarted the workers after one of them died"
        )
        self.ejections = Counter(
            "registry_proxy_ejections", "Instances the proxy ejected after consecutive failures (outlier detection)"
        )
        self.dns = Counter(
            "registry_dns_queries", "DNS questions, by outcome (answered, nodata, nxdomain, refused, failed, "
            "rate_limited)", ["outcome"],
        )  # fmt: skip
        self.cache_bytes = Gauge(
            "registry_response_cache_bytes", "Bytes held by the response caches", multiprocess_mode="livesum"
        )


_metrics: _Metrics | None = None
_lock = threading.Lock()


def setup(
    store: _core.Store, front: _core.Front | None = None, port: str = "api", dns: _core.Dns | None = None
) -> None:
    """Creates this process's metrics and starts folding the Rust-side counts into them.
    Needs `ENV` set (by `prepare`, inherited by the workers)."""
    global _metrics
    if ENV not in os.environ:
        return
    with _lock:
        if _metrics is None:
            _metrics = _Metrics()
    threading.Thread(target=_sync, args=(store, front, port, dns), name="metrics-sync", daemon=True).start()


def _sync(store: _core.Store, front: _core.Front | None, port: str, dns: _core.Dns | None) -> None:
    """Folds the counts kept in Rust, and the requests counted since the last time, into
    this process's metrics, every SYNC_S."""
    m = _metrics
    assert m is not None
    counters = {
        "writes": m.writes, "batches": m.batches,
        "answered": m.gate.labels(port, "answered"), "forwarded": m.gate.labels(port, "forwarded"),
        "refused": m.gate.labels(port, "refused"), "proxied": m.gate.labels(port, "proxied"),
    }  # fmt: skip
    seen = dict.fromkeys(counters, 0)

    def counter(name: str) -> Any:
        """The metric a Rust-side count folds into; the proxy's (rust/forward.rs) outcome
        names come with their counts, as `upstream:<outcome>` and `upstream:ejections`."""
        if name not in counters:
            if name.startswith("dns:"):
                counters[name] = m.dns.labels(name.removeprefix("dns:"))
                return counters[name]
            outcome = name.removeprefix("upstream:")
            counters[name] = m.ejections if outcome == "ejections" else m.upstream.labels(outcome)
        return counters[name]

    reported: set[str] = set()
    while True:
        try:
            now = dict(zip(("writes", "batches"), store.writer_stats(), strict=True))
            if front is not None:
                now.update(zip(("answered", "forwarded", "refused", "proxied"), front.stats(), strict=True))
                now.update((f"upstream:{name}", count) for name, count in front.proxy_stats())
            if dns is not None:
                now.update((f"dns:{name}", count) for name, count in dns.stats())
            m.cache_bytes.set(store.cache_usage()[1])
            for name, value in now.items():
                if value > seen.get(name, 0):
                    counter(name).inc(value - seen.get(name, 0))
                    seen[name] = value
            flush()
        except _core.StoreError:
            return  # the store closed: the process is stopping
        except Exception as e:  # the metrics go stale, the thread goes on
            # Logged once per kind of failure: a scrape would otherwise show frozen counts
            # with nothing in the log to say why.
            if type(e).__name__ not in reported:
                reported.add(type(e).__name__)
                log.exception("metrics: folding the counts failed; retrying every %.1fs", SYNC_S)
        time.sleep(SYNC_S)


_pending_lock = threading.Lock()
_pending_requests: dict[tuple[str, str, int], list[float]] = {}


def flush() -> None:
    """Moves the requests counted since the last flush into the metrics."""
    global _pending_requests
    m = _metrics
    if m is None:
        return
    with _pending_lock:
        requests, _pending_requests = _pending_requests, {}
    for (route, method, status), durations in requests.items():
        m.requests.labels(route, method, str(status)).inc(len(durations))
        _observe_many(m.latency.labels(route, method), durations)


def _observe_many(histogram: Any, values: list[float]) -> None:
    """`histogram.observe(v)` for each value, as one update per bucket: the client's
    `observe` does exactly this per value (add to the sum, count in the first bucket whose
    bound holds it), which would cost a process-id check per value."""
    bounds = getattr(histogram, "_upper_bounds", None)
    if bounds is None:  # another client version: the public way
        for value in values:
            histogram.observe(value)
        return
    histogram._sum.inc(sum(values))
    counts: dict[int, int] = {}
    for value in values:
        index = bisect.bisect_left(bounds, value)
        counts[index] = counts.get(index, 0) + 1
    for index, count in counts.items():
        histogram._buckets[index].inc(count)


def request(route: str, method: str, status: int, seconds: float) -> None:
    """Counts one answered request (folded into the metrics at the next flush)."""
    if _metrics is not None:
        with _pending_lock:
            _pending_requests.setdefault((route, method, status), []).append(seconds)


def worker_restarted() -> None:
    """Counts a restart of the workers (the supervisor's, after one died)."""
    if _metrics is not None:
        _metrics.worker_restarts.inc()


def probe(check_type: str, ok: bool) -> None:
    if _metrics is not None:
        _metrics.probes.labels(check_type, "pass" if ok else "fail").inc()


class _Live:
    """What every process sees alike, read from the shared store at scrape time."""

    def __init__(self, store: _core.Store, map_size: int, data_dir: str) -> None:
        self.store = store
        self.map_size = map_size
        self.data_file = Path(data_dir) / "store" / "data.mdb"

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        store = self.store
        yield GaugeMetricFamily("registry_index", "The registry index (in cluster mode the applied etcd revision)",
                                value=store.index())  # fmt: skip
        by_status = GaugeMetricFamily("registry_instances", "Instances by status", labels=["status"])
        for status in STATUSES:
            by_status.add_metric([status], len(store.ids_by("instances", "status", status)))
        yield by_status
        with_size = GaugeMetricFamily("registry_store_bytes", "Size of the LMDB data file")
        with_size.add_metric([], self.data_file.stat().st_size if self.data_file.exists() else 0)
        yield with_size
        yield GaugeMetricFamily("registry_store_map_bytes", "The LMDB map size (the most the store holds)",
                                value=self.map_size)  # fmt: skip
        yield from _node_metrics(store)
        yield from _load_metrics(store)
        if store.backend == "etcd":
            state = cluster.replica_state(store)
            applied = store.index()
            yield GaugeMetricFamily("registry_replica_lag_revisions", "etcd's revision minus the replica's",
                                    value=max(0, int(state.get("etcdRevision") or 0) - applied))  # fmt: skip
            stale = store.replica_staleness()
            yield GaugeMetricFamily("registry_replica_stale_seconds", "Seconds since the replica heard from etcd "
                                    "(0 while fresh)", value=stale or 0.0)  # fmt: skip


# The age buckets of model servers' load readings, in seconds.
LOAD_AGE_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


def _load_metrics(store: _core.Store) -> Iterator[Metric]:
    """Model servers' load (rust/core/load.rs): what the scraper does, and how old the
    readings the picks use are (a snapshot of every reading held, as a gauge histogram)."""
    from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily

    sources, scrapes, failures, ages = _core.load_stats(store)
    yield GaugeMetricFamily("registry_load_sources", "Instances whose load this server scrapes", value=sources)
    scraped = CounterMetricFamily("registry_load_scrapes", "Load scrapes, by result", labels=["result"])
    scraped.add_metric(["ok"], scrapes - failures)
    scraped.add_metric(["failed"], failures)
    yield scraped
    readings = GaugeMetricFamily("registry_load_readings", "Load readings held, by whether they still count",
                                 labels=["state"])  # fmt: skip
    readings.add_metric(["fresh"], sum(1 for _, fresh in ages if fresh))
    readings.add_metric(["stale"], sum(1 for _, fresh in ages if not fresh))
    yield readings
    buckets = [(str(bound), sum(1 for age, _ in ages if age <= bound)) for bound in LOAD_AGE_BUCKETS]
    buckets.append(("+Inf", len(ages)))
    yield GaugeHistogramMetricFamily(
        "registry_load_age_seconds", "Age of the load readings held", buckets=buckets,
        gsum_value=sum(age for age, _ in ages),
    )  # fmt: skip


def _node_metrics(store: _core.Store) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    cpu = GaugeMetricFamily("registry_node_cpu_percent", "Node CPU use", labels=["node"])
    memory = GaugeMetricFamily("registry_node_memory_bytes", "Node memory", labels=["node", "kind"])
    disk = GaugeMetricFamily("registry_node_disk_bytes", "Node disk", labels=["node", "kind"])
    gpu_memory = GaugeMetricFamily("registry_node_gpu_memory_mib", "GPU memory", labels=["node", "gpu", "kind"])
    gpu_util = GaugeMetricFamily("registry_node_gpu_utilization_percent", "GPU utilisation", labels=["node", "gpu"])
    _, raws = store.list("nodes")
    for raw in raws:
        node = orjson.loads(raw)
        usage = node.get("usage") or {}
        node_id = str(node.get("id"))
        if (percent := (usage.get("cpu") or {}).get("percent")) is not None:
            cpu.add_metric([node_id], percent)
        for family, key in ((memory, "memory"), (disk, "disk")):
            for kind in ("used", "total"):
                if (value := (usage.get(key) or {}).get(kind)) is not None:
                    family.add_metric([node_id, kind], value)
        for gpu in node.get("gpus") or []:
            gpu_id = str(gpu.get("intraNodeId"))
            for kind, field in (("used", "memoryUsage"), ("total", "memoryTotal")):
                if isinstance(gpu.get(field), int | float):
                    gpu_memory.add_metric([node_id, gpu_id, kind], gpu[field])
            if isinstance(gpu.get("gpuUtilization"), int | float):
                gpu_util.add_metric([node_id, gpu_id], gpu["gpuUtilization"])
    yield from (cpu, memory, disk, gpu_memory, gpu_util)


def exposition(store: _core.Store, map_size: int, data_dir: str) -> bytes:
    """The text exposition of every process's metrics plus the live ones."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    flush()  # this process's own latest requests
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_Live(store, map_size, data_dir))
    return bytes(generate_latest(registry))
