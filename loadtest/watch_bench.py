"""Watch benchmark: what consumers that follow the registry cost and get.

- change-to-watcher latency: a blocking query waits on one slug while `--idle` other
  watchers wait on other slugs; the slug is then registered; p50/p99 over `--samples`;
- CPU of the idle watchers: every server process's CPU over `--seconds`, with and without
  them;
- `Resolver.pick()` in process (the client library's local pick), per call.

`make bench` appends its section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psutil

from loadtest.bench import publish, wait_http
from loadtest.etcd_cluster import free_port
from registry_svc.client import Resolver


def start(data_dir: Path, processes: int) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry_svc", "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--processes", str(processes), "--probe-networks", "127.0.0.0/8,::1/128"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", timeout=60)
    return proc, base, (data_dir / "admin.token").read_text().strip()


def server_cpu(proc: subprocess.Popen[bytes], seconds: float) -> float:
    """Percent of one core used by the server's processes over `seconds`."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]

    def total() -> float:
        out = 0.0
        for p in tree:
            try:
                t = p.cpu_times()
                out += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return out

    before = total()
    time.sleep(seconds)
    return (total() - before) / seconds * 100


# Idle watchers per client address: under the server's cap of blocking queries per client
# and process (watch.MAX_HELD_PER_CLIENT), which 1,000 watchers from one address pass.
PER_ADDRESS = 100


def idle_watchers(port: int, token: str, count: int) -> list[socket.socket]:
    """`count` blocking queries parked on slugs nobody writes (raw sockets, no threads),
    from 127.0.0.2 on, `PER_ADDRESS` per address (all loopback)."""
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{2 + i // PER_ADDRESS}", 0))
        s.sendall(
            f"GET /registry-svc/instances?slug=idle-{i}&index=1000000&wait=10m HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        socks.append(s)
    return socks


def change_latency(port: int, token: str, slug: str) -> float:
    """ms from sending a registration until a blocking query on its slug answers."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/registry-svc/instances?slug={slug}", headers=headers)
    resp = conn.getresponse()
    index = resp.getheader("x-registry-index")
    resp.read()
    done: list[float] = []
    wrong: list[str] = []

    def watch() -> None:
        conn.request("GET", f"/registry-svc/instances?slug={slug}&index={index}&wait=30s", headers=headers)
        r = conn.getresponse()
        answer = r.read()
        done.append(time.perf_counter())
        if r.status != 200 or slug.encode() not in answer:
            wrong.append(f"the watcher of {slug} got {r.status} {answer[:200]!r}, not the change")

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.02)
    writer = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = orjson.dumps({"url": f"http://127.0.0.1:9/{slug}", "slug": slug, "healthCheck": {"type": "none"}})
    sent = time.perf_counter()
    writer.request("PUT", "/registry-svc/instance", body, headers)
    writer.getresponse().read()
    writer.close()
    watcher.join(30)
    conn.close()
    if wrong:
        raise SystemExit(f"watch_bench: {wrong[0]}")
    return (done[0] - sent) * 1000


def resolver_pick(base: str, token: str, calls: int) -> float:
    """ns per `Resolver.pick()` over a slug of 10 instances."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(10):
        body = orjson.dumps(
            {"url": f"http://127.0.0.1:9/picked/{i}", "slug": "picked", "healthCheck": {"type": "none"}}
        )
        conn.request("PUT", "/registry-svc/instance", body, headers)
        conn.getresponse().read()
    conn.close()
    with Resolver("picked", registry=base, token=token) as resolver:
        deadline = time.monotonic() + 10
        while len(resolver.instances()) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        pick = resolver.pick
        runs = []
        for _ in range(3):
            started = time.perf_counter_ns()
            for _ in range(calls):
                pick()
            runs.append((time.perf_counter_ns() - started) / calls)
    return statistics.median(runs)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(idle: int, samples: int, seconds: float, picks: int) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="registry-watch-bench-"))
    proc, base, token = start(work / "data", processes=2)
    port = int(base.rsplit(":", 1)[1])
    try:
        quiet = server_cpu(proc, seconds)
        socks = idle_watchers(port, token, idle)
        time.sleep(1.0)
        watched = server_cpu(proc, seconds)
        latencies = [change_latency(port, token, f"changed-{i}") for i in range(samples)]
        for s in socks:
            s.close()
        pick_ns = resolver_pick(base, token, picks)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    verdict = "met" if p99 < 10 else "not met"
    pick_verdict = "met" if pick_ns < 1000 else "not met"
    return [
        "## Watches and the client library",
        "",
        f"From `python -m loadtest.watch_bench --idle {idle} --samples {samples}` in the same `make bench` run: one server "
        "(`--processes 2`), the watchers on raw loopback sockets.",
        "",
        "| case | value |",
        "|---|---:|",
        f"| change-to-watcher latency p50, {idle:,} idle watchers on other slugs | {p50:.1f} ms |",
        f"| change-to-watcher latency p99 | {p99:.1f} ms |",
        f"| server CPU, no watchers (% of one core, {seconds:g} s) | {quiet:.1f}% |",
        f"| server CPU, {idle:,} idle watchers | {watched:.1f}% |",
        f"| `Resolver.pick()` in process, 10 instances | {pick_ns:,.0f} ns |",
        "",
        f"- **Change-to-watcher p99 (target < 10 ms, issue 22): {verdict}**, at {p99:.1f} ms over {len(latencies)} changes "
        "(from sending the registration to the watcher's answer; includes the durable write).",
        f"- **`Resolver.pick()` (target < 1 us): {pick_verdict}**, at {pick_ns:,.0f} ns.",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--picks", type=int, default=200_000)
    p.add_argument("--append", type=Path, default=None)
    a = p.parse_args()
    publish(run(a.idle, a.samples, a.seconds, a.picks), a.append)


if __name__ == "__main__":
    main()
