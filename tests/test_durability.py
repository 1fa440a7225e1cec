"""Persistence, process lifecycle, multi-process writers and crash safety.

After a crash the data dir is read with the `lmdb` package (py-lmdb, LMDB 0.9.x) as an
independent reader: not our Rust code, not our server. The two LMDB builds must never have
the environment open at once (different lock formats), so it is read only once the
server's processes are dead, and without taking the lock file.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lmdb
import orjson

from conftest import Server, free_port
from registry_svc import _core

INSTANCE_TAG = b"\x01"  # collection tag of instances in the records table


def read_instances_independently(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Every instance in the data dir, read with py-lmdb; values are 8-byte version + JSON."""
    env = lmdb.open(str(data_dir / "store"), readonly=True, lock=False, max_dbs=4, subdir=True)
    try:
        records = env.open_db(b"records", create=False)
        with env.begin(db=records) as txn:
            return {
                key[1:].decode(): orjson.loads(value[8:]) for key, value in txn.cursor() if key.startswith(INSTANCE_TAG)
            }
    finally:
        env.close()


def test_data_survives_a_restart(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", env={"OB_NODE_ID": "keep-node"}).start()
    token = srv.admin_token
    inst = srv.register({"url": "http://persist:1", "slug": "persist"}).json["instance"]
    srv.call("PUT", "/registry-svc/definition", {"definition": {"id": "persist", "image": {"name": "x"}}})
    index = srv.call("GET", "/registry-svc/instances").index
    assert srv.stop() == 0

    again = Server(srv.data_dir, env={"OB_NODE_ID": "keep-node"}).start()
    try:
        assert again.admin_token == token, "the admin token must not change across restarts"
        stored = again.call("GET", f"/registry-svc/instance/{inst['id']}").json["instance"]
        # Health checks may have changed status since; what was registered must be intact.
        for key in ("id", "url", "slug", "registeredAt", "healthCheck", "tags", "nodeUrl"):
            assert stored[key] == inst[key], key
        assert again.call("GET", "/registry-svc/definition/persist").status == 200
        assert again.call("GET", "/registry-svc/node/self").json["node"]["id"] == "keep-node"
        # The same instances, the same index; and the index went on from where it was (the
        # node's re-registration after the restart is newer than everything before).
        assert again.call("GET", "/registry-svc/instances").index == index
        assert again.call("GET", "/registry-svc/node/self").index > index
    finally:
        again.kill9()


def port_is_free(port: int) -> bool:
    """No listener on the port (TIME_WAIT leftovers do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigterm_and_sigint_stop_a_single_process_server(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        srv = Server(tmp_path / f"data-{sig}").start()
        assert srv.proc is not None
        srv.proc.send_signal(sig)
        assert srv.proc.wait(timeout=15) == 0
        deadline = time.monotonic() + 5
        while not port_is_free(srv.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_is_free(srv.port), "the port must be released after a stop"
        srv.kill9()


def test_refuses_to_start_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        srv = Server(tmp_path / "data", port=port)
        try:
            srv.start(timeout=20)
        except RuntimeError as e:
            assert "already in use" in str(e)
        else:
            raise AssertionError("a second server must not start on a taken port")


def test_two_processes_take_1000_concurrent_registrations_without_loss(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", processes=2).start()
    try:

        def register(i: int) -> int:
            return srv.register({"url": f"http://mp-{i}:80", "slug": f"mp{i % 2}"}).status

        with ThreadPoolExecutor(max_workers=32) as pool:
            statuses = list(pool.map(register, range(1000)))
        assert statuses.count(201) == 1000, {s: statuses.count(s) for s in set(statuses)}
        listed = srv.call("GET", "/registry-svc/instances").json["instances"]
        assert len({i["url"] for i in listed if i["url"].startswith("http://mp-")}) == 1000
        # Re-registering all of them concurrently updates in place: still 1000, no duplicates.
        with ThreadPoolExecutor(max_workers=32) as pool:
            again = list(pool.map(register, range(1000)))
        assert again.count(200) == 1000
        assert len(srv.call("GET", "/registry-svc/instances?slug=mp0").json["instances"]) == 500
    finally:
        srv.kill9()


def _store_writer(path: str, worker: int, count: int) -> None:
    store = _core.Store(path)
    for i in range(count):
        record = {"id": f"w{worker}-{i}", "url": f"http://w{worker}-{i}:1", "slug": "shared"}
        store.put("instances", record["id"], orjson.dumps(record), 0)
    store.close()


def test_two_os_processes_write_one_store_without_lost_updates(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_store_writer, args=(path, w, 500)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    store = _core.Store(path)
    assert len(store.ids_by("instances", "slug", "shared")) == 1000
    assert store.index() == 1000
    store.close()


def test_kill_9_loses_no_acknowledged_registration(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", processes=2).start()
    acked: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def stream(worker: int) -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            try:
                reply = srv.register({"url": f"http://crash-{worker}-{i}:80", "slug": "crash"}, token=token)
            except OSError:
                return  # the server is gone
            if reply.status in (200, 201):
                with lock:
                    acked[reply.json["instance"]["id"]] = reply.json["instance"]
            i += 1

    token = srv.admin_token
    threads = [threading.Thread(target=stream, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.kill9()  # mid-stream: requests are in flight
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 300

    on_disk = read_instances_independently(srv.data_dir)
    missing = [i for i in acked if i not in on_disk]
    assert not missing, f"{len(missing)} acknowledged registrations lost, e.g. {missing[:3]}"
    for inst_id, inst in acked.items():
        assert on_disk[inst_id]["url"] == inst["url"]

    again = Server(srv.data_dir).start()
    try:
        listed = {i["id"] for i in again.call("GET", "/registry-svc/instances?slug=crash").json["instances"]}
        assert set(acked) <= listed
    finally:
        again.kill9()


def test_free_port_helper_gives_distinct_ports() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) > 1 and all(1024 <= p <= 65535 for p in ports)


def test_servers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    import psutil

    srv = Server(tmp_path / "data", processes=2).start()
    assert srv.proc is not None
    children = psutil.Process(srv.proc.pid).children(recursive=True)
    assert len(children) == 3  # the Robyn parent and its two workers
    srv.proc.kill()  # SIGKILL the supervisor alone
    srv.proc.wait(timeout=10)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphaned server processes: {alive}"
    deadline = time.monotonic() + 5
    while not port_is_free(srv.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_is_free(srv.port)
