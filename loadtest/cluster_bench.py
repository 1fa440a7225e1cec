"""Cluster benchmark: 3 etcd members and 3 registry servers on this machine.

Measured, each case `--repeats` times (median and range), all in one run:
- registrations/s through the 3 servers into etcd, next to raw etcd txn puts/s of the same
  shape (a compare, the record and one guard key) from the same Python load generator;
- lookups/s on a cluster replica, next to a single-machine server holding the same records
  (wrk, as in `loadtest.bench`);
- registration-to-visible-on-another-server latency: a blocking query waiting on server B
  for a slug that is then registered on server A;
- CPU per registration by process (each etcd member, each server's supervisor, which runs
  the gates and the replica, and its workers; the load generator), and per raw txn;
- single machine: durable registrations/s on a single-machine server next to txn puts/s of
  one etcd member (fsync on both, same record shape, same client and connections).

`make bench` appends its section to BENCHMARKS.md. Needs `etcd` and `wrk` (make bench
installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from loadtest.bench import Bench, publish, wait_http
from loadtest.etcd_cluster import EtcdCluster, free_port
from registry_svc.etcd_keys import Layout, cmp_absent, cmp_mod, op_put

GENERATOR_THREADS = 32
INSTANCES = 1000
SLUGS = 100


def cpu_groups(etcd: EtcdCluster, supervisors: list[int]) -> dict[str, list[psutil.Process]]:
    """The processes whose CPU is counted, by role: each etcd member, each server's
    supervisor (its gates, the replica, the node agent) and its Robyn workers, and this
    process (the load generator's threads)."""
    groups: dict[str, list[psutil.Process]] = {}
    for member in etcd.members:
        if member.proc is not None:
            groups[f"etcd {member.name}"] = [psutil.Process(member.proc.pid)]
    for n, pid in enumerate(supervisors, 1):
        supervisor = psutil.Process(pid)
        groups[f"server {n} supervisor (gates, replica, agent)"] = [supervisor]
        groups[f"server {n} workers"] = supervisor.children(recursive=True)
    groups["load generator (this process)"] = [psutil.Process()]
    return groups


def cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """User plus system CPU seconds so far, by role."""
    out = {}
    for role, procs in groups.items():
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        out[role] = total
    return out


class CpuPerOp:
    """CPU milliseconds per operation by role, summed over the measured repetitions."""

    def __init__(self, groups: dict[str, list[psutil.Process]]) -> None:
        self.groups = groups
        self.spent = dict.fromkeys(groups, 0.0)
        self.ops = 0.0

    def measure(self, run: Any) -> tuple[float, int]:
        """Runs `run()` (which returns (ops/s, failures) over `seconds`) and counts its CPU."""
        before, started = cpu_seconds(self.groups), time.monotonic()
        rps, failed = run()
        elapsed = time.monotonic() - started
        after = cpu_seconds(self.groups)
        for role in self.groups:
            self.spent[role] += after[role] - before[role]
        self.ops += rps * elapsed
        return rps, failed

    def per_op_ms(self) -> dict[str, float]:
        return {role: 1000 * spent / self.ops for role, spent in self.spent.items()} if self.ops else {}


def start_server(bench: Bench, data_dir: Path, etcd: str | None) -> tuple[str, str]:
    """A registry server (cluster mode with `etcd`); returns (base URL, admin token)."""
    port = free_port()
    cmd = [sys.executable, "-m", "registry_svc", "serve", "--port", str(port), "--data-dir", str(data_dir),
           "--probe-networks", "127.0.0.0/8,::1/128"]  # fmt: skip
    if etcd:
        cmd += ["--etcd", etcd]
    bench.spawn(cmd)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", timeout=60)
    deadline = time.monotonic() + 30
    token_file = data_dir / "admin.token"
    while not token_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return base, token_file.read_text().strip() if token_file.exists() else ""


def http_call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn.request(method, path, body, headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def load(seconds: float, targets: list[tuple[str, int]], request: Any) -> tuple[float, int]:
    """GENERATOR_THREADS threads, spread over `targets` (host, port), each calling
    `request(conn, thread, n)` (which returns an HTTP status) for `seconds`. Returns
    (successful requests/s, failures)."""
    done = [0] * GENERATOR_THREADS
    failed = [0] * GENERATOR_THREADS
    stop = time.monotonic() + seconds

    def worker(t: int) -> None:
        host, port = targets[t % len(targets)]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        n = 0
        while time.monotonic() < stop:
            status = request(conn, t, n)
            n += 1
            if 200 <= status < 300:
                done[t] += 1
            else:
                failed[t] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(GENERATOR_THREADS)]
    started = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done) / (time.monotonic() - started), sum(failed)


def registrations(seconds: float, servers: list[tuple[str, str]], run: int) -> tuple[float, int]:
    targets = [("127.0.0.1", int(base.rsplit(":", 1)[1])) for base, _ in servers]
    token = servers[0][1]

    def register(conn: http.client.HTTPConnection, t: int, n: int) -> int:
        body = orjson.dumps({"url": f"http://127.0.0.1:9/r{run}/t{t}/n{n}", "slug": f"bench-{n % SLUGS}",
                             "healthCheck": {"type": "none"}})  # fmt: skip
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return http_call(conn, "PUT", "/registry-svc/instance", body, headers)

    return load(seconds, targets, register)


def raw_txns(seconds: float, endpoints: list[str], run: int) -> tuple[float, int]:
    """etcd txn puts of a registration's shape: compare, put the record and its guard."""
    layout = Layout("/bench-raw/")
    targets = [(e.rsplit(":", 1)[0], int(e.rsplit(":", 1)[1])) for e in endpoints]
    record = orjson.dumps(
        {"id": "x", "url": "http://127.0.0.1:9/", "slug": "bench", "status": "Unknown"} | {"pad": "p" * 400}
    )

    def txn(conn: http.client.HTTPConnection, t: int, n: int) -> int:
        key = layout.rec("instances", f"r{run}-t{t}-n{n}")
        guard = layout.uniq("instances", "url", f"http://127.0.0.1:9/r{run}/t{t}/n{n}")
        body = orjson.dumps(
            {"compare": [cmp_mod(key, 0), cmp_absent(guard)], "success": [op_put(key, record), op_put(guard, "x")]}
        )
        return http_call(conn, "POST", "/v3/kv/txn", body, {"Content-Type": "application/json"})

    return load(seconds, targets, txn)


def seed(servers: list[tuple[str, str]]) -> None:
    base, token = servers[0]
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for i in range(INSTANCES):
        body = orjson.dumps({"url": f"http://127.0.0.1:9/seed/{i}", "slug": f"lookup-{i % SLUGS}",
                             "healthCheck": {"type": "none"}})  # fmt: skip
        assert http_call(conn, "PUT", "/registry-svc/instance", body, headers) == 201
    conn.close()


def visibility_latency(a: tuple[str, str], b: tuple[str, str], samples: int) -> list[float]:
    """ms from sending a registration to A until a blocking query on B returns it."""
    headers = {"Authorization": f"Bearer {a[1]}", "Content-Type": "application/json"}
    a_port, b_port = int(a[0].rsplit(":", 1)[1]), int(b[0].rsplit(":", 1)[1])
    return [visible_after(a_port, b_port, headers, f"visible-{i}") for i in range(samples)]


def visible_after(a_port: int, b_port: int, headers: dict[str, str], slug: str) -> float:
    """One sample: a blocking query for `slug` waits on B, then `slug` is registered on A."""
    ready = threading.Event()
    arrived: list[float] = []

    def watch() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", b_port, timeout=30)
        conn.request("GET", f"/registry-svc/instances?slug={slug}", headers=headers)
        resp = conn.getresponse()
        index = resp.getheader("x-registry-index")
        resp.read()
        ready.set()
        for _ in range(10):
            conn.request("GET", f"/registry-svc/instances?slug={slug}&index={index}&wait=10s", headers=headers)
            resp = conn.getresponse()
            body = orjson.loads(resp.read())
            index = resp.getheader("x-registry-index")
            if body.get("instances"):
                arrived.append(time.perf_counter())
                break
        conn.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    ready.wait(10)
    time.sleep(0.02)  # the watcher's blocking query is in flight
    conn = http.client.HTTPConnection("127.0.0.1", a_port, timeout=30)
    body = orjson.dumps({"url": f"http://127.0.0.1:9/{slug}", "slug": slug, "healthCheck": {"type": "none"}})
    sent = time.perf_counter()
    assert http_call(conn, "PUT", "/registry-svc/instance", body, headers) == 201
    conn.close()
    watcher.join(30)
    return (arrived[0] - sent) * 1000 if arrived else float("inf")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(runs: list[float]) -> str:
    return f"{min(runs):,.0f}-{max(runs):,.0f}" if len(runs) > 1 else "-"


def run(seconds: float, repeats: int, samples: int) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="registry-cluster-bench-"))
    bench = Bench(seconds=seconds, work=work, repeats=repeats)
    etcd = EtcdCluster(work / "etcd", fsync=True).start()
    lone_etcd = EtcdCluster(work / "etcd-single", size=1, fsync=True).start()
    try:
        endpoints = ",".join(f"http://{e}" for e in etcd.endpoints)
        first = start_server(bench, work / "s1", endpoints)
        servers = [first]
        for n in (2, 3):
            (work / f"s{n}").mkdir()
            shutil.copy(work / "s1" / "admin.token", work / f"s{n}" / "admin.token")
            servers.append(start_server(bench, work / f"s{n}", endpoints))
        supervisors = [proc.pid for proc in bench.procs]
        single = start_server(bench, work / "single", None)
        print("cluster bench: 3 etcd members, 3 cluster servers, 1 single-machine server", flush=True)

        groups = cpu_groups(etcd, supervisors)
        reg_cpu, raw_cpu = CpuPerOp(groups), CpuPerOp(groups)
        reg_runs, raw_runs, reg_failed, raw_failed = [], [], 0, 0
        for r in range(repeats):
            rps, failed = reg_cpu.measure(lambda r=r: registrations(seconds, servers, r))
            reg_runs.append(rps)
            reg_failed += failed
            rps, failed = raw_cpu.measure(lambda r=r: raw_txns(seconds, etcd.endpoints, r))
            raw_runs.append(rps)
            raw_failed += failed
            print(f"  registrations {reg_runs[-1]:8.0f}/s   raw etcd txns {raw_runs[-1]:8.0f}/s", flush=True)

        # One machine: a single-machine server's durable registrations and one etcd
        # member's txn puts, from the same client.
        supervisor = psutil.Process(bench.procs[-1].pid)
        lone_groups = {
            "single-machine supervisor (gates, writer)": [supervisor],
            "single-machine workers": supervisor.children(recursive=True),
            "one etcd member": [psutil.Process(lone_etcd.members[0].proc.pid)] if lone_etcd.members[0].proc else [],
            "load generator (this process)": [psutil.Process()],
        }
        lone_cpu, lone_etcd_cpu = CpuPerOp(lone_groups), CpuPerOp(lone_groups)
        lone_runs, lone_etcd_runs, lone_failed = [], [], 0
        for r in range(repeats):
            rps, failed = lone_cpu.measure(lambda r=r: registrations(seconds, [single], r))
            lone_runs.append(rps)
            lone_failed += failed
            rps, failed = lone_etcd_cpu.measure(lambda r=r: raw_txns(seconds, lone_etcd.endpoints, r))
            lone_etcd_runs.append(rps)
            lone_failed += failed
            print(f"  single machine {lone_runs[-1]:8.0f}/s   one etcd member {lone_etcd_runs[-1]:8.0f}/s", flush=True)

        seed(servers)
        seed([single])
        time.sleep(1.0)
        lookup_script = "request = function() return wrk.format('GET', '/registry-svc/instances?slug=lookup-7') end\n"
        replica = bench.wrk("lookup, 1,000 instances / 100 slugs", "cluster replica", servers[1][0],
                            token=servers[1][1], script=lookup_script)  # fmt: skip
        local = bench.wrk("lookup, 1,000 instances / 100 slugs", "single-machine", single[0],
                          token=single[1], script=lookup_script)  # fmt: skip
        latency = visibility_latency(servers[0], servers[1], samples)
    finally:
        bench.stop_all()
        etcd.stop()
        lone_etcd.stop()
        shutil.rmtree(work, ignore_errors=True)

    ratios = [reg / raw for reg, raw in zip(reg_runs, raw_runs, strict=True)]
    lone_ratios = [reg / raw for reg, raw in zip(lone_runs, lone_etcd_runs, strict=True)]
    lone_ratio = statistics.median(lone_ratios)
    reg_ms, raw_ms = reg_cpu.per_op_ms(), raw_cpu.per_op_ms()
    cpu_rows = [f"| {role} | {reg_ms.get(role, 0):.2f} | {raw_ms.get(role, 0):.2f} |" for role in groups]
    lone_ms, lone_etcd_ms = lone_cpu.per_op_ms(), lone_etcd_cpu.per_op_ms()
    cpu_rows.append(f"| **all, cluster** | {sum(reg_ms.values()):.2f} | {sum(raw_ms.values()):.2f} |")
    cpu_rows += [f"| {role} | {lone_ms.get(role, 0):.2f} | {lone_etcd_ms.get(role, 0):.2f} |" for role in lone_groups]
    cpu_rows.append(f"| **all, single machine** | {sum(lone_ms.values()):.2f} | {sum(lone_etcd_ms.values()):.2f} |")
    lookup_ratios = [c / s for c, s in zip(replica.runs, local.runs, strict=True)]
    p50, p99 = percentile(latency, 0.50), percentile(latency, 0.99)

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    reg_ratio = statistics.median(ratios)
    lookup_ratio = statistics.median(lookup_ratios)
    return [
        "## Cluster (3 etcd members, 3 servers, one machine)",
        "",
        f"From `python -m loadtest.cluster_bench --seconds {seconds:g} --repeats {repeats}` in the same `make bench` run. "
        "etcd 3.4 members with fsync on, 3 registry servers (1 process each) and the load generators share the "
        f"same cores. Writes: {GENERATOR_THREADS} Python threads with keep-alive connections, spread over the 3 "
        "servers (registrations) or the 3 etcd members (raw txns: a compare plus the record and its guard key, "
        "a registration's shape, through etcd's JSON gateway as the servers use it).",
        "",
        "| case | median | range | notes |",
        "|---|---:|---:|---|",
        f"| registrations/s through 3 servers | {statistics.median(reg_runs):,.0f} | {spread(reg_runs)} | {reg_failed} failed |",
        f"| raw etcd txn puts/s, same client | {statistics.median(raw_runs):,.0f} | {spread(raw_runs)} | {raw_failed} failed |",
        f"| lookups/s on a replica | {replica.rps:,.0f} | {replica.spread or '-'} | wrk, p99 {replica.p99_ms:.2f} ms |",
        f"| lookups/s single-machine | {local.rps:,.0f} | {local.spread or '-'} | wrk, p99 {local.p99_ms:.2f} ms |",
        f"| registration visible on another server, p50 | {p50:.1f} ms | - | {len(latency)} samples |",
        f"| registration visible on another server, p99 | {p99:.1f} ms | - | max {max(latency):.1f} ms |",
        f"| single machine: durable registrations/s | {statistics.median(lone_runs):,.0f} | {spread(lone_runs)} | same client |",
        f"| single machine: one etcd member's txn puts/s | {statistics.median(lone_etcd_runs):,.0f} | "
        f"{spread(lone_etcd_runs)} | {lone_failed} failed in both |",
        "",
        "CPU milliseconds per operation by process, summed over the repetitions (user + system; the servers' "
        "other work in the window, heartbeats and the replica's pings, counts too):",
        "",
        "| process | per registration | per raw txn |",
        "|---|---:|---:|",
        *cpu_rows,
        "",
        f"- **Registrations vs raw etcd txns (target 0.7x): {verdict(reg_ratio >= 0.7)}**, at {reg_ratio:.2f}x "
        f"(per repetition {min(ratios):.2f}-{max(ratios):.2f}).",
        f"- **Replica lookups vs single-machine (target 1.0x): {verdict(lookup_ratio >= 1.0)}**, at {lookup_ratio:.2f}x "
        f"(per repetition {min(lookup_ratios):.2f}-{max(lookup_ratios):.2f}).",
        f"- **Registration-to-visible p99 (target < 20 ms): {verdict(p99 < 20)}**, at {p99:.1f} ms (p50 {p50:.1f} ms).",
        f"- **Single-machine durable registrations vs one etcd member's txn puts (target 2x): "
        f"{verdict(lone_ratio >= 2.0)}**, at {lone_ratio:.2f}x (per repetition {min(lone_ratios):.2f}-"
        f"{max(lone_ratios):.2f}); {GENERATOR_THREADS} Python client threads for both, which cap either rate.",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=200, help="registration-to-visible samples")
    p.add_argument("--append", type=Path, default=None, help="append the section to this file (BENCHMARKS.md)")
    a = p.parse_args()
    publish(run(a.seconds, a.repeats, a.samples), a.append)


if __name__ == "__main__":
    main()
