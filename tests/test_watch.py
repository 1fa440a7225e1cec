"""Blocking queries (`?index=N&wait=...`): answered when the result's own index passes N,
or after the wait with the same answer; a change to one slug does not wake another's
watchers; a write in one process wakes watchers in every process.

Timing is asserted only as "came back because of the write" (well before the wait ran
out) or "waited" (not before most of the wait), never as a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_cli import OO

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
        path = f"/registry-svc/instances?slug=multi&index={first.index}&wait=30s"
        with ThreadPoolExecutor(64) as pool:
            # Separate connections, which the kernel spreads over the processes; add watchers
            # until both processes hold some (on a loaded machine one may win many accepts).
            watches = []
            while len(watches) < 60 and (len(watches) < 6 or len(server.workers_holding_connections()) < 2):
                watches.append(pool.submit(timed, server, path))
                time.sleep(0.1)
            time.sleep(0.5)
            assert len(server.workers_holding_connections()) == 2, "the watches did not reach both processes"
            server.register({"url": "http://multi-1:80", "slug": "multi", "healthCheck": NO_CHECK})
            results = [w.result(timeout=60) for w in watches]
        for reply, took in results:
            assert took < 20 and [i["url"] for i in reply.json["instances"]] == ["http://multi-1"]
    finally:
        server.kill9()


def watch_process(server: Server, *args: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(server.data_dir.parent), "OB_SERVER_URL": server.url,
           "OB_TOKEN": server.admin_token}  # fmt: skip
    return subprocess.Popen([OO, "instances", "watch", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_oo_watch_prints_each_change_as_json_lines(srv: Server) -> None:
    srv.register({"url": "http://ow-0:80", "slug": "oo-watch", "healthCheck": NO_CHECK})
    proc = watch_process(srv, "--slug", "oo-watch", "-o", "json", "--max-events", "3", "--wait", "20s")
    try:
        assert proc.stdout is not None
        present = json.loads(proc.stdout.readline())
        assert (present["event"], present["instance"]["url"]) == ("present", "http://ow-0")
        added = srv.register({"url": "http://ow-1:80", "slug": "oo-watch", "healthCheck": NO_CHECK}).json["instance"]
        assert json.loads(proc.stdout.readline())["event"] == "added"
        srv.call("PUT", f"/registry-svc/instance/{added['id']}/heartbeat", {"status": "Stopping"})
        changed = json.loads(proc.stdout.readline())
        assert (changed["event"], changed["instance"]["status"]) == ("changed", "Stopping")
        srv.call("DELETE", f"/registry-svc/instance/{added['id']}")
        removed = json.loads(proc.stdout.readline())
        assert (removed["event"], removed["instance"]["id"]) == ("removed", added["id"])
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_oo_watch_resumes_after_the_server_restarts(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    server.register({"url": "http://res-0:80", "slug": "resumed", "healthCheck": NO_CHECK})
    proc = watch_process(server, "--slug", "resumed", "--max-events", "2", "--wait", "20s")
    try:
        assert proc.stdout is not None
        assert "PRESENT" in proc.stdout.readline()  # the watch has its first answer
        server.register({"url": "http://res-1:80", "slug": "resumed", "healthCheck": NO_CHECK})
        assert "ADDED" in proc.stdout.readline()
        server.kill9()
        time.sleep(1.0)  # the watch finds no server and retries
        server = Server(server.data_dir, port=server.port).start()
        server.register({"url": "http://res-2:80", "slug": "resumed", "healthCheck": NO_CHECK})
        line = proc.stdout.readline()
        assert "ADDED" in line and "http://res-2" in line
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and "retrying" in proc.stderr.read()
    finally:
        proc.kill()
        server.kill9()


def test_the_hub_wakes_on_the_stores_notifier_for_a_write_by_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller sleeps on `_core.ChangeSignal`, not on a timer: with its fallback look set
    to an hour, a write by another process still ends the wait (a futex in the store's
    shared page, an eventfd on the loop)."""
    import asyncio

    from registry_svc import _core, watch

    monkeypatch.setattr(watch, "FALLBACK_S", 3600.0)
    store = _core.Store(str(tmp_path / "store"))
    hub = watch.WatchHub(store)
    writer = (
        "import sys, orjson\n"
        "from registry_svc import _core\n"
        "s = _core.Store(sys.argv[1])\n"
        "s.put('instances', 'i1', orjson.dumps({'id': 'i1', 'url': 'http://127.0.0.1:9', 'slug': 'w'}), 0)\n"
        "s.close()\n"
    )

    async def main() -> float:
        start = index = store.collection_index("instances")
        waiting = asyncio.ensure_future(hub.wait_past(watch.collection_stamp(store, "instances"), index, 60.0))
        while hub.waiting == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the poller has looked once and sleeps on the signal
        began = time.monotonic()
        done = await asyncio.create_subprocess_exec(sys.executable, "-c", writer, str(tmp_path / "store"))
        assert await done.wait() == 0
        await asyncio.wait_for(waiting, 30)
        assert store.collection_index("instances") > start
        return time.monotonic() - began

    took = asyncio.run(main())
    assert took < 30  # came back because of the write, not at its 60 s wait or the fallback
    store.close()
