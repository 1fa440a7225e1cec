"""Where the time goes on the data port: `perf` samples of the server process that holds it
while wrk drives one case (lookup, pick or proxy), grouped by shared object and symbol.

    python -m loadtest.profile_data_port [--case lookup|pick|proxy] [--seconds 8] [--dso NAME.so]

Needs `perf` (Debian: linux-perf) and the permission to use it (root, or
kernel.perf_event_paranoid <= 1), `wrk`, and for the proxy case `nginx`. One server process
(`--processes 1`) so that one process serves the whole data port. Loopback only.
`PERF_DATA=path` keeps the samples for further `perf report`s; `PERF_G="--call-graph
dwarf,16384"` unwinds the extension's frames (it has no frame pointers) for `--children`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from loadtest import bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=("lookup", "pick", "proxy"), default="lookup")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--dso", default=None, help="symbols of this shared object only (e.g. the extension's .so)")
    a = p.parse_args()
    missing = [t for t in ("perf", "wrk", "nginx") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"profile: {', '.join(missing)} not found")
    work = Path(tempfile.mkdtemp(prefix="registry-profile-"))
    work.chmod(0o755)
    run = bench.Bench(a.seconds, work)
    try:
        bench.seed_registry(work / "data", 1000, 100, 10)
        api, data, token = run.registry(work / "data", 1)
        server = psutil.Process(run.procs[-1].pid)
        holders = [
            proc
            for proc in server.children(recursive=True)
            if any(c.laddr.port == int(data.rsplit(":", 1)[1]) for c in proc.net_connections("tcp"))
        ]
        target = holders[0].pid
        if a.case == "proxy":
            static, _ = run.nginx({"prof-svc/payload": b'{"ok":true}' * 100})
            bench.register_backend(api, token, "prof-svc", static)
            url, script = f"{data}/prof-svc/payload", None
        else:
            path = (
                "/registry-svc/instances?slug=svc-%d"
                if a.case == "lookup"
                else "/registry-svc/instance/pick?slug=svc-%d"
            )
            url, script = data, bench.random_slug_script(path, 100)
        cmd = ["wrk", "-t2", "-c64", f"-d{a.seconds + 2:g}s", "-H", f"Authorization: Bearer {token}"]
        if script:
            (work / "case.lua").write_text(script)
            cmd += ["-s", str(work / "case.lua")]
        load = subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        perf_data = Path(os.environ.get("PERF_DATA", str(work / "perf.data")))
        subprocess.run(
            ["perf", "record", "-F", "999", *os.environ.get("PERF_G", "-g").split(), "-p", str(target), "-o", str(perf_data), "--", "sleep", f"{a.seconds:g}"],
            check=True, capture_output=True,
        )  # fmt: skip
        out, _ = load.communicate(timeout=60)
        print(out)
        report = subprocess.run(
            ["perf", "report", "-i", str(perf_data), "--no-children", "--sort", "dso,symbol", "--stdio",
             "--percent-limit", "0.5", "-g", "none"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        by_dso = subprocess.run(
            ["perf", "report", "-i", str(perf_data), "--no-children", "--sort", "dso", "--stdio", "-g", "none"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        if a.dso:
            report = subprocess.run(
                ["perf", "report", "-i", str(perf_data), "--no-children", "--dsos", a.dso, "--sort", "symbol",
                 "--stdio", "--percent-limit", "0.3", "-g", "none"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
        for text in (by_dso, report):
            lines = [line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
            print("\n".join(lines[: a.top]))
            print()
    finally:
        run.stop_all()


if __name__ == "__main__":
    main()
