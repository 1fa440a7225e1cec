"""The benchmark harnesses run in a tiny mode, so they cannot rot. No timing is asserted."""

from __future__ import annotations

from loadtest import inprocess


def test_inprocess_benchmark_runs_and_reports_every_call() -> None:
    results = inprocess.run(instances=300, slugs=30, calls=50, put_calls=5)
    assert set(results) == {"lookup slug (10 of 300)", "get by id", "durable put (new instance)"}
    for median, p99 in results.values():
        assert 0 < median <= p99
