"""The benchmark harnesses run in a tiny mode, so they cannot rot. No timing is asserted."""

from __future__ import annotations

from loadtest import inprocess


def test_inprocess_benchmark_runs_and_reports_every_call() -> None:
    results = inprocess.run(instances=300, slugs=30, calls=50, put_calls=5)
    assert set(results) == {
        "lookup slug, first touch (10 of 300)",
        "lookup slug, cached (10 of 300)",
        "pick (round robin)",
        "get by id",
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
