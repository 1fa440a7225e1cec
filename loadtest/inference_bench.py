"""Inference routing benchmark: the same LLM workload routed by each policy through our proxy.

A fleet of fake model servers (`loadtest/fake_model_server.py`: a bounded batch, a prefix
cache of 64-byte prompt blocks, time to first token growing with the prompt blocks not
cached and with the queue) is registered with a prometheus load source (100 ms). The
workload: many users sharing a few long system prompts, each request a user's system
prompt plus a question of their own; Poisson arrivals (fixed seed) at a share of the
fleet's capacity when every system prompt is cached. The same schedule is sent through the
data port's proxy once per policy (a fresh fleet each time: cold caches), and once more
through Envoy with our endpoint picker as its `ext_proc` filter (`prefix`), and the client
measures the time to the first streamed chunk (the first token).

Also measured: the picker's own cost (`prefix` picks with 2 KB prompts, in process: p99),
`prefix` decisions per second and per CPU-second on the data port's `pick` (wrk, 2 KB
`X-Registry-Prefix-Key`), and what a 220 KB prompt adds to a proxied request over a 2 KB
one (a fleet with no cost).

    python -m loadtest.inference_bench --seconds 20 [--append BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil

from loadtest.bench import Bench, publish, wait_http
from loadtest.envoy_epp import Envoy, envoy_binary
from loadtest.etcd_cluster import free_port
from loadtest.fake_model_server import Cost

POLICIES = ("round_robin", "least_request", "least_load", "prefix")
# `prefix` again, decided by our endpoint picker for Envoy (loadtest/envoy_epp.py).
ENVOY_SLUG = "llm-envoy"
ENVOY_ROW = "prefix, Envoy + our ext_proc"
FLEET = 8
SYSTEM_PROMPTS = 8
USERS = 400
MAX_TOKENS = 20


@dataclass
class Outcome:
    policy: str
    ttft_ms: list[float] = field(default_factory=list)
    blocks: int = 0
    cached: int = 0
    errors: int = 0
    completed: int = 0
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.ttft_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Registry:
    """A registry-svc server, its admin token, and its ports."""

    def __init__(self, work: Path) -> None:
        self.port, self.data_port, self.epp_port = free_port(), free_port(), free_port()
        policies = [arg for p in POLICIES for arg in ("--slug-policy", f"llm-{p.replace('_', '-')}={p}")]
        policies += ["--slug-policy", "llm-big=prefix", "--slug-policy", f"{ENVOY_SLUG}=prefix"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry_svc", "serve", "--port", str(self.port), "--data-port",
             str(self.data_port), "--epp-port", str(self.epp_port), "--data-dir", str(work / "registry"), *policies],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        wait_http(f"{self.base}/health")
        self.token = (work / "registry" / "admin.token").read_text().strip()

    def call(self, method: str, path: str, body: object) -> bytes:
        request = urllib.request.Request(
            f"{self.base}{path}", method=method, data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {self.token}"},
        )  # fmt: skip
        with urllib.request.urlopen(request) as r:
            return bytes(r.read())

    def register(self, slug: str, ports: list[int], load: bool = True) -> None:
        for port in ports:
            body: dict[str, object] = {"url": f"http://127.0.0.1:{port}", "slug": slug, "models": ["fake"],
                                       "healthCheck": {"type": "http", "path": "/health", "intervalSeconds": 1}}  # fmt: skip
            if load:
                body["load"] = {"type": "prometheus", "path": "/metrics", "intervalMs": 100}
            self.call("PUT", "/registry-svc/instance", body)

    def cpu_seconds(self) -> float:
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Fleet:
    """`count` fake model servers in a process of their own."""

    def __init__(self, work: Path, count: int, cost: Cost) -> None:
        ports_file = work / f"fleet-{time.monotonic_ns()}.json"
        args = [f"--{k.replace('_', '-')}={v}" for k, v in cost.__dict__.items()]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.fake_model_server", "--count", str(count), "--ports-file",
             str(ports_file), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not ports_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.ports: list[int] = json.loads(ports_file.read_text())["ports"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def prompts(seed: int) -> tuple[list[str], list[tuple[int, str]]]:
    """The system prompts (about 3 KB each) and each user's (system prompt, question)."""
    rng = random.Random(seed)
    words = [rng.choice("abcdefghijklmnopqrstuvwxyz") * rng.randint(2, 9) for _ in range(500)]
    systems = [" ".join(rng.choice(words) for _ in range(500))[:3072] for _ in range(SYSTEM_PROMPTS)]
    users = [(u % SYSTEM_PROMPTS, " ".join(rng.choice(words) for _ in range(30))) for u in range(USERS)]
    return systems, users


def schedule(seed: int, rate: float, seconds: float) -> list[tuple[float, int]]:
    """Poisson arrivals: (seconds from the start, user)."""
    rng = random.Random(seed + 1)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append((t, rng.randrange(USERS)))


async def one(
    port: int, path: str, body: bytes, idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
) -> tuple[float, dict[str, object] | None]:
    """One request; (time to the first chunk in ms, the first chunk's JSON or None)."""
    reader, writer = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: llm\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    if "chunked" not in head.lower():
        length = int(re.search(r"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        idle.append((reader, writer))
        return (time.perf_counter() - started) * 1000, None if status != 200 else {}
    first: dict[str, object] | None = None
    ttft = 0.0
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        data = await reader.readexactly(size + 2)
        if first is None:
            ttft = (time.perf_counter() - started) * 1000
            first = json.loads(data[len(b"data: ") :].strip()) if data.startswith(b"data: {") else {}
        if size == 0:
            break
    idle.append((reader, writer))
    return ttft, first


async def drive(port: int, slug: str, plan: list[tuple[float, int]], systems: list[str],
                users: list[tuple[int, str]], outcome: Outcome) -> None:  # fmt: skip
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    start = time.perf_counter()

    async def send(at: float, user: int) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        system, question = users[user]
        body = orjson.dumps({"model": "fake", "prompt": f"{systems[system]}\nUser {user}: {question}",
                             "max_tokens": MAX_TOKENS})  # fmt: skip
        try:
            ttft, first = await one(port, f"/{slug}/v1/completions", body, idle)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            outcome.errors += 1
            return
        if not first:
            outcome.errors += 1
            return
        outcome.ttft_ms.append(ttft)
        outcome.blocks += int(first["blocks"])  # type: ignore[call-overload]
        outcome.cached += int(first["cached"])  # type: ignore[call-overload]
        outcome.completed += 1

    await asyncio.gather(*(send(at, user) for at, user in plan))
    outcome.seconds = time.perf_counter() - start


def run_policies(work: Path, registry: Registry, seconds: float, share: float, seed: int) -> list[Outcome]:
    cost = Cost()
    systems, users = prompts(seed)
    # A request whose system prompt is cached: its question's blocks, the cached ones, the decode.
    blocks = (len(systems[0]) + 40 + 200) // 64
    hit_ms = 4 * cost.prefill_ms_per_block + blocks * cost.cached_ms_per_block + MAX_TOKENS * cost.decode_ms_per_token
    capacity = FLEET * cost.batch / (hit_ms / 1000)
    plan = schedule(seed, share * capacity, seconds)
    outcomes = []
    rows = [(p, f"llm-{p.replace('_', '-')}") for p in POLICIES]
    if envoy_binary() is not None:
        rows.append((ENVOY_ROW, ENVOY_SLUG))
    for name, slug in rows:
        fleet = Fleet(work, FLEET, cost)
        envoy = None
        try:
            registry.register(slug, fleet.ports)
            port = registry.data_port
            if slug == ENVOY_SLUG:
                envoy = Envoy(work, registry.epp_port, registry.token)
                port = envoy.port
            time.sleep(1.5)  # health checks pass, the first load readings arrive
            outcome = Outcome(name)
            asyncio.run(drive(port, slug, plan, systems, users, outcome))
            outcomes.append(outcome)
            print(f"{name}: p90 {outcome.percentile(0.9):.0f} ms, {outcome.completed} done, "
                  f"{outcome.errors} errors", flush=True)  # fmt: skip
        finally:
            if envoy is not None:
                envoy.close()
            fleet.stop()
    return outcomes


def picker_cost(work: Path, samples: int = 20_000) -> tuple[float, float]:
    """p50 and p99 microseconds of one `prefix` pick with a 2 KB prompt, in process."""
    from registry_svc import _core

    store = _core.Store(str(work / "picker"))
    for i in range(FLEET):
        record = {"id": f"i{i}", "url": f"http://127.0.0.1:{9000 + i}", "slug": "llm", "status": "Healthy"}
        store.put("instances", f"i{i}", orjson.dumps(record), None)
    systems, users = prompts(7)
    texts = [f"{systems[u % SYSTEM_PROMPTS][:2000]}{users[u][1]}".encode()[:2048] for u in range(USERS)]
    times = []
    for n in range(samples):
        started = time.perf_counter_ns()
        store.pick_json("llm", "prefix", None, None, [], None, texts[n % USERS])
        times.append((time.perf_counter_ns() - started) / 1000)
    store.close()
    times.sort()
    return statistics.median(times), times[int(0.99 * len(times))]


def decisions(registry: Registry, seconds: float) -> tuple[float, float] | None:
    """`prefix` picks per second on the data port with a 2 KB key (wrk), and per CPU-second
    of the server's processes."""
    if shutil.which("wrk") is None:
        return None
    key = ("You are an assistant for an online bank. " * 60)[:2048]
    url = f"http://127.0.0.1:{registry.data_port}/registry-svc/instance/pick?slug=llm-big"
    before = registry.cpu_seconds()
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds:g}s", "-H", f"Authorization: Bearer {registry.token}",
         "-H", f"X-Registry-Prefix-Key: {key}", url], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = registry.cpu_seconds() - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, rps * seconds / max(cpu, 1e-9)


def large_prompt_cost(
    work: Path, registry: Registry, samples: int = 40, wrk_seconds: float = 5.0
) -> tuple[dict[tuple[str, int], float], tuple[float, float] | None]:
    """Median ms of a completion with a 2 KB prompt and with a 220 KB one, sent to a fake
    server with no cost directly and through the proxy (`prefix`), and the data port's
    `prefix` decisions (`decisions`) over that fleet."""
    free = Cost(batch=64, cache_blocks=10**6, prefill_ms_per_block=0, cached_ms_per_block=0, decode_ms_per_token=0)
    fleet = Fleet(work, 1, free)
    try:
        registry.register("llm-big", fleet.ports, load=False)
        time.sleep(2.5)

        async def measure(port: int, path: str, size: int) -> float:
            idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            times = []
            for n in range(samples):
                body = orjson.dumps({"model": "fake", "prompt": f"{n:08d}" + "x" * size, "max_tokens": 1})
                started = time.perf_counter()
                await one(port, path, body, idle)
                times.append((time.perf_counter() - started) * 1000)
            return statistics.median(times)

        medians = {}
        for size in (2048, 220 * 1024):
            medians[("direct", size)] = asyncio.run(measure(fleet.ports[0], "/v1/completions", size))
            medians[("proxy", size)] = asyncio.run(measure(registry.data_port, "/llm-big/v1/completions", size))
        return medians, decisions(registry, wrk_seconds)
    finally:
        fleet.stop()


def scrape_cost(registry: Registry, instances: int = 1000, seconds: float = 10.0) -> dict[str, float] | None:
    """The supervisor's CPU while it scrapes `instances` prometheus load sources every 100 ms
    (nginx serves a vLLM-style metrics file for each), and the scrapes it made."""
    if shutil.which("nginx") is None:
        return None

    text = (
        b'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 1\n'
        b'vllm:num_requests_running{model_name="m"} 2\nvllm:kv_cache_usage_perc{model_name="m"} 0.3\n'
    )
    # nginx's workers (user nobody when started as root) must reach the files: a directory
    # of its own, open to them (as bench.py's).
    files = Path(tempfile.mkdtemp(prefix="inference-scrape-"))
    files.chmod(0o755)
    bench = Bench(seconds=seconds, work=files)
    try:
        static, _ = bench.nginx({f"i{n}/metrics": text for n in range(instances)})
        for n in range(instances):
            registry.call("PUT", "/registry-svc/instance", {
                "url": f"{static}/i{n}", "slug": "llm-scrape", "healthCheck": {"type": "none"},
                "load": {"type": "prometheus", "intervalMs": 100}})  # fmt: skip

        def scraped() -> tuple[float, float]:
            text = urllib.request.urlopen(f"{registry.base}/metrics").read().decode()
            found = dict(re.findall(r'^(registry_load_sources|registry_load_scrapes_total\{result="ok"\}) (\S+)$',
                                    text, re.M))  # fmt: skip
            return float(found.get("registry_load_sources", 0)), float(
                found.get('registry_load_scrapes_total{result="ok"}', 0)
            )

        deadline = time.monotonic() + 30
        while scraped()[0] < instances and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        supervisor = psutil.Process(registry.proc.pid)
        cpu0, (_, ok0), t0 = sum(supervisor.cpu_times()[:2]), scraped(), time.monotonic()
        time.sleep(seconds)
        cpu1, (_, ok1), t1 = sum(supervisor.cpu_times()[:2]), scraped(), time.monotonic()
        return {
            "instances": instances,
            "cpu_share": (cpu1 - cpu0) / (t1 - t0),
            "scrapes_per_s": (ok1 - ok0) / (t1 - t0),
        }
    finally:
        bench.stop_all()


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def report(outcomes: list[Outcome], picker: tuple[float, float], rate: tuple[float, float] | None,
           large: dict[tuple[str, int], float], seconds: float,
           scrape: dict[str, float] | None = None) -> list[str]:  # fmt: skip
    lines = ["## Inference routing (fake model servers)", "",
             f"{FLEET} fake model servers (`loadtest/fake_model_server.py`, defaults: {Cost()}); {SYSTEM_PROMPTS} "
             f"system prompts of 3 KB shared by {USERS} users; Poisson arrivals for {seconds:g} s, the same "
             "schedule for each policy, through the data port's proxy. Time to first token as the client sees it.", "",
             "| policy | TTFT p50 ms | p90 ms | p99 ms | completed/s | prefix-cache hit rate | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for o in outcomes:
        hit = o.cached / o.blocks if o.blocks else 0.0
        lines.append(f"| {o.policy} | {o.percentile(0.5):.0f} | {o.percentile(0.9):.0f} | {o.percentile(0.99):.0f} "
                     f"| {o.completed / max(o.seconds, 1e-9):.1f} | {hit:.0%} | {o.errors} |")  # fmt: skip
    by = {o.policy: o for o in outcomes}
    ratio = by["prefix"].percentile(0.9) / by["round_robin"].percentile(0.9)
    lines.append("")
    lines.append(f"- `prefix` p90 TTFT / `round_robin`'s: **{ratio:.2f}x** (target <= 0.5x: {met(ratio <= 0.5)}).")
    lines.append(
        f"- the picker's own cost, `prefix` with a 2 KB prompt, in process: p50 {picker[0]:.1f} us, "
        f"p99 **{picker[1]:.1f} us** (target < 200 us: {met(picker[1] < 200)})."
    )
    if rate is not None:
        lines.append(f"- `prefix` picks on the data port with a 2 KB key (wrk, 16 connections): {rate[0]:,.0f}/s, "
                     f"**{rate[1]:,.0f} per CPU-second** of the server (target >= 20,000 per core: "
                     f"{met(rate[1] >= 20_000)}).")  # fmt: skip
    if scrape is not None:
        per_thousand = scrape["cpu_share"] * 1000 / scrape["instances"]
        lines.append(f"- scraping load: {scrape['instances']:.0f} prometheus sources every 100 ms (nginx serving vLLM-style "
                     f"metrics): {scrape['scrapes_per_s']:,.0f} scrapes/s, the supervisor at "
                     f"**{per_thousand:.0%} of a core per 1,000 instances**.")  # fmt: skip
    small, big = 2048, 220 * 1024
    proxy_small = large[("proxy", small)] - large[("direct", small)]
    proxy_big = large[("proxy", big)] - large[("direct", big)]
    added = proxy_big - proxy_small
    lines.append(f"- a 220 KB prompt through the proxy (`prefix`, the body read whole, parsed and hashed): the proxy "
                 f"adds {proxy_big:.2f} ms to the upstream's median (direct {large[('direct', big)]:.2f} ms), "
                 f"{proxy_small:.2f} ms for a 2 KB one: **{added:.2f} ms more** "
                 f"(target < 5 ms: {met(added < 5)}).")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="arrivals per policy")
    p.add_argument("--share", type=float, default=0.8, help="offered load, of the all-cached capacity")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--append", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp:
        work = Path(tmp)
        registry = Registry(work)
        try:
            outcomes = run_policies(work, registry, args.seconds, args.share, args.seed)
            picker = picker_cost(work)
            large, rate = large_prompt_cost(work, registry)
            scrape = scrape_cost(registry)
        finally:
            registry.stop()
    publish(report(outcomes, picker, rate, large, args.seconds, scrape), args.append)


if __name__ == "__main__":
    main()
