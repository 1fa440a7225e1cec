"""The benchmark suite: registry-svc beside real baselines, measured in the same run.

    python -m loadtest.bench [--seconds 10] [--quick] [--out BENCHMARKS.md]

Cases (wrk, 2 threads x 64 connections, loopback only, each bounded by --seconds):
- lookup: `GET /registry-svc/instances?slug=S` with a token, random slugs, 10 instances
  each, in a registry of 100,000 instances over 10,000 slugs and 1,000 nodes; and the same
  in a small registry (1,000 instances). Baselines: nginx serving a file of the same bytes;
  etcd serializable range reads of the same 10 records through its JSON gateway.
- pick: `GET /registry-svc/instance/pick?slug=S`, random slugs. Baseline: nginx serving a
  file of the same size.
- register: durable `PUT /registry-svc/instance` from 64 concurrent connections.
- proxy: `GET /<slug>/payload` through the built-in proxy to an nginx backend. Baseline:
  nginx as reverse proxy to the same backend; and, to tell our policy's cost from the HTTP
  library's, the leanest proxy hyper makes (`loadtest/hyper_floor.rs`, built here).
- each of lookup, pick and proxy on the API port and on the data port (`--data-port`,
  served in Rust by every process); the API port's lookup is also set against its own
  floor, `GET /health` (a Python handler doing nothing).
- in-process: the Rust store called from Python (median ns).
- RSS of each server process (supervisor and workers) after the HTTP cases.

Needs `wrk` and `nginx` (and `etcd` for that baseline) on PATH: `make bench` installs them
from Debian's packages. A missing baseline is reported as such, never silently skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadtest import inprocess
from registry_svc import _core
from registry_svc.clock import utc_now

THREADS, CONNECTIONS = 2, 64


# The bench's row for loadtest/hyper_floor.rs.
HYPER_FLOOR = "bare hyper proxy (the library's floor)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish(lines: list[str], append: Path | None) -> None:
    """Prints a benchmark's section, and appends it to `append` (BENCHMARKS.md) when given."""
    text = "\n".join(lines)
    print(text)
    if append:
        with append.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {append}")


def wait_http(url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1):
                return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@dataclass
class Result:
    """One case against one target: requests/s of each repetition, latency of the median one."""

    case: str
    target: str
    runs: list[float]
    p50_ms: float
    p99_ms: float
    command: str
    errors: int = 0

    @property
    def rps(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> str:
        """min-max of the repetitions (empty for a single run)."""
        return "" if len(self.runs) < 2 else f"{min(self.runs):,.0f}-{max(self.runs):,.0f}"


@dataclass
class Bench:
    seconds: float
    work: Path
    repeats: int = 1
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    inprocess: dict[str, tuple[float, float]] = field(default_factory=dict)
    # (process, RSS MiB) of the large registry's server after the HTTP cases.
    rss: list[tuple[str, float]] = field(default_factory=list)

    # --- tools -----------------------------------------------------------------------

    def wrk(self, case: str, target: str, url: str, *, token: str | None = None, script: str | None = None) -> Result:
        cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{self.seconds:g}s", "--latency"]
        if token:
            cmd += ["-H", f"Authorization: Bearer {token}"]
        if script:
            path = self.work / f"{re.sub(r'[^a-z0-9]+', '-', (case + target).lower())}.lua"
            path.write_text(script)
            cmd += ["-s", str(path)]
        cmd.append(url)
        runs: list[tuple[float, str]] = []
        errors = 0
        for _ in range(self.repeats):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.seconds + 60, check=True).stdout
            runs.append((float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), out))  # type: ignore[union-attr]
            errors += sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?):\s*(\d+)", out))
        median_out = sorted(runs)[len(runs) // 2][1]
        shown = " ".join(c if " " not in c else repr(c) for c in cmd).replace(token or "\0", "$TOKEN")
        result = Result(
            case, target, [r for r, _ in runs], _percentile(median_out, "50%"), _percentile(median_out, "99%"),
            shown, errors,
        )  # fmt: skip
        self.results.append(result)
        print(f"  {case:34s} {target:28s} {result.rps:10.0f} req/s {result.spread:>15s}  "
              f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
              + (f"  ({errors} errors)" if errors else ""), flush=True)  # fmt: skip
        return result

    def warm(self, base: str, token: str, slugs: int) -> None:
        path = self.work / f"warm-{slugs}.lua"
        path.write_text(warm_script(slugs))
        cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{max(2.0, min(5.0, slugs / 2000)):g}s",
               "-H", f"Authorization: Bearer {token}", "-s", str(path), base]  # fmt: skip
        subprocess.run(cmd, capture_output=True, timeout=60, check=True)

    def spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kwargs
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    # --- servers ---------------------------------------------------------------------

    def registry(self, data_dir: Path, processes: int) -> tuple[str, str, str]:
        """A server on `data_dir`: its API port's URL, its data port's URL, the admin token."""
        port, data_port = free_port(), free_port()
        self.spawn(
            [sys.executable, "-m", "registry_svc", "serve", "--port", str(port), "--data-port", str(data_port),
             "--data-dir", str(data_dir), "--processes", str(processes), "--workers", "2",
             "--probe-networks", "127.0.0.0/8,::1/128"]
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health")
        wait_http(f"http://127.0.0.1:{data_port}/health")
        return base, f"http://127.0.0.1:{data_port}", (data_dir / "admin.token").read_text().strip()

    def measure_rss(self, proc: subprocess.Popen[bytes], data_url: str) -> None:
        """Resident memory of a server's processes: the supervisor (API gate), the workers
        (Robyn and a share of the data port), and Robyn's parent process (it serves nothing)."""
        import psutil

        data_port = int(data_url.rsplit(":", 1)[1])
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                if p.pid == root.pid:
                    role = "supervisor (API gate)"
                elif any(c.laddr.port == data_port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN):
                    role = "worker (Robyn + data port)"
                else:
                    role = "Robyn's parent process"
                self.rss.append((f"{role}, pid {p.pid}", p.memory_info().rss / (1 << 20)))

    def hyper_floor(self, upstream: str, threads: int) -> str | None:
        """The bare hyper proxy (`loadtest/hyper_floor.rs`) in front of `upstream`; None
        (reported as missing) when cargo cannot build it."""
        root = Path(__file__).resolve().parent.parent
        build = subprocess.run(
            ["cargo", "build", "--release", "--quiet", "--no-default-features", "--example", "hyper_floor"],
            cwd=root, capture_output=True, text=True,
        )  # fmt: skip
        if build.returncode != 0:
            print(f"hyper floor: not built: {build.stderr.strip()[-500:]}", flush=True)
            return None
        port = free_port()
        target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
        self.spawn([str(target / "release" / "examples" / "hyper_floor"), f"127.0.0.1:{port}", upstream, str(threads)])
        return f"http://127.0.0.1:{port}"

    def nginx(self, files: dict[str, bytes], proxy_to: str | None = None) -> tuple[str, str | None]:
        """nginx serving `files` (and, with `proxy_to`, a second server reverse-proxying to it)."""
        root = self.work / f"nginx-{len(self.procs)}"
        (root / "html").mkdir(parents=True)
        for name, data in files.items():
            path = root / "html" / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        static_port, proxy_port = free_port(), free_port()
        proxy_block = ""
        if proxy_to:
            proxy_block = f"""
            upstream backend {{ server {proxy_to}; keepalive 64; }}
            server {{
                listen 127.0.0.1:{proxy_port};
                location / {{
                    proxy_pass http://backend;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header X-Forwarded-For $remote_addr;
                }}
            }}"""
        conf = root / "nginx.conf"
        conf.write_text(
            textwrap.dedent(f"""
            worker_processes 2;
            pid {root}/nginx.pid;
            error_log {root}/error.log;
            daemon off;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                default_type application/json;
                client_body_temp_path {root}/tmp;
                proxy_temp_path {root}/tmp;
                server {{ listen 127.0.0.1:{static_port}; root {root}/html; }}
                {proxy_block}
            }}""")
        )
        (root / "tmp").mkdir()
        self.spawn(["nginx", "-c", str(conf), "-p", str(root)])
        wait_http(f"http://127.0.0.1:{static_port}/{next(iter(files)).lstrip('/')}")
        return f"http://127.0.0.1:{static_port}", (f"http://127.0.0.1:{proxy_port}" if proxy_to else None)


def _percentile(wrk_output: str, label: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", wrk_output, re.M)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def warm_script(slugs: int) -> str:
    """Visits every slug's lookup and pick once per pass: the caches start warm, as in a
    long-running registry (each server process has its own)."""
    return textwrap.dedent(f"""
        local n = 0
        request = function()
          n = n + 1
          local path = (n % 2 == 0) and "/registry-svc/instances?slug=svc-%d" or "/registry-svc/instance/pick?slug=svc-%d"
          return wrk.format(nil, string.format(path, math.floor(n / 2) % {slugs}))
        end
    """)


def random_slug_script(path_template: str, slugs: int) -> str:
    """A wrk script requesting `path_template` with a random slug `svc-N` each time."""
    return textwrap.dedent(f"""
        math.randomseed(os.time())
        request = function()
          return wrk.format(nil, string.format("{path_template}", math.random(0, {slugs - 1})))
        end
    """)


def seed_registry(data_dir: Path, instances: int, slugs: int, nodes: int) -> None:
    """Fills a data dir through the store's bulk path, before the server starts."""
    store = _core.Store(str(data_dir / "store"))
    inprocess.seed(store, instances, slugs)
    # A live fleet: fresh heartbeats and a long interval, so that the node agent does not
    # (rightly) declare the simulated nodes dead and their instances Unhealthy mid-run.
    now = utc_now()
    store.put_many(
        "nodes",
        [
            (f"node-{i}", orjson.dumps({"id": f"node-{i}", "url": f"http://node-{i}:11337", "region": None,
             "availabilityZone": None, "lastHeartbeat": now, "status": "Healthy", "heartbeatIntervalSeconds": 86400,
             "usage": {}, "gpus": []}))
            for i in range(nodes)
        ],
    )  # fmt: skip
    store.close()


def register_backend(base: str, token: str, slug: str, url: str) -> None:
    """Registers `url` (a loopback baseline) as a Healthy instance of `slug`."""
    instance = {"url": url, "slug": slug, "status": "Healthy", "healthCheck": {"type": "none"}}
    put = urllib.request.Request(
        f"{base}/registry-svc/instance", method="PUT", data=orjson.dumps(instance),
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    urllib.request.urlopen(put).close()


def get(url: str, token: str) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})) as r:
        return bytes(r.read())


REGISTER_SCRIPT = """
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"url":"http://reg-%d-%d:80","slug":"reg-%d","healthCheck":{"type":"none"}}', tid, n, n % 100)
  local headers = {["Content-Type"] = "application/json"}
  for k, v in pairs(wrk.headers) do headers[k] = v end  -- keeps -H Authorization
  return wrk.format("PUT", "/registry-svc/instance", headers, body)
end
"""


def etcd(bench: Bench, records: list[bytes]) -> tuple[str, str] | None:
    """etcd (3.4, from Debian's etcd-server) holding `records` under one prefix; returns
    its URL and the JSON-gateway range request for them."""
    if shutil.which("etcd") is None:
        bench.notes.append("etcd baseline skipped: `etcd` not found (make bench installs etcd-server)")
        return None
    client, peer = free_port(), free_port()
    data = bench.work / "etcd"
    bench.spawn(
        ["etcd", "--name", "bench", "--data-dir", str(data), "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}", "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
        env={**os.environ, "ETCD_UNSUPPORTED_ARCH": platform.machine()},
    )  # fmt: skip
    base = f"http://127.0.0.1:{client}"
    wait_http(f"{base}/version")
    prefix = b"/registry/instances/svc-1/"
    for i, record in enumerate(records):
        put = {"key": b64(prefix + str(i).encode()), "value": b64(record)}
        urllib.request.urlopen(urllib.request.Request(f"{base}/v3/kv/put", data=orjson.dumps(put))).close()
    range_end = prefix[:-1] + bytes([prefix[-1] + 1])
    query = orjson.dumps({"key": b64(prefix), "range_end": b64(range_end), "serializable": True}).decode()
    return base, query


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def post_script(body: str) -> str:
    return f'wrk.method = "POST"\nwrk.body = \'{body}\'\nwrk.headers["Content-Type"] = "application/json"\n'


def run(seconds: float, quick: bool, repeats: int = 1) -> Bench:
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"bench: {', '.join(missing)} not found; `make bench` installs them (Debian: apt-get install wrk nginx-light etcd-server)"
        )
    work = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    work.chmod(0o755)  # nginx workers (user nobody when started as root) must read the files
    bench = Bench(seconds, work, repeats)
    large = (3000, 300, 30) if quick else (100_000, 10_000, 1000)
    small = (300, 30, 3) if quick else (1000, 100, 10)
    processes = os.cpu_count() or 1
    try:
        print(f"in-process (Rust store from Python, {large[0]:,} instances):", flush=True)
        calls = 2000 if quick else 20000
        bench.inprocess = inprocess.run(large[0], large[1], calls, 50 if quick else 500)

        print(
            f"seeding {large[0]:,} instances over {large[1]:,} slugs and {large[2]:,} nodes, and a small registry ...",
            flush=True,
        )
        seed_registry(work / "large", *large)
        seed_registry(work / "small", *small)
        base, data, token = bench.registry(work / "large", processes)
        server = bench.procs[-1]
        lookup_bytes = get(f"{base}/registry-svc/instances?slug=svc-1", token)
        pick_bytes = get(f"{base}/registry-svc/instance/pick?slug=svc-1", token)
        payload = b'{"ok":true,"items":[' + b",".join(b'"item"' for _ in range(40)) + b"]}"
        static, _ = bench.nginx({"lookup.json": lookup_bytes, "pick.json": pick_bytes, "bench-svc/payload": payload})
        _, nginx_proxy = bench.nginx({"probe.txt": b"ok"}, proxy_to=static.removeprefix("http://"))

        bench.warm(base, token, large[1])
        lookup_case = f"lookup 10 of {large[0]:,}"
        print(f"{lookup_case} ({len(lookup_bytes)} B responses):", flush=True)
        bench.wrk(lookup_case, "registry-svc", base, token=token,
                  script=random_slug_script("/registry-svc/instances?slug=svc-%d", large[1]))  # fmt: skip
        bench.wrk(lookup_case, "registry-svc data port", data, token=token,
                  script=random_slug_script("/registry-svc/instances?slug=svc-%d", large[1]))  # fmt: skip
        bench.wrk(lookup_case, "nginx static, same bytes", f"{static}/lookup.json")
        records = [orjson.dumps(i) for i in orjson.loads(lookup_bytes)["instances"]]
        etcd_target = etcd(bench, records)
        if etcd_target:
            etcd_base, query = etcd_target
            bench.wrk(
                lookup_case, "etcd 3.4 range, serializable", f"{etcd_base}/v3/kv/range", script=post_script(query)
            )

        small_base, _, small_token = bench.registry(work / "small", processes)
        bench.warm(small_base, small_token, small[1])
        small_case = f"lookup 10 of {small[0]:,}"
        print(f"{small_case}:", flush=True)
        bench.wrk(small_case, "registry-svc", small_base, token=small_token,
                  script=random_slug_script("/registry-svc/instances?slug=svc-%d", small[1]))  # fmt: skip

        print("the floor of this stack (a Python handler doing nothing: no auth, no store):", flush=True)
        bench.wrk("GET /health (stack floor)", "registry-svc", f"{base}/health")

        print(f"pick ({len(pick_bytes)} B responses):", flush=True)
        bench.wrk("pick", "registry-svc", base, token=token,
                  script=random_slug_script("/registry-svc/instance/pick?slug=svc-%d", large[1]))  # fmt: skip
        bench.wrk("pick", "registry-svc data port", data, token=token,
                  script=random_slug_script("/registry-svc/instance/pick?slug=svc-%d", large[1]))  # fmt: skip
        bench.wrk("pick", "nginx static, same bytes", f"{static}/pick.json")

        print("durable registrations (64 connections):", flush=True)
        bench.wrk("register (durable PUT)", "registry-svc", base, token=token, script=REGISTER_SCRIPT)

        print("proxy (backend: nginx static):", flush=True)
        register_backend(base, token, "bench-svc", static)
        bench.wrk("proxy GET 1 KiB", "registry-svc proxy", f"{base}/bench-svc/payload")
        bench.wrk("proxy GET 1 KiB", "registry-svc data port proxy", f"{data}/bench-svc/payload")
        if nginx_proxy:
            bench.wrk("proxy GET 1 KiB", "nginx reverse proxy", f"{nginx_proxy}/bench-svc/payload")
        floor = bench.hyper_floor(static.removeprefix("http://"), processes)
        if floor:
            wait_http(f"{floor}/bench-svc/payload")
            bench.wrk("proxy GET 1 KiB", HYPER_FLOOR, f"{floor}/bench-svc/payload")
        bench.measure_rss(server, data)
    finally:
        bench.stop_all()
    return bench


def find(bench: Bench, case: str, target: str) -> Result | None:
    return next((r for r in bench.results if r.case == case and r.target == target), None)


def ratio_of(bench: Bench, case: str, ours: str, baseline: str) -> tuple[float, float, float] | None:
    """(median ratio, lowest, highest): ours / baseline in requests per second, the range
    pairing each side's slowest and fastest repetition."""
    a, b = find(bench, case, ours), find(bench, case, baseline)
    if a is None or b is None:
        return None
    return a.rps / b.rps, min(a.runs) / max(b.runs), max(a.runs) / min(b.runs)


def floor_ratio(bench: Bench, case: str) -> str:
    """The API port's lookup over its own `GET /health`, with the range of the repetitions."""
    a, b = find(bench, case, "registry-svc"), find(bench, "GET /health (stack floor)", "registry-svc")
    if a is None or b is None:
        return "n/a"
    spread = f" ({min(a.runs) / max(b.runs):.2f}-{max(a.runs) / min(b.runs):.2f})" if bench.repeats > 1 else ""
    return f"{a.rps / b.rps:.2f}x{spread}"


def ratio(bench: Bench, case: str, ours: str, baseline: str) -> str:
    found = ratio_of(bench, case, ours, baseline)
    if found is None:
        return "n/a"
    median, low, high = found
    return f"{median:.2f}x" + (f" ({low:.2f}-{high:.2f})" if bench.repeats > 1 else "")


def p99_ratio(bench: Bench, case: str, ours: str, baseline: str) -> float | None:
    """Our p99 over the baseline's, each from its median repetition."""
    a, b = find(bench, case, ours), find(bench, case, baseline)
    if a is None or b is None or not b.p99_ms > 0:
        return None
    return a.p99_ms / b.p99_ms


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "not met"


def analysis(bench: Bench, large: str, small: str) -> list[str]:
    """What this run says about each target. Every figure and verdict is computed here
    from the results of the run; none is written by hand."""

    def times(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    def median(found: tuple[float, float, float] | None) -> float | None:
        return None if found is None else found[0]

    lookup = median(ratio_of(bench, large, "registry-svc", "nginx static, same bytes"))
    etcd = median(ratio_of(bench, large, "registry-svc", "etcd 3.4 range, serializable"))
    proxy = median(ratio_of(bench, "proxy GET 1 KiB", "registry-svc proxy", "nginx reverse proxy"))
    health, static = (
        find(bench, "GET /health (stack floor)", "registry-svc"),
        find(bench, large, "nginx static, same bytes"),
    )
    floor = health.rps / static.rps if health and static else None
    big, little = find(bench, large, "registry-svc"), find(bench, small, "registry-svc")
    p99 = big.p99_ms / little.p99_ms if big and little and little.p99_ms > 0 else None
    register = find(bench, "register (durable PUT)", "registry-svc")
    cached = next((v[0] for k, v in bench.inprocess.items() if k.startswith("lookup slug, cached")), None)
    hot_pick = bench.inprocess.get("pick, one hot slug", (None, None))[0]

    data_lookup = median(ratio_of(bench, large, "registry-svc data port", "nginx static, same bytes"))
    data_pick = median(ratio_of(bench, "pick", "registry-svc data port", "nginx static, same bytes"))
    data_proxy = median(ratio_of(bench, "proxy GET 1 KiB", "registry-svc data port proxy", "nginx reverse proxy"))
    data_p99 = p99_ratio(bench, large, "registry-svc data port", "nginx static, same bytes")
    pick_p99 = p99_ratio(bench, "pick", "registry-svc data port", "nginx static, same bytes")
    proxy_p99 = p99_ratio(bench, "proxy GET 1 KiB", "registry-svc data port proxy", "nginx reverse proxy")
    main_vs_floor = big.rps / health.rps if big and health else None

    hyper = median(ratio_of(bench, "proxy GET 1 KiB", HYPER_FLOOR, "nginx reverse proxy"))
    over_hyper = median(ratio_of(bench, "proxy GET 1 KiB", "registry-svc data port proxy", HYPER_FLOOR))

    lines = ["## What this run says", ""]
    lines.append("Data port (`--data-port`, Rust, every process):")
    lines.append(f"- **Lookup vs nginx (target 1.1x): {verdict(data_lookup, 1.1)}**, at {times(data_lookup)}.")
    lines.append(f"- **Pick vs nginx (target 1.1x): {verdict(data_pick, 1.1)}**, at {times(data_pick)}.")
    lines.append(
        f"- **Proxy vs nginx reverse proxy (target 1.0x): {verdict(data_proxy, 1.0)}**, at {times(data_proxy)}."
    )
    if hyper is not None:
        lines.append(
            f"  The leanest proxy hyper makes (no policy, an upstream connection per client connection) reaches "
            f"{times(hyper)} of nginx here; ours reaches {times(over_hyper)} of it."
        )
    worst_p99 = max((v for v in (data_p99, pick_p99, proxy_p99) if v is not None), default=None)
    lines.append(
        f"- **p99 vs nginx's p99 (target at most 1.5x): {verdict(worst_p99, 1.5, False)}**: lookup {times(data_p99)}, "
        f"pick {times(pick_p99)}, proxy {times(proxy_p99)}."
    )
    lines.append("")
    lines.append("API port:")
    lines.append(
        f"- **Lookup vs the port's own floor, `GET /health` (target 0.8x): {verdict(main_vs_floor, 0.8)}**, "
        f"at {times(main_vs_floor)}."
    )
    lines.append(f"- **Lookup over HTTP vs nginx (target 0.9x): {verdict(lookup, 0.9)}**, at {times(lookup)}.")
    if cached is not None:
        if lookup is not None and floor is not None and lookup > floor:
            lines.append(
                f"  Lookups are answered in Rust by the API port's gate, without Python: they reach {times(lookup)} "
                f"of nginx's rate, where a Python handler that does nothing (`GET /health`) reaches {times(floor)}. "
                f"The store answers a cached lookup in {cached:.1f} us in-process."
            )
        else:
            lines.append(
                f"  The store answers a cached lookup in {cached:.1f} us in-process, while a Python handler that does "
                f"nothing (`GET /health`) reaches {times(floor)} of nginx's rate here: the HTTP stack sets the ceiling."
            )
    lines.append(f"- **Lookup vs etcd range (target 3x): {verdict(etcd, 3.0)}**, at {times(etcd)}.")
    if hot_pick is not None:
        lines.append(
            f"- **In-process pick of a hot slug (target under 1 us): {verdict(hot_pick, 1.0, False)}**, "
            f"median {hot_pick:.2f} us."
        )
    if register is not None:
        spread = f" (repetitions {register.spread})" if register.spread else ""
        lines.append(
            f"- **Durable registrations (target 5,000/s): {verdict(register.rps, 5000)}**, "
            f"at {register.rps:,.0f}/s{spread}."
        )
    lines.append(f"- **Proxy vs nginx reverse proxy (no target)**: {times(proxy)}.")
    lines.append(
        f"- **Lookup p99, large / small registry (target at most 1.5x): {verdict(p99, 1.5, False)}**, at {times(p99)}."
    )
    return lines


def report(bench: Bench, seconds: float, elapsed: float) -> str:
    """BENCHMARKS.md: the table, the targets, and how the figures were taken."""
    now = datetime.datetime.now(datetime.UTC)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python -m loadtest.bench --seconds {seconds:g}`) on "
        f"{now:%Y-%m-%d %H:%M} UTC, machine `{platform.node()}`: {os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}, Linux {platform.release()}. "
        f"Whole run: {elapsed:.0f} s. Every server, the load generator (wrk, {THREADS} threads x "
        f"{CONNECTIONS} connections) and the baselines share the same cores, on loopback; figures are "
        "relative and from one noisy machine.",
        "",
        "## HTTP",
        "",
        f"Each case ran {bench.repeats} time(s); requests/s is the median, with the range of the repetitions.",
        "",
        "| case | target | requests/s | range | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in bench.results:
        lines.append(
            f"| {r.case} | {r.target} | {r.rps:,.0f} | {r.spread or '-'} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
        )
    large = next((r.case for r in bench.results if r.case.startswith("lookup") and "100,000" in r.case), None)
    large = large or next((r.case for r in bench.results if r.case.startswith("lookup")), "")
    small = next((r.case for r in bench.results if r.case.startswith("lookup") and r.case != large), "")
    p99 = {r.case: r.p99_ms for r in bench.results if r.target == "registry-svc"}
    lines += [
        "",
        "Ratios (ours / baseline, requests per second):",
        "",
        f"- lookup vs nginx static: {ratio(bench, large, 'registry-svc', 'nginx static, same bytes')} (target 0.9x)",
        f"- lookup vs etcd range: {ratio(bench, large, 'registry-svc', 'etcd 3.4 range, serializable')} (target 3x)",
        f"- pick vs nginx static: {ratio(bench, 'pick', 'registry-svc', 'nginx static, same bytes')}",
        f"- proxy vs nginx reverse proxy: {ratio(bench, 'proxy GET 1 KiB', 'registry-svc proxy', 'nginx reverse proxy')}",
        f"- data port lookup vs nginx static: {ratio(bench, large, 'registry-svc data port', 'nginx static, same bytes')} (target 1.1x)",
        f"- data port pick vs nginx static: {ratio(bench, 'pick', 'registry-svc data port', 'nginx static, same bytes')} (target 1.1x)",
        f"- data port proxy vs nginx reverse proxy: {ratio(bench, 'proxy GET 1 KiB', 'registry-svc data port proxy', 'nginx reverse proxy')} (target 1.0x)",
        f"- bare hyper proxy vs nginx reverse proxy: {ratio(bench, 'proxy GET 1 KiB', HYPER_FLOOR, 'nginx reverse proxy')}",
        f"- API port lookup vs its `GET /health` floor: {floor_ratio(bench, large)} (target 0.8x)",
    ]
    if large in p99 and small in p99 and p99[small] > 0:
        lines.append(f"- lookup p99, large / small registry: {p99[large] / p99[small]:.2f} (target at most 1.5)")
    if bench.rss:
        lines += ["", "## Memory", "", "RSS of the large registry's server processes after the HTTP cases:", "",
                  "| process | RSS MiB |", "|---|---:|"]  # fmt: skip
        lines += [f"| {name} | {mib:.0f} |" for name, mib in bench.rss]
    lines += [
        "",
        "## In-process (Rust store called from Python)",
        "",
        "| call | median us | p99 us |",
        "|---|---:|---:|",
    ]
    for name, (median, p99_us) in bench.inprocess.items():
        lines.append(f"| {name} | {median:.2f} | {p99_us:.2f} |")
    lines += ["", *analysis(bench, large, small)]
    if bench.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in bench.notes]
    lines += ["", "## Commands", "", "```"] + [r.command for r in bench.results] + ["```", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="small registries, for a smoke run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each case, for the spread (default 3)")
    p.add_argument("--out", type=Path, default=None, help="write the report here (e.g. BENCHMARKS.md)")
    a = p.parse_args()
    started = time.monotonic()
    bench = run(a.seconds, a.quick, a.repeats)
    text = report(bench, a.seconds, time.monotonic() - started)
    print()
    print(text)
    if a.out:
        a.out.write_text(text)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
