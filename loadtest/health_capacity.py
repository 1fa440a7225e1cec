"""How many instances one node's health checker keeps on a 10 s schedule on this machine.

    python -m loadtest.health_capacity [--counts 2000,5000,10000] [--interval 10]

For each count: seeds a temporary store with that many tcp-checked instances pointing at
a local TCP backend (a separate process), runs the real HealthChecker for 1.2 intervals,
and reports the probes completed in the steady window, the worst start delay past the due
time, and the CPU the checker used. "On time" = every instance probed once per interval
and no check started more than 1 s late.
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


def measure(count: int, interval: float, port: int) -> dict[str, float]:
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
            await asyncio.sleep(interval * 0.2)  # first round is spread over one interval
            start_probes, start_cpu = checker.probes_run, time.process_time()
            await asyncio.sleep(interval)
            probes, cpu = checker.probes_run - start_probes, time.process_time() - start_cpu
            stop.set()
            await task
            return probes, cpu

        probes, cpu = asyncio.run(run())
        store.close()
    return {"probes": probes, "max_late_s": checker.max_lateness, "cpu_s": cpu, "writes": checker.writes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="2000,5000,10000")
    p.add_argument("--interval", type=float, default=10.0)
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = _free_port()
    ready = multiprocessing.Event()
    backend = multiprocessing.Process(target=_backend, args=(port, ready), daemon=True)
    backend.start()
    ready.wait(10)
    try:
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
