"""Replica propagation while anti-entropy scans 100,000 keys (issue 22, review finding 9).

One etcd member holds `--keys` definition records under one prefix; a cluster replica
(`registry_svc.replica.Replicator` over a real LMDB store, in this process, as the
supervisor runs it) lists them, and then runs its anti-entropy scan back to back while
records are put into etcd one at a time. Each sample is the time from just before the put
is sent until the replica applied its revision (waited on through the store's notifier),
with scans running and, as the baseline, with none. The scan takes no lock the watch needs
(finding 9), so the two distributions should stay close; what remains is the GIL the scan
shares with the watch thread.

`make bench` appends its section to BENCHMARKS.md. Needs `etcd` (make bench installs it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import orjson

from loadtest.bench import publish
from loadtest.cluster_bench import percentile
from loadtest.etcd_cluster import EtcdCluster
from registry_svc import _core
from registry_svc.etcd import Client
from registry_svc.etcd_keys import Layout, op_put
from registry_svc.replica import Replicator

OPS_PER_TXN = 128  # etcd's default --max-txn-ops


def load(client: Client, layout: Layout, keys: int) -> None:
    """`keys` definition records, OPS_PER_TXN per txn."""
    for start in range(0, keys, OPS_PER_TXN):
        ops = [
            op_put(layout.rec("definitions", f"d{n}"), orjson.dumps({"id": f"d{n}", "image": {"name": f"img{n}:1"}}))
            for n in range(start, min(keys, start + OPS_PER_TXN))
        ]
        client.txn([], ops)


def propagation_ms(client: Client, layout: Layout, store: _core.Store, name: str) -> float:
    """Milliseconds from just before a put is sent until the replica applied it."""
    began = time.perf_counter()
    revision = client.put(layout.rec("definitions", name), orjson.dumps({"id": name, "image": {"name": "p:1"}}))
    if not store.wait_index(revision, 10):
        raise RuntimeError(f"the replica did not apply revision {revision} within 10 s")
    return 1000 * (time.perf_counter() - began)


def run(keys: int, samples: int) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="registry-scan-bench-"))
    etcd = EtcdCluster(work / "etcd", size=1, fsync=True).start()
    layout = Layout("/scan-bench/")
    store = _core.Store(str(work / "store"), 1 << 30)
    replicator: Replicator | None = None
    try:
        client = Client(etcd.endpoints)
        load(client, layout, keys)
        replicator = Replicator(store, Client(etcd.endpoints), layout, str(work), anti_entropy_seconds=3600)
        listed = time.monotonic()
        replicator.start()
        if not replicator.wait_synced(300):
            raise RuntimeError("the replica did not list etcd within 300 s")
        list_s = time.monotonic() - listed
        quiet = [propagation_ms(client, layout, store, f"q{n}") for n in range(samples)]

        scans: list[float] = []
        repaired: list[int] = []
        scanning = threading.Event()
        stop = threading.Event()

        def scan_loop() -> None:
            assert replicator is not None
            while not stop.is_set():
                began = time.monotonic()
                scanning.set()
                found = replicator.anti_entropy()
                scans.append(time.monotonic() - began)
                repaired.append(found)

        scanner = threading.Thread(target=scan_loop, daemon=True)
        scanner.start()
        if not scanning.wait(10):
            raise RuntimeError("the scan did not start")
        during = []
        for n in range(samples):
            during.append(propagation_ms(client, layout, store, f"s{n}"))
            time.sleep(0.005)  # spread the samples over the scans
        stop.set()
        scanner.join(120)
        if any(repaired):
            raise RuntimeError(f"anti-entropy repaired {sum(repaired)} records of a replica that was exact")
    finally:
        if replicator is not None:
            replicator.stop()
        store.close()
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)

    def row(case: str, values: list[float]) -> str:
        return (
            f"| {case} | {statistics.median(values):.2f} | {percentile(values, 0.99):.2f} | {max(values):.2f} "
            f"| {len(values)} |"
        )

    p99_during = percentile(during, 0.99)
    return [
        f"## Replica propagation during an anti-entropy scan of {keys:,} keys",
        "",
        f"From `python -m loadtest.scan_bench --keys {keys} --samples {samples}`: one etcd member (fsync on) "
        f"holding {keys:,} records, one replica in process (the supervisor's code), listed in {list_s:.1f} s. "
        f"Scans ran back to back during the second case: {len(scans)} scans, "
        f"{statistics.median(scans):.2f} s each (median). Each sample: a put into etcd until the replica applied it.",
        "",
        "| case | p50 ms | p99 ms | max ms | samples |",
        "|---|---:|---:|---:|---:|",
        row("no scan running", quiet),
        row("anti-entropy scanning", during),
        "",
        f"- **Propagation during a scan (target < 100 ms): {'met' if p99_during < 100 else 'not met'}**, "
        f"p99 {p99_during:.1f} ms (without a scan {percentile(quiet, 0.99):.1f} ms).",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--append", type=Path, default=None, help="append the section to this file (BENCHMARKS.md)")
    a = p.parse_args()
    publish(run(a.keys, a.samples), a.append)


if __name__ == "__main__":
    main()
