"""`make loadtest`: a seeded registry-svc server, the locust scenarios against it
(headless, bounded in time, loopback only), CSV output and a summary.

    python -m loadtest.run_locust [--users 50] [--seconds 30] [--out loadtest/out]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtest.bench import Bench, seed_registry

HERE = Path(__file__).parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--slugs", type=int, default=100)
    p.add_argument("--out", type=Path, default=HERE / "out")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="registry-locust-"))
    bench = Bench(a.seconds, work)
    try:
        seed_registry(work / "data", a.slugs * 10, a.slugs, 10)
        base, _, token = bench.registry(work / "data", os.cpu_count() or 1)
        a.out.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
            "-u", str(a.users), "-r", str(a.users), "-t", f"{a.seconds}s", "--host", base,
            "--csv", str(a.out / "run"), "--only-summary", "--exit-code-on-error", "1",
        ]  # fmt: skip
        env = {**os.environ, "REGISTRY_TOKEN": token, "REGISTRY_SLUGS": str(a.slugs)}
        code = subprocess.run(cmd, env=env, timeout=a.seconds + 120, check=False).returncode
    finally:
        bench.stop_all()
    print(summary(a.out / "run_stats.csv"))
    print(f"CSV: {a.out}/run_stats.csv, run_stats_history.csv, run_failures.csv")
    return code


def summary(stats: Path) -> str:
    rows = list(csv.DictReader(stats.open()))
    lines = [f"{'request':24s} {'requests':>9s} {'fails':>6s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s}"]
    for r in rows:
        lines.append(
            f"{r['Name'][:24]:24s} {int(r['Request Count']):9d} {int(r['Failure Count']):6d} "
            f"{float(r['Requests/s']):8.1f} {r['50%']:>7s} {r['99%']:>7s}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
