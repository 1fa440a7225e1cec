"""`make cluster` (scripts/cluster.sh) run as a user would: it must start the 3 servers it
announces, each listing the cluster's 3 nodes, run the `oo` command it prints, stop on
Ctrl-C, and say so when a server dies. Uses the script's fixed loopback ports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from conftest import wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None, reason="etcd-server is not installed (make test installs it)"
)
ROOT = Path(__file__).resolve().parent.parent
READY = "Ctrl-C stops the cluster."


class Demo:
    def __init__(self, work: Path) -> None:
        self.out = work / "out.log"
        env = {**os.environ, "PY": sys.executable, "CLUSTER_DIR": str(work / "cluster")}
        with self.out.open("wb") as log:
            self.proc = subprocess.Popen(
                ["bash", "scripts/cluster.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: READY in self.text() or self.proc.poll() is not None, 120, "the demo cluster")
        assert READY in self.text(), self.text()

    def text(self) -> str:
        return self.out.read_text()

    def tree(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        children = self.tree()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for child in children:
            if child.is_running():
                child.kill()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    started = Demo(tmp_path)
    yield started
    started.stop()


def test_make_cluster_starts_the_three_servers_it_announces(demo: Demo) -> None:
    text = demo.text()
    urls = re.search(r"servers:\s+(.*)", text)
    assert urls is not None
    servers = urls.group(1).split()
    assert len(servers) == 3
    token = re.search(r"admin token: (\S+)", text)
    assert token is not None
    import http.client

    for url in servers:
        port = int(url.rsplit(":", 1)[1])

        def nodes(port: int = port) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/registry-svc/nodes", b"{}", {"Authorization": f"Bearer {token.group(1)}"})
            reply = conn.getresponse()
            body = reply.read()
            conn.close()
            assert reply.status == 200, body
            return len(orjson.loads(body)["nodes"])

        wait_for(lambda nodes=nodes: nodes() == 3, 20, f"{url} to list 3 nodes")
    # The command it suggests works as printed (from the repository, as after `make cluster`).
    hint = re.search(r"try:\s+(.*)", text)
    assert hint is not None
    line = hint.group(1).replace(".venv/bin/oo", str(Path(sys.executable).with_name("oo")))
    done = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len([row for row in done.stdout.splitlines() if "node_" in row]) == 3, done.stdout
    # Ctrl-C stops everything, with status 0.
    children = demo.tree()
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(timeout=30) == 0
    wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 20, "all gone")


def test_make_cluster_stops_and_says_so_when_a_server_dies(demo: Demo) -> None:
    servers = [p for p in demo.tree() if "registry_svc" in " ".join(p.cmdline()) and "serve" in p.cmdline()]
    second = next(p for p in servers if "11351" in p.cmdline())
    second.kill()
    assert demo.proc.wait(timeout=30) == 1
    assert "server 2" in demo.text() and "exited" in demo.text(), demo.text()
