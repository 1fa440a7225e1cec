"""The benchmark harnesses run in a tiny mode, so they cannot rot. No timing is asserted."""

from __future__ import annotations

import shutil
from pathlib import Path

from loadtest import inprocess


def test_inprocess_benchmark_runs_and_reports_every_call() -> None:
    results = inprocess.run(instances=300, slugs=30, calls=50, put_calls=5)
    assert set(results) == {
        "lookup slug, first touch (10 of 300)",
        "lookup slug, cached (10 of 300)",
        "pick (round robin)",
        "pick, one hot slug",
        "get by id",
        "validate a registration body (model)",
        "durable put (new instance)",
    }
    for median, p99 in results.values():
        assert 0 < median <= p99


def test_health_capacity_benchmark_runs() -> None:
    import multiprocessing

    from loadtest import health_capacity

    port = health_capacity._free_port()
    ready = multiprocessing.Event()
    backend = multiprocessing.Process(target=health_capacity._backend, args=(port, ready), daemon=True)
    backend.start()
    try:
        assert ready.wait(10)
        result = health_capacity.measure(count=50, interval=1.0, port=port)
    finally:
        backend.terminate()
    assert result["probes"] > 0


def test_http_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    """The whole `make bench` pipeline at 1 s per case: servers, baselines, wrk, report."""
    from loadtest import bench

    missing = [t for t in ("wrk", "nginx", "etcd") if shutil.which(t) is None]
    assert not missing, f"{missing} missing: run `make bench-tools` (CI does)"
    result = bench.run(seconds=1, quick=True)
    targets = {(r.case, r.target) for r in result.results}
    assert ("pick", "registry-svc") in targets and ("register (durable PUT)", "registry-svc") in targets
    assert ("pick", "registry-svc data port") in targets
    assert ("proxy GET 1 KiB", "registry-svc data port proxy") in targets
    assert any(t == "etcd 3.4 range, serializable" for _, t in targets)
    for r in result.results:
        assert r.rps > 0 and r.errors == 0, r
    report = bench.report(result, 1, 1.0)
    assert "lookup vs nginx static" in report and "## Commands" in report
    assert "Data port" in report and "## Memory" in report and result.rss


def test_locust_scenarios_run_without_failures(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "locust"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.run_locust", "--users", "6", "--seconds", "3", "--slugs", "20", "--out", str(out)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stats = (out / "run_stats.csv").read_text()
    assert "pick" in stats and "lookup by slug" in stats


def test_cluster_benchmark_runs_in_a_tiny_mode() -> None:
    """3 etcd members, 3 cluster servers and a single-machine one; every row is reported."""
    from loadtest import cluster_bench

    missing = [t for t in ("wrk", "etcd") if shutil.which(t) is None]
    assert not missing, f"{missing} missing: run `make bench-tools` (CI does)"
    text = "\n".join(cluster_bench.run(seconds=1, repeats=1, samples=3))
    for row in ("registrations/s through 3 servers", "raw etcd txn puts/s", "lookups/s on a replica",
                "lookups/s single-machine", "registration visible on another server, p99",
                "single machine: durable registrations/s", "one etcd member's txn puts/s",
                "| etcd m1 |", "| server 1 workers |", "per raw txn"):  # fmt: skip
        assert row in text


def test_scan_benchmark_runs_in_a_tiny_mode() -> None:
    """One etcd member, a replica in process, scans back to back; both rows are reported."""
    from loadtest import scan_bench

    assert shutil.which("etcd") is not None, "etcd missing: run `make bench-tools` (CI does)"
    text = "\n".join(scan_bench.run(keys=3000, samples=20))
    assert "| no scan running |" in text and "| anti-entropy scanning |" in text
    assert "Propagation during a scan" in text


def test_watch_benchmark_runs_in_a_tiny_mode() -> None:
    from loadtest import watch_bench

    text = "\n".join(watch_bench.run(idle=20, samples=3, seconds=0.5, picks=1000))
    for row in ("change-to-watcher latency p99", "server CPU, 20 idle watchers", "`Resolver.pick()` in process"):
        assert row in text


def test_dns_benchmark_runs_in_a_tiny_mode() -> None:
    """Our DNS port and NSD with the same records, under dnsperf; every row is reported."""
    from loadtest import dns_bench

    missing = [t for t in ("dnsperf", "nsd", "dig") if shutil.which(t) is None]
    assert not missing, f"{missing} missing: run `make bench-tools` (CI does)"
    text = "\n".join(dns_bench.run(seconds=0.5, repeats=1, rate=2000, slugs=3))
    assert "| registry-svc DNS |" in text and "| NSD 4.6, static zone |" in text
    assert "Queries/s vs NSD" in text and "p99 vs NSD" in text


def test_inference_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    """The inference section end to end at 1 s per policy: the fake fleet, the registry's
    proxy under each policy, the report (no timing asserted)."""
    from loadtest import inference_bench

    registry = inference_bench.Registry(tmp_path)
    try:
        outcomes = inference_bench.run_policies(tmp_path, registry, seconds=1.0, share=0.3, seed=1)
        picker = inference_bench.picker_cost(tmp_path, samples=200)
        large, rate = inference_bench.large_prompt_cost(tmp_path, registry, samples=3, wrk_seconds=1)
        scrape = inference_bench.scrape_cost(registry, instances=20, seconds=1)
    finally:
        registry.stop()
    assert [o.policy for o in outcomes] == [*inference_bench.POLICIES, inference_bench.ENVOY_ROW]
    for o in outcomes:
        assert o.completed > 0 and o.errors == 0, o
    assert scrape is not None and scrape["scrapes_per_s"] > 0, scrape
    report = "\n".join(inference_bench.report(outcomes, picker, rate, large, 1.0, scrape))
    assert "| prefix |" in report and "p90 TTFT" in report and "per 1,000 instances" in report
