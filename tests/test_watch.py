"""Blocking queries (`?index=N&wait=...`): answered when the result's own index passes N,
or after the wait with the same answer; a change to one slug does not wake another's
watchers; a write in one process wakes watchers in every process.

Timing is asserted only as "came back because of the write" (well before the wait ran
out) or "waited" (not before most of the wait), never as a speed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from conftest import NO_CHECK, Reply, Server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("watch")).start()
    yield server
    server.kill9()


def later(seconds: float, action: object) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def workers_holding_connections(server: Server) -> set[int]:
    """Worker processes with an open connection on their own port (the gate opens one per
    client connection it forwards)."""
    assert server.proc is not None
    holding = set()
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        if "registry_svc.server" not in " ".join(proc.cmdline()):
            continue
        sockets = proc.net_connections("tcp")
        listening = {c.laddr.port for c in sockets if c.status == psutil.CONN_LISTEN}
        if any(c.status == psutil.CONN_ESTABLISHED and c.laddr.port in listening for c in sockets):
            holding.add(proc.pid)
    return holding


def timed(server: Server, path: str) -> tuple[Reply, float]:
    start = time.monotonic()
    reply = server.call("GET", path, timeout=60)
    return reply, time.monotonic() - start


def test_a_watch_on_a_slug_returns_when_that_slug_changes(srv: Server) -> None:
    srv.register({"url": "http://w-a1:80", "slug": "watch-a", "healthCheck": NO_CHECK})
    first = srv.call("GET", "/registry-svc/instances?slug=watch-a")
    later(0.5, lambda: srv.register({"url": "http://w-a2:80", "slug": "watch-a", "healthCheck": NO_CHECK}))
    reply, took = timed(srv, f"/registry-svc/instances?slug=watch-a&index={first.index}&wait=30s")
    assert reply.status == 200 and took < 20
    assert {i["url"] for i in reply.json["instances"]} == {"http://w-a1", "http://w-a2"}
    assert reply.index > first.index


def test_a_change_to_another_slug_does_not_wake_a_watcher(srv: Server) -> None:
    srv.register({"url": "http://w-b1:80", "slug": "watch-b", "healthCheck": NO_CHECK})
    first = srv.call("GET", "/registry-svc/instances?slug=watch-b")
    later(0.3, lambda: srv.register({"url": "http://w-c1:80", "slug": "watch-c", "healthCheck": NO_CHECK}))
    reply, took = timed(srv, f"/registry-svc/instances?slug=watch-b&index={first.index}&wait=2s")
    assert took >= 1.8  # it waited out its 2 s (plus jitter), though another slug changed
    assert reply.body == first.body and reply.index == first.index


def test_an_index_already_passed_answers_at_once(srv: Server) -> None:
    reply, took = timed(srv, "/registry-svc/instances?index=0&wait=30s")
    assert reply.status == 200 and took < 20


def test_get_definitions_and_tokens_block_too(srv: Server) -> None:
    inst = srv.register({"url": "http://w-get:80", "slug": "watch-get", "healthCheck": NO_CHECK}).json["instance"]
    got = srv.call("GET", f"/registry-svc/instance/{inst['id']}")
    later(0.5, lambda: srv.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat", {"status": "Stopping"}))
    reply, took = timed(srv, f"/registry-svc/instance/{inst['id']}?index={got.index}&wait=30s")
    assert reply.json["instance"]["status"] == "Stopping" and took < 20
    # Deleting it wakes the watcher too (the answer is then a 404).
    again = srv.call("GET", f"/registry-svc/instance/{inst['id']}")
    later(0.5, lambda: srv.call("DELETE", f"/registry-svc/instance/{inst['id']}"))
    reply, took = timed(srv, f"/registry-svc/instance/{inst['id']}?index={again.index}&wait=30s")
    assert reply.status == 404 and took < 20
    defs = srv.call("GET", "/registry-svc/definitions")
    later(
        0.5,
        lambda: srv.call("PUT", "/registry-svc/definition", {"definition": {"id": "watched", "image": {"name": "x"}}}),
    )
    reply, took = timed(srv, f"/registry-svc/definitions?index={defs.index}&wait=30s")
    assert [d["id"] for d in reply.json["definitions"]] == ["watched"] and took < 20
    tokens = srv.call("GET", "/registry-svc/tokens")
    later(0.5, lambda: srv.token("proxy"))
    reply, took = timed(srv, f"/registry-svc/tokens?index={tokens.index}&wait=30s")
    assert len(reply.json["tokens"]) == len(tokens.json["tokens"]) + 1 and took < 20


@pytest.mark.parametrize(
    ("query", "field"),
    [("index=-1", "index"), ("index=abc", "index"), ("index=1&wait=soon", "wait"), ("wait=5s", "wait")],
)
def test_bad_blocking_parameters_are_a_400(srv: Server, query: str, field: str) -> None:
    reply = srv.call("GET", f"/registry-svc/instances?{query}")
    assert reply.status == 400 and reply.json["error"].startswith(f"{field}: "), reply.body


def test_a_write_in_one_process_wakes_watchers_in_every_process(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", processes=2).start()
    try:
        first = server.call("GET", "/registry-svc/instances?slug=multi")
        with ThreadPoolExecutor(12) as pool:
            # 12 separate connections: the kernel spreads them over both processes.
            watches = [
                pool.submit(timed, server, f"/registry-svc/instances?slug=multi&index={first.index}&wait=30s")
                for _ in range(12)
            ]
            time.sleep(1.0)
            assert len(workers_holding_connections(server)) == 2, "the watches did not reach both processes"
            server.register({"url": "http://multi-1:80", "slug": "multi", "healthCheck": NO_CHECK})
            results = [w.result(timeout=60) for w in watches]
        for reply, took in results:
            assert took < 20 and [i["url"] for i in reply.json["instances"]] == ["http://multi-1"]
    finally:
        server.kill9()
