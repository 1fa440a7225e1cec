"""How many instances one node's health checker keeps on a 10 s schedule on this machine.

    python -m loadtest.health_capacity [--counts 2000,5000,10000] [--interval 10]
    python -m loadtest.health_capacity --per-core 100000 [--interval 60] [--window 10] [--append FILE]

For each count: seeds a temporary store with that many tcp-checked instances pointing at
a local TCP backend (a separate process), runs the real HealthChecker for 1.2 intervals,
and reports the probes completed in the steady window, the worst start delay past the due
time, and the CPU the checker used. "On time" = every instance probed once per interval
and no check started more than 1 s late.

`--per-core N`: N instances registered, each checked every `--interval` seconds (the first
round spread over it, so the load is steady at once); over `--window` seconds, the checks
per second and the checks per CPU-second of the checker's process (`make bench` reports
it: what a core of checker does with a large registry, the cost of finding what is due
included). With `--append FILE` (as `make bench` runs it), at 60 s and at 600 s, added to
FILE as a section.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import socket
import tempfile
import time

import orjson

from registry_svc import _core
from registry_svc.health import HealthChecker


def _backend(port: int, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    async def main() -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", port, backlog=4096)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(count: int, interval: float, port: int, window: float | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = _core.Store(tmp)
        check = {"type": "tcp", "path": "/health", "intervalSeconds": int(interval), "timeoutSeconds": 2,
                 "healthyThreshold": 2, "unhealthyThreshold": 3, "deregisterAfterSeconds": 0}  # fmt: skip
        items = []
        for i in range(count):
            record = {"id": f"i{i}", "url": f"http://127.0.0.1:{port}/{i}", "host": "127.0.0.1", "port": port,
                      "status": "Healthy", "lastHeartbeat": "2999-01-01T00:00:00.000Z", "healthCheck": check}  # fmt: skip
            items.append((record["id"], orjson.dumps(record)))
        store.put_many("instances", items)
        checker = HealthChecker(store, lambda _instance: True)

        async def run() -> tuple[int, float]:
            stop = asyncio.Event()
            task = asyncio.create_task(checker.run(stop))
            await asyncio.sleep(min(interval * 0.2, 2.0))  # first round is spread over one interval
            start_probes, start_cpu = checker.probes_run, time.process_time()
            checker.max_lateness = 0.0  # the window's, not the start's (the first reload)
            await asyncio.sleep(window or interval)
            probes, cpu = checker.probes_run - start_probes, time.process_time() - start_cpu
            stop.set()
            await task
            return probes, cpu

        probes, cpu = asyncio.run(run())
        store.close()
    return {"probes": probes, "max_late_s": checker.max_lateness, "cpu_s": cpu, "writes": checker.writes}


def per_core(registered: int, interval: float, window: float, port: int) -> str:
    """One line: checks/s and checks per CPU-second with `registered` instances."""
    r = measure(registered, interval, port, window)
    per_s, cpu = r["probes"] / window, r["cpu_s"] / window
    per_cpu_s = r["probes"] / r["cpu_s"] if r["cpu_s"] > 0 else float("nan")
    return (
        f"{registered:,} instances every {interval:g} s: {per_s:,.0f} checks/s (due: {registered / interval:,.0f}/s), "
        f"checker CPU {cpu:.0%}, {per_cpu_s:,.0f} checks per CPU-second, worst start delay {r['max_late_s']:.2f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="2000,5000,10000")
    p.add_argument(
        "--interval", type=float, default=None, help="seconds between checks (default 10; 60 with --per-core)"
    )
    p.add_argument("--per-core", type=int, default=0, help="instances registered, for the checks per CPU-second")
    p.add_argument("--window", type=float, default=10.0, help="seconds measured with --per-core")
    p.add_argument("--append", default=None, help="with --per-core: add a section to this file (60 s and 600 s)")
    a = p.parse_args()
    a.interval = a.interval or (60.0 if a.per_core else 10.0)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = _free_port()
    ready = multiprocessing.Event()
    backend = multiprocessing.Process(target=_backend, args=(port, ready), daemon=True)
    backend.start()
    ready.wait(10)
    try:
        if a.per_core and a.append:
            lines = [per_core(a.per_core, interval, a.window, port) for interval in (60.0, 600.0)]
            with open(a.append, "a") as out:
                out.write("\n## Health checker\n\n`python -m loadtest.health_capacity --per-core")
                out.write(
                    f" {a.per_core}` (tcp checks against a local backend, one process, {a.window:g} s window):\n\n"
                )
                out.write("".join(f"- {line}\n" for line in lines))
            print("\n".join(lines))
            return
        if a.per_core:
            print(per_core(a.per_core, a.interval, a.window, port))
            return
        print(f"{'instances':>10} {'probes/interval':>16} {'max start delay':>16} {'checker CPU':>12}  on time")
        for count in (int(c) for c in a.counts.split(",")):
            r = measure(count, a.interval, port)
            on_time = r["probes"] >= 0.95 * count and r["max_late_s"] < 1.0
            print(
                f"{count:>10} {int(r['probes']):>16} {r['max_late_s']:>15.2f}s {r['cpu_s'] / a.interval:>11.0%}  "
                f"{'yes' if on_time else 'NO'}"
            )
    finally:
        backend.terminate()


if __name__ == "__main__":
    main()
