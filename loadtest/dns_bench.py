"""DNS benchmark: registry-svc's DNS interface against NSD serving the same records.

Both answer `<slug>.service.registry.` A questions for the same slugs, each with the same
three loopback addresses: ours from the store (rust/dns/), NSD from a static zone file
with `round-robin: yes`, so both vary the order. Each side gets two UDP sockets (our one
process's two DNS threads, NSD's two server processes) and the machine's cores are shared
with dnsperf, the load generator (Debian's dnsperf, run the same way against both).

- queries/s: `dnsperf -c 4 -q 100`, as fast as they answer;
- latency: `dnsperf -Q <rate> -v` at a fixed offered rate, p99 of every answer's time.

Each measurement is repeated, the targets alternating; the report gives medians and
ranges and the verdicts (queries/s >= 1.0x NSD's, p99 <= 1.5x). `make bench` appends the
section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from loadtest.bench import publish, wait_http
from loadtest.etcd_cluster import free_port

DOMAIN = "registry."
INSTANCES_PER_SLUG = 3


@dataclass
class Target:
    name: str
    port: int
    qps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)


def addresses(slug_index: int) -> list[str]:
    return [f"127.0.{slug_index}.{i + 1}" for i in range(INSTANCES_PER_SLUG)]


def start_registry(work: Path, slugs: int) -> tuple[subprocess.Popen[bytes], int]:
    port, dns_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry_svc", "serve", "--port", str(port), "--data-port", "0",
         "--data-dir", str(work / "registry"), "--dns-port", str(dns_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", timeout=60)
    token = (work / "registry" / "admin.token").read_text().strip()
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for s in range(slugs):
        for address in addresses(s):
            body = {
                "url": f"http://{address}:80",
                "slug": f"svc{s}",
                "status": "Healthy",
                "healthCheck": {"type": "none"},
            }
            conn.request("PUT", "/registry-svc/instance", orjson.dumps(body), headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 201, response.status
    conn.close()
    return proc, dns_port


def start_nsd(work: Path, slugs: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    zone = [
        f"$ORIGIN {DOMAIN}",
        "$TTL 0",
        f"@ IN SOA ns.{DOMAIN} hostmaster.{DOMAIN} 1 3600 600 86400 0",
        f"@ IN NS ns.{DOMAIN}",
    ]
    zone += [f"svc{s}.service IN A {address}" for s in range(slugs) for address in addresses(s)]
    (work / "zone").write_text("\n".join(zone) + "\n")
    (work / "nsd.conf").write_text(
        f"""server:
  ip-address: 127.0.0.1@{port}
  port: {port}
  username: ""
  chroot: ""
  zonesdir: "{work}"
  pidfile: "{work}/nsd.pid"
  xfrdfile: "{work}/xfrd.state"
  zonelistfile: "{work}/zone.list"
  database: ""
  server-count: 2
  reuseport: yes
  round-robin: yes
  rrl-ratelimit: 0
  logfile: "{work}/nsd.log"
remote-control:
  control-enable: no
zone:
  name: {DOMAIN}
  zonefile: zone
"""
    )
    proc = subprocess.Popen(
        ["nsd", "-d", "-c", str(work / "nsd.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    return proc, port


def wait_dns(port: int, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=1", "+tries=1", name],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered {name} on port {port}")


def dnsperf(port: int, queries: Path, seconds: float, *extra: str) -> str:
    done = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds), *extra],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    return done.stdout


def throughput(output: str) -> float:
    lost = re.search(r"Queries lost:\s+(\d+)", output)
    if lost and int(lost.group(1)):
        raise RuntimeError(f"dnsperf lost queries:\n{output}")
    if "NOERROR" not in output or re.search(r"Response codes:.*(NXDOMAIN|SERVFAIL|REFUSED)", output):
        raise RuntimeError(f"answers were not all NOERROR:\n{output}")
    found = re.search(r"Queries per second:\s+([\d.]+)", output)
    if not found:
        raise RuntimeError(f"no queries/s in dnsperf's output:\n{output}")
    return float(found.group(1))


def p99_ms(output: str) -> float:
    latencies = sorted(float(m) for m in re.findall(r"^> NOERROR \S+ A ([\d.]+)$", output, re.MULTILINE))
    if not latencies:
        raise RuntimeError(f"no answers in dnsperf's verbose output:\n{output[-2000:]}")
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000


def run(seconds: float, repeats: int, rate: int, slugs: int = 20) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="registry-dns-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        registry, ours = start_registry(work, slugs)
        procs.append(registry)
        nsd, theirs = start_nsd(work, slugs)
        procs.append(nsd)
        wait_dns(ours, f"svc0.service.{DOMAIN}")
        wait_dns(theirs, f"svc0.service.{DOMAIN}")
        queries = work / "queries"
        queries.write_text("".join(f"svc{s}.service.{DOMAIN} A\n" for s in range(slugs)))
        targets = [Target("registry-svc DNS", ours), Target("NSD 4.6, static zone", theirs)]
        for target in targets:  # warm-up
            dnsperf(target.port, queries, min(seconds, 1.0), "-c", "4")
        for rep in range(repeats):
            for target in targets if rep % 2 == 0 else targets[::-1]:
                target.qps.append(throughput(dnsperf(target.port, queries, seconds, "-c", "4", "-q", "100")))
            for target in targets if rep % 2 == 0 else targets[::-1]:
                verbose = dnsperf(target.port, queries, seconds, "-c", "4", "-Q", str(rate), "-v")
                target.p99_ms.append(p99_ms(verbose))
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    return report(targets, seconds, repeats, rate, slugs)


def spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def report(targets: list[Target], seconds: float, repeats: int, rate: int, slugs: int) -> list[str]:
    ours, nsd = targets
    qps_ratio = statistics.median(ours.qps) / statistics.median(nsd.qps)
    ratios = [a / b for a, b in zip(ours.qps, nsd.qps, strict=True)]
    p99_ratio = statistics.median(ours.p99_ms) / statistics.median(nsd.p99_ms)
    return [
        "## DNS",
        "",
        f"From `python -m loadtest.dns_bench --seconds {seconds:g} --repeats {repeats}` in the same `make bench` run: "
        f"{slugs} slugs of {INSTANCES_PER_SLUG} instances, A questions over UDP from dnsperf (4 clients), against "
        "registry-svc's DNS port (one process, default flags) and NSD holding the same records in a static zone "
        f"(`round-robin: yes`, two servers). Median of {repeats} runs each, range in brackets; latency at "
        f"{rate:,} queries/s offered.",
        "",
        "| target | queries/s | p99 latency |",
        "|---|---:|---:|",
        *(f"| {t.name} | {spread(t.qps)} | {spread(t.p99_ms, 3)} ms |" for t in targets),
        "",
        f"- **Queries/s vs NSD (target >= 1.0x): {'met' if qps_ratio >= 1.0 else 'not met'}**, at {qps_ratio:.2f}x "
        f"(per run {min(ratios):.2f}x-{max(ratios):.2f}x).",
        f"- **p99 vs NSD (target <= 1.5x): {'met' if p99_ratio <= 1.5 else 'not met'}**, at {p99_ratio:.2f}x.",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rate", type=int, default=20_000, help="queries/s offered in the latency runs")
    p.add_argument("--append", type=Path, default=None)
    a = p.parse_args()
    publish(run(a.seconds, a.repeats, a.rate), a.append)


if __name__ == "__main__":
    main()
