"""In-process timings of the Rust store called from Python (slug lookup, pick, get, durable
put), and of checking a registration body against its model.

    python -m loadtest.inprocess [--instances 100000] [--slugs 10000] [--calls 20000]

Seeds a temporary store (bulk import, one transaction), then times single calls with
perf_counter_ns and prints medians and p99s in microseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import orjson

from registry_svc import _core, models


def instance(i: int, slugs: int) -> tuple[str, bytes]:
    inst_id = f"inst_{i:08x}"
    record = {
        "id": inst_id, "url": f"http://host-{i}:8080", "slug": f"svc-{i % slugs}", "scheme": "http",
        "host": f"host-{i}", "ip": None, "port": 8080, "path": None, "deploymentId": None,
        "nodeUrl": f"http://node-{i % 1000}:11337", "tags": ["prod"], "metadata": {}, "weight": 100,
        "zone": None, "status": "Healthy", "statusReason": None, "lastHeartbeat": "2026-11-27T20:00:00.000Z",
        "registeredAt": "2026-11-27T20:00:00.000Z", "healthCheck": {"type": "none"},  # made-up hosts: never probed
    }  # fmt: skip
    return inst_id, orjson.dumps(record)


def seed(store: _core.Store, instances: int, slugs: int, batch: int = 20000) -> None:
    for start in range(0, instances, batch):
        store.put_many("instances", [instance(i, slugs) for i in range(start, min(start + batch, instances))])


def timed(calls: int, fn: Callable[[int], object]) -> tuple[float, float]:
    """Median and p99 of `fn(i)` in microseconds."""
    samples = []
    for i in range(calls):
        t0 = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def run(instances: int, slugs: int, calls: int, put_calls: int) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = _core.Store(tmp)
        t0 = time.perf_counter()
        seed(store, instances, slugs)
        seeded_s = time.perf_counter() - t0
        rng = random.Random(7)
        slug_of = [f"svc-{rng.randrange(slugs)}" for _ in range(calls)]
        first_touch = [f"svc-{i}" for i in rng.sample(range(slugs), min(slugs, calls))]
        per_slug = len(orjson.loads(store.list_json("instances", [("slug", "svc-1")], "instances")[1])["instances"])
        results = {
            # Every slug's first lookup builds its response from LMDB (a cache miss)...
            f"lookup slug, first touch ({per_slug} of {instances})": timed(
                len(first_touch), lambda i: store.list_json("instances", [("slug", first_touch[i])], "instances")
            ),
        }
        for slug in range(slugs):  # ...warm the rest, then measure the steady state.
            store.list_json("instances", [("slug", f"svc-{slug}")], "instances")
            store.pick_json(f"svc-{slug}")
        results[f"lookup slug, cached ({per_slug} of {instances})"] = timed(
            calls, lambda i: store.list_json("instances", [("slug", slug_of[i])], "instances")
        )
        results["pick (round robin)"] = timed(calls, lambda i: store.pick_json(slug_of[i]))
        results["pick, one hot slug"] = timed(calls, lambda i: store.pick_json("svc-1"))
        results["get by id"] = timed(calls, lambda i: store.get("instances", f"inst_{(i * 7919) % instances:08x}"))
        bodies = [
            orjson.dumps({"url": f"http://reg-{i}:80", "slug": f"reg-{i % 100}", "tags": ["a", "b"],
                          "metadata": {"k": "v"}, "healthCheck": {"type": "none"}})
            for i in range(calls)
        ]  # fmt: skip
        results["validate a registration body (model)"] = timed(
            calls, lambda i: models.parse(models.InstanceRegistration, orjson.loads(bodies[i]))
        )
        results["durable put (new instance)"] = timed(
            put_calls, lambda i: store.put("instances", *instance(instances + i, slugs))
        )
        store.close()
    print(f"seeded {instances} instances over {slugs} slugs in {seeded_s:.2f} s")
    for name, (median, p99) in results.items():
        print(f"{name:40s} median {median:9.2f} us   p99 {p99:9.2f} us")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=100_000)
    p.add_argument("--slugs", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--put-calls", type=int, default=500)
    a = p.parse_args()
    run(a.instances, a.slugs, a.calls, a.put_calls)


if __name__ == "__main__":
    main()
