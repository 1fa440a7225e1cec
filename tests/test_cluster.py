"""Cluster mode through real processes: 3 etcd members and 3 registry servers on loopback,
each server talking to etcd through fault-injecting proxies of its own (one per member).

After every test, each replica's records must equal etcd's byte for byte, read by the
suite itself: etcd through its gateway, the replicas straight from their LMDB files.
"""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import orjson
import pytest

from conftest import NO_CHECK, Backend, Server, free_dns_port, free_port, wait_for
from etcd_cluster import EtcdCluster, FaultProxy, replica_records
from registry_svc import _core
from registry_svc.etcd import Client
from registry_svc.etcd_keys import Layout
from registry_svc.replica import Replicator

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None, reason="etcd-server is not installed (make test installs it)"
)

HEARTBEAT_S = 1.0
C_DNS_PORT = free_dns_port()


@dataclass
class Node:
    """A registry server and its proxies to the etcd members."""

    server: Server
    proxies: list[FaultProxy]

    def cut(self, mode: str = "blackhole") -> None:
        for proxy in self.proxies:
            proxy.set(mode)

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.set("pass")

    def health(self) -> dict[str, Any]:
        reply = self.server.call("GET", "/health", token=None, timeout=5)
        assert reply.status == 200
        return dict(reply.json)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.etcd = EtcdCluster(root / "etcd").start()
        self.nodes: list[Node] = []

    def add(self, name: str, admin_from: Server | None = None, args: tuple[str, ...] = ()) -> Node:
        proxies = [FaultProxy(endpoint) for endpoint in self.etcd.endpoints]
        data_dir = self.root / name
        if admin_from is not None:
            # How an operator brings a second machine in: the first server's admin token.
            data_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(admin_from.data_dir / "admin.token", data_dir / "admin.token")
        etcd = ",".join(f"http://{p.endpoint}" for p in proxies)
        server = Server(data_dir, args=["--etcd", etcd, "--heartbeat-seconds", str(HEARTBEAT_S), *args]).start()
        node = Node(server, proxies)
        self.nodes.append(node)
        return node

    def restart(self, node: Node) -> None:
        """Starts a killed server again on its port and data dir: the same node."""
        node.server.kill9()
        node.server.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.server.kill9()
            for proxy in node.proxies:
                proxy.close()
        self.etcd.stop()

    def converged(self, timeout: float = 15.0) -> None:
        """Waits until every replica holds exactly etcd's records (same versions, same
        bytes), then checks it once more; fails naming the first difference."""
        deadline = time.monotonic() + timeout
        while True:
            _, want = self.etcd.records()
            diffs = []
            for node in self.nodes:
                _, have = replica_records(node.server.data_dir)
                if have != want:
                    missing = sorted(set(want) - set(have))[:3]
                    extra = sorted(set(have) - set(want))[:3]
                    changed = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:3]
                    diffs.append(f"{node.server.url}: missing {missing}, extra {extra}, differing {changed}")
            if not diffs:
                return
            if time.monotonic() > deadline:
                raise AssertionError("replicas differ from etcd:\n" + "\n".join(diffs))
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        first = c.add("a")
        c.add("b", admin_from=first.server)
        # C answers DNS too (from its replica), with answers cached for 30 s while fresh.
        c.add("c", admin_from=first.server, args=("--dns-port", str(C_DNS_PORT), "--dns-ttl", "30"))
        yield c
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def replicas_equal_etcd_afterwards(cluster: Cluster) -> Iterator[None]:
    yield
    for node in cluster.nodes:
        node.heal()
    cluster.converged()


def instance_body(port: int, slug: str, **extra: Any) -> dict[str, Any]:
    return {"url": f"http://127.0.0.1:{port}", "slug": slug, "healthCheck": NO_CHECK, **extra}


def in_base64(marker: bytes) -> list[bytes]:
    """What `marker` looks like inside any base64 text, at each of the three alignments (the
    characters its bytes alone decide)."""
    out = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + marker + b"\0\0\0")
        start, end = -(-8 * shift // 6), 8 * (shift + len(marker)) // 6
        out.append(encoded[start:end])
    return out


def test_a_write_whose_answer_is_lost_is_read_back_never_sent_again(cluster: Cluster) -> None:
    """Issue 22, no blind retries: etcd applies the registration's txn and the connection
    drops before its answer. The server reads the record back instead of sending the txn
    again (which would find its own record and answer 409): 201, one record."""
    a = cluster.nodes[0]
    port = free_port()
    body = instance_body(port, "lost-answer-svc")
    for proxy in a.proxies:
        proxy.lose_answer_to(in_base64(body["url"].encode()))
    try:
        reply = a.server.register(body)
    finally:
        lost = sum(proxy.lost for proxy in a.proxies)
        a.heal()
    assert lost == 1, "the txn's answer was not the one dropped"
    assert reply.status == 201, reply.body
    listed = a.server.call("GET", f"/registry-svc/instances?slug=lost-answer-svc&index={reply.index}&wait=0s")
    assert [i["id"] for i in listed.json["instances"]] == [reply.json["instance"]["id"]]
    # Once more, as a client that did not hear would: the same URL is this record (200).
    again = a.server.register(body)
    assert again.status == 200 and again.json["instance"]["id"] == reply.json["instance"]["id"], again.body


def test_a_registration_on_one_server_is_visible_on_the_others(cluster: Cluster) -> None:
    a, b, c = (n.server for n in cluster.nodes)
    reply = a.register(instance_body(free_port(), "visible-svc"))
    assert reply.status == 201, reply.body
    revision = reply.index
    instance = reply.json["instance"]
    # Read-your-writes on the server that wrote it.
    mine = a.call("GET", "/registry-svc/instances?slug=visible-svc")
    assert [i["id"] for i in mine.json["instances"]] == [instance["id"]]
    # On the others: ?index=<the write's revision> waits until their replica has it.
    for other in (b, c):
        seen = other.call("GET", f"/registry-svc/instances?slug=visible-svc&index={revision}&wait=0s")
        assert seen.status == 200, seen.body
        assert seen.json["instances"] == [instance]
        assert seen.index >= revision
    # Every server lists the three nodes of the cluster.
    for server in (a, b, c):
        nodes = server.call("POST", "/registry-svc/nodes").json["nodes"]
        assert sorted(n["url"] for n in nodes) == sorted(s.url for s in (a, b, c))
        assert {n["status"] for n in nodes} == {"Healthy"}
    health = cluster.nodes[1].health()
    assert health["mode"] == "cluster"
    assert health["etcd"]["connected"] is True
    assert health["appliedRevision"] >= revision
    assert health["staleSeconds"] is None


def test_a_write_on_one_server_wakes_a_blocking_query_on_another(cluster: Cluster) -> None:
    a, b = cluster.nodes[0].server, cluster.nodes[1].server
    before = b.call("GET", "/registry-svc/instances?slug=woken-svc")
    answers: list[tuple[float, Any]] = []

    def watch() -> None:
        reply = b.call("GET", f"/registry-svc/instances?slug=woken-svc&index={before.index}&wait=20s")
        answers.append((time.monotonic(), reply))

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.3)
    assert not answers  # parked: nothing changed yet
    sent = time.monotonic()
    written = a.register(instance_body(free_port(), "woken-svc"))
    assert written.status == 201
    watcher.join(20)
    woke, reply = answers[0]
    assert reply.status == 200
    assert [i["id"] for i in reply.json["instances"]] == [written.json["instance"]["id"]]
    assert woke - sent < 10  # woken by the replica's apply, long before its 20 s wait


def test_an_index_this_replica_cannot_reach_is_a_504_naming_its_revision(cluster: Cluster) -> None:
    b = cluster.nodes[1].server
    far = cluster.etcd.records()[0] + 1_000_000
    started = time.monotonic()
    reply = b.call("GET", f"/registry-svc/instances?index={far}&wait=0s")
    assert reply.status == 504
    assert "replica is at revision" in reply.json["error"]
    assert time.monotonic() - started >= 4.5  # it did wait for the replica (bounded)


def test_two_servers_racing_to_register_one_url_end_with_one_record(cluster: Cluster) -> None:
    a, b = cluster.nodes[0].server, cluster.nodes[1].server
    port = free_port()
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def register(server: Server, i: int) -> None:
        reply = server.register(instance_body(port, "race-svc", metadata={"writer": str(i)}))
        with lock:
            results.append((reply.status, reply.json["instance"]["id"] if reply.status < 300 else None))

    threads = [threading.Thread(target=register, args=((a, b)[i % 2], i)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50
    assert {status for status, _ in results} <= {200, 201, 409}, results
    ids = {i for status, i in results if i is not None}
    assert len(ids) == 1, ids
    assert sum(status == 201 for status, _ in results) == 1
    _, records = cluster.etcd.records()
    holders = [k for k, (_, value) in records.items() if k[0] == "instances" and f"127.0.0.1:{port}".encode() in value]
    assert holders == [("instances", ids.pop())]


def test_tokens_are_cluster_wide_and_a_revocation_reaches_every_server(cluster: Cluster) -> None:
    a, b, c = (n.server for n in cluster.nodes)
    created = a.call("POST", "/registry-svc/tokens", {"role": "proxy", "description": "cluster"})
    assert created.status == 201
    secret, token_id = created.json["token"], created.json["info"]["id"]
    for server in (b, c):
        seen = server.call("GET", f"/registry-svc/instances?index={created.index}&wait=0s", token=secret)
        assert seen.status == 200, seen.body
    assert b.call("DELETE", f"/registry-svc/token/{token_id}").status == 204
    for server in (a, c):
        wait_for(
            lambda s=server: s.call("GET", "/registry-svc/instances", token=secret).status == 401, 5, "the revocation"
        )


def test_a_killed_server_is_marked_unhealthy_and_its_instances_get_new_checkers(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    backend = Backend()
    try:
        check = {
            "type": "http",
            "path": "/health",
            "intervalSeconds": 1,
            "healthyThreshold": 1,
            "unhealthyThreshold": 1,
        }
        probed = c.server.register(
            {"url": f"http://127.0.0.1:{backend.port}", "slug": "adopted-svc", "healthCheck": check}
        )
        assert probed.status == 201, probed.body
        instance_id = probed.json["instance"]["id"]
        assert probed.json["instance"]["nodeUrl"] == c.server.url

        def status() -> str:
            return str(a.server.call("GET", f"/registry-svc/instance/{instance_id}").json["instance"]["status"])

        wait_for(lambda: status() == "Healthy", 10, "C to probe its instance Healthy")
        # Every status the instance shows from the kill on: the cascade's Unhealthy may be
        # probed back to Healthy by a survivor before both survivors list C as Unhealthy.
        history: list[tuple[str, str | None]] = []
        watching = threading.Event()

        def watch_instance() -> None:
            while not watching.is_set():
                record = a.server.call("GET", f"/registry-svc/instance/{instance_id}").json["instance"]
                history.append((record["status"], record.get("statusReason")))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch_instance, daemon=True)
        watcher.start()
        c.server.kill9()
        killed = time.monotonic()

        def c_node(server: Server) -> dict[str, Any]:
            nodes = server.call("POST", "/registry-svc/nodes").json["nodes"]
            return next(n for n in nodes if n["url"] == c.server.url)

        for survivor in (a.server, b.server):
            wait_for(lambda s=survivor: c_node(s)["status"] == "Unhealthy", 3 * HEARTBEAT_S + 3, "C marked Unhealthy")
        detected = time.monotonic() - killed

        # The cascade marks C's instance Unhealthy; a survivor adopts it and probes it back.
        def adopted() -> bool:
            unhealthy = [n for n, (s, _) in enumerate(history) if s == "Unhealthy"]
            return bool(unhealthy and any(s == "Healthy" for s, _ in history[unhealthy[0] :]))

        try:
            wait_for(adopted, 10, "a survivor to probe C's instance back to Healthy")
        except AssertionError as e:
            raise AssertionError(f"{e}; statuses seen: {sorted(set(history))}") from None
        finally:
            watching.set()
            watcher.join(5)
        print(f"C detected dead after {detected:.2f}s; instance history {history[:3]}...")
        reasons = [r for s, r in history if s == "Unhealthy"]
        assert any("is gone" in (r or "") or "missed" in (r or "") for r in reasons), history
    finally:
        backend.close()
        cluster.restart(c)
    # C is back: its node turns Healthy again, and it resumed from its replica.
    wait_for(lambda: c.health()["etcd"]["connected"], 10, "C reconnected")


def test_every_acknowledged_write_survives_the_etcd_leader_being_killed(cluster: Cluster) -> None:
    acknowledged: list[str] = []
    failures: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(server: Server, n: int) -> None:
        i = 0
        while not stop.is_set() and i < 400:
            reply = server.register(instance_body(20000 + n * 1000 + i, f"leader-kill-{n}"))
            with lock:
                # 200: a registration whose first reply was lost with the leader, retried by
                # the server, found its own record (a registration is an upsert by URL).
                if reply.status in (200, 201):
                    acknowledged.append(reply.json["instance"]["id"])
                else:
                    failures.append(reply.status)
            i += 1

    threads = [threading.Thread(target=writer, args=(node.server, n)) for n, node in enumerate(cluster.nodes)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    leader = cluster.etcd.leader()
    assert leader is not None
    leader.kill9()
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join()
    cluster.etcd.restart(leader)
    print(f"{len(acknowledged)} acknowledged, {len(failures)} refused ({sorted(set(failures))}) around the leader kill")
    assert len(acknowledged) > 30, (len(acknowledged), failures)
    assert set(failures) <= {503}, failures
    _, records = cluster.etcd.records()
    assert {("instances", i) for i in acknowledged} <= set(records)
    cluster.converged(timeout=20)


def test_a_server_cut_from_etcd_serves_stale_reads_refuses_writes_and_converges(cluster: Cluster) -> None:
    a, c = cluster.nodes[0], cluster.nodes[2]
    kept = a.server.register(instance_body(free_port(), "cut-svc"))
    doomed = a.server.register(instance_body(free_port(), "cut-svc"))
    assert kept.status == doomed.status == 201
    c.server.call("GET", f"/registry-svc/instances?index={doomed.index}&wait=0s")
    c.cut("blackhole")
    wait_for(lambda: c.health()["etcd"]["lastError"] and c.health()["staleSeconds"], 15, "C to notice it lost etcd")
    before = c.server.call("GET", "/registry-svc/instances?slug=cut-svc")
    assert before.status == 200
    assert float(before.headers["x-registry-stale-seconds"]) > 0
    assert len(before.json["instances"]) == 2
    # A route only the workers answer says it too (set where every worker answer passes).
    assert float(c.server.call("GET", "/registry-svc/definitions").headers["x-registry-stale-seconds"]) > 0
    refused = c.server.register(instance_body(free_port(), "cut-svc"))
    assert refused.status == 503
    assert "etcd" in refused.json["error"]
    # Meanwhile the cluster moves on: one instance deleted, one added, history compacted.
    assert a.server.call("DELETE", f"/registry-svc/instance/{doomed.json['instance']['id']}").status == 204
    added = a.server.register(instance_body(free_port(), "cut-svc"))
    assert added.status == 201
    cluster.etcd.compact()
    relists = c.health()["relists"]
    c.heal()
    wait_for(lambda: c.health()["staleSeconds"] is None, 15, "C to reconnect")
    after = c.server.call("GET", f"/registry-svc/instances?slug=cut-svc&index={added.index}&wait=0s")
    assert after.status == 200
    assert "x-registry-stale-seconds" not in after.headers
    assert "x-registry-stale-seconds" not in c.server.call("GET", "/registry-svc/definitions").headers
    ids = {i["id"] for i in after.json["instances"]}
    assert ids == {kept.json["instance"]["id"], added.json["instance"]["id"]}
    # The relist is published just after its apply: wait for the count rather than race it.
    wait_for(lambda: c.health()["relists"] == relists + 1, 5, "C's relist to show in /health")


def test_dns_answers_from_the_replica_and_a_stale_replica_answers_uncached(cluster: Cluster) -> None:
    a, c = cluster.nodes[0], cluster.nodes[2]
    made = a.server.register(instance_body(free_port(), "dns-svc", status="Healthy"))
    assert made.status == 201
    question = dns.message.make_query("dns-svc.service.registry.", "A")

    def answer() -> dns.message.Message:
        return dns.query.udp(question, "127.0.0.1", port=C_DNS_PORT, timeout=3)

    # Fresh: answered and cacheable (every process reads the replica's freshness from the page
    # the store's processes share).
    fresh = wait_for(
        lambda: (r := answer()).answer and r.answer[0].ttl == 30 and r, 10, "C's DNS to answer what A registered"
    )
    assert [r.to_text() for r in fresh.answer[0]] == ["127.0.0.1"] and fresh.answer[0].ttl == 30
    c.cut("blackhole")
    wait_for(lambda: c.health()["staleSeconds"], 15, "C to notice it lost etcd")
    stale = answer()
    # Still answered from the replica, as the data port does, but not to be cached.
    assert [r.to_text() for r in stale.answer[0]] == ["127.0.0.1"] and stale.answer[0].ttl == 0
    # The data port of C's workers says so too (it answered by itself, without the header,
    # before the workers knew the replica's freshness).
    lookup = c.server.call("GET", "/registry-svc/instances?slug=dns-svc", data_port=True)
    assert lookup.status == 200 and float(lookup.headers["x-registry-stale-seconds"]) > 0
    c.heal()
    # The replicator publishes its contact every few seconds: wait for the TTL itself.
    wait_for(lambda: answer().answer[0].ttl == 30, 15, "C's DNS to cache again once C reconnected")


def test_a_token_s_expiry_holds_on_every_server(cluster: Cluster) -> None:
    a, c = cluster.nodes[0], cluster.nodes[2]
    created = a.server.call("POST", "/registry-svc/tokens", {"role": "proxy", "ttl": "3s"})
    assert created.status == 201
    secret = created.json["token"]

    def status_on_c(data_port: bool = False) -> int:
        return c.server.call("GET", "/registry-svc/instances", token=secret, data_port=data_port).status

    wait_for(lambda: status_on_c() == 200, 10, "C to know the token")
    wait_for(lambda: status_on_c() == 401 and status_on_c(data_port=True) == 401, 10, "C to refuse it once expired")
    assert "expired" in c.server.call("GET", "/registry-svc/instances", token=secret).json["error"]


def test_a_reset_connection_to_etcd_is_resumed_without_a_relist(cluster: Cluster) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    relists = b.health()["relists"]
    b.cut("reset")
    time.sleep(1.0)
    written = a.server.register(instance_body(free_port(), "reset-svc"))
    assert written.status == 201
    b.heal()
    seen = b.server.call("GET", f"/registry-svc/instances?slug=reset-svc&index={written.index}&wait=0s")
    assert seen.status == 200, seen.body
    assert len(seen.json["instances"]) == 1
    assert b.health()["relists"] == relists


def test_a_server_restarted_while_etcd_is_away_serves_its_replica_read_only(cluster: Cluster) -> None:
    b = cluster.nodes[1]
    written = cluster.nodes[0].server.register(instance_body(free_port(), "away-svc"))
    assert written.status == 201
    b.server.call("GET", f"/registry-svc/instances?slug=away-svc&index={written.index}&wait=0s")
    b.server.kill9()
    b.cut("reset")
    b.server.start(timeout=60)  # gives etcd 10 s, then serves the replica on disk
    try:
        read = b.server.call("GET", "/registry-svc/instances?slug=away-svc")  # a lookup the gate could answer
        assert read.status == 200 and len(read.json["instances"]) == 1
        assert "x-registry-stale-seconds" in read.headers
        assert b.server.register(instance_body(free_port(), "away-svc")).status == 503
    finally:
        b.heal()
    wait_for(lambda: b.health()["staleSeconds"] is None, 20, "B to reach etcd again")


def test_a_replica_behind_a_member_without_quorum_notices_and_recovers(cluster: Cluster, tmp_path: Path) -> None:
    """A server whose only etcd member is cut off from its quorum must not go silently
    stale: every request carries require-leader, so the member refuses instead of answering
    from its own state. Here the other two members are frozen (SIGSTOP)."""
    leader = cluster.etcd.leader()
    assert leader is not None
    alone = next(m for m in cluster.etcd.members if m is not leader)
    others = [m for m in cluster.etcd.members if m is not alone]
    a = cluster.nodes[0].server
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(a.data_dir / "admin.token", lone / "admin.token")
    server = Server(lone, args=["--etcd", f"http://{alone.endpoint}", "--heartbeat-seconds", str(HEARTBEAT_S)]).start()
    try:

        def health() -> dict[str, Any]:
            return dict(server.call("GET", "/health", token=None).json)

        wait_for(lambda: health()["etcd"]["connected"], 10, "the lone server to connect")
        for member in others:
            assert member.proc is not None
            member.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: health()["staleSeconds"] is not None, 15, "the lone server to notice the lost quorum")
            assert health()["etcd"]["lastError"], health()  # "no leader", or a read that timed out
            refused = server.register(instance_body(free_port(), "quorum-svc"))
            assert refused.status == 503 and "etcd" in refused.json["error"]
            read = server.call("GET", "/registry-svc/instances?slug=quorum-svc")
            assert read.status == 200 and "x-registry-stale-seconds" in read.headers
        finally:
            for member in others:
                assert member.proc is not None
                member.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: health()["staleSeconds"] is None, 20, "the lone server to recover")
        for node in cluster.nodes:
            wait_for(lambda n=node: n.health()["staleSeconds"] is None, 20, "the cluster's servers to recover")
        written = a.register(instance_body(free_port(), "quorum-svc"))
        assert written.status == 201, written.body
        seen = server.call("GET", f"/registry-svc/instances?slug=quorum-svc&index={written.index}&wait=0s")
        assert seen.status == 200 and len(seen.json["instances"]) == 1
    finally:
        server.kill9()


def test_a_single_machine_store_moves_into_the_cluster_with_every_record(cluster: Cluster, tmp_path: Path) -> None:
    single = Server(tmp_path / "single").start()
    try:
        for i in range(3):
            assert single.register(instance_body(free_port(), "moved-svc", metadata={"i": str(i)})).status == 201
        assert single.call(
            "PUT",
            "/registry-svc/definition",
            {"definition": {"id": "moved-def", "image": {"name": "x:1", "internalPorts": [80]}}},
        ).status in (200, 201)
        before = single.call("GET", "/registry-svc/instances?slug=moved-svc").json["instances"]
    finally:
        single.stop()
    endpoints = ",".join(f"http://{e}" for e in cluster.etcd.endpoints)
    done = subprocess.run(
        [sys.executable, "-m", "registry_svc", "cluster", "import", "--data-dir", str(single.data_dir),
         "--etcd", endpoints, "--etcd-prefix", "/imported/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "imported 3 instances, 1 definitions" in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "registry_svc", "cluster", "import", "--data-dir", str(single.data_dir),
         "--etcd", endpoints, "--etcd-prefix", "/imported/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 1
    assert "already holds records" in again.stderr
    moved_dir = tmp_path / "moved"
    moved_dir.mkdir()
    shutil.copy(single.data_dir / "admin.token", moved_dir / "admin.token")
    moved = Server(moved_dir, args=["--etcd", endpoints, "--etcd-prefix", "/imported/"]).start()
    try:
        after = moved.call("GET", "/registry-svc/instances?slug=moved-svc").json["instances"]
        assert [(i["id"], i["url"], i["metadata"]) for i in after] == [
            (i["id"], i["url"], i["metadata"]) for i in before
        ]
        assert moved.call("GET", "/registry-svc/definition/moved-def").status == 200
        assert not (moved_dir / "admin.token.tmp").exists()
    finally:
        moved.kill9()


def test_anti_entropy_repairs_a_replica_that_diverged_from_etcd(cluster: Cluster, tmp_path: Path) -> None:
    """A lost event and a phantom record (what etcd 3.4.23's watch bugs could leave) are
    found by comparing keys and mod revisions at the applied revision, and repaired."""
    client = Client(cluster.etcd.endpoints)
    layout = Layout("/entropy/")
    store = _core.Store(str(tmp_path / "store"), 64 << 20)
    replicator = Replicator(store, client, layout, str(tmp_path), anti_entropy_seconds=3600)
    replicator.start()
    try:
        assert replicator.wait_synced(10)
        for name in ("lost", "kept"):
            client.put(layout.rec("definitions", name), orjson.dumps({"id": name, "image": {"name": f"{name}:1"}}))
        wait_for(lambda: store.get("definitions", "kept") is not None, 5, "the replica to apply the puts")
        applied = store.index()
        assert replicator.anti_entropy() == 0
        # Diverge: drop `lost` as if its event never came, and invent `ghost`.
        store.apply_replica(
            [("definitions", "lost", None, applied), ("definitions", "ghost", b'{"id":"ghost"}', applied)], applied
        )
        assert replicator.anti_entropy() == 2
        assert {i for i, _ in store.versions("definitions")} == {"lost", "kept"}
        lost = store.get("definitions", "lost")
        assert lost is not None and orjson.loads(lost[1])["image"]["name"] == "lost:1"
        assert replicator.anti_entropy() == 0
    finally:
        replicator.stop()
        store.close()


def test_watch_events_are_applied_while_anti_entropy_scans(cluster: Cluster, tmp_path: Path) -> None:
    """Review finding 9: the scan lists etcd without the replica's apply lock. Its page
    read is held back here (by a proxy in front of each member); a record put meanwhile
    still reaches the replica, and the scan then finds nothing to repair (the new record is
    newer than its listing)."""
    client = Client(cluster.etcd.endpoints)
    layout = Layout("/scan/")
    store = _core.Store(str(tmp_path / "store"), 64 << 20)
    proxies = [FaultProxy(endpoint) for endpoint in cluster.etcd.endpoints]
    replicator = Replicator(
        store, Client([p.endpoint for p in proxies]), layout, str(tmp_path), anti_entropy_seconds=3600
    )
    replicator.start()
    scan: threading.Thread | None = None
    try:
        assert replicator.wait_synced(10)
        client.put(layout.rec("definitions", "before"), orjson.dumps({"id": "before", "image": {"name": "b:1"}}))
        wait_for(lambda: store.get("definitions", "before") is not None, 5, "the replica to apply the first put")
        for proxy in proxies:
            proxy.hold_requests([b'"keys_only":true'])  # the scan's page read
        found: list[int] = []
        scan = threading.Thread(target=lambda: found.append(replicator.anti_entropy()))
        scan.start()
        wait_for(lambda: sum(p.held for p in proxies) == 1, 10, "the scan's page read to be held")
        client.put(layout.rec("definitions", "during"), orjson.dumps({"id": "during", "image": {"name": "d:1"}}))
        # Within the scan client's timeout (3 s): the page read is still held meanwhile.
        wait_for(lambda: store.get("definitions", "during") is not None, 2.5, "the put to apply during the scan")
        assert scan.is_alive(), "the scan did not wait for its page"
        for proxy in proxies:
            proxy.release()
        scan.join(30)
        assert found == [0]
    finally:
        for proxy in proxies:
            proxy.release()
        if scan is not None:
            scan.join(30)
        replicator.stop()
        store.close()
        for proxy in proxies:
            proxy.close()


def test_put_many_is_one_txn_in_etcd_as_it_is_one_write_locally(cluster: Cluster, tmp_path: Path) -> None:
    """Issue 22: `put_many` means the same on both backends: all or nothing, and refused
    past etcd's ops per txn with nothing written."""
    layout = Layout("/many/")
    etcd = Client(cluster.etcd.endpoints)
    store = _core.Store(str(tmp_path / "store"), 64 << 20, etcd=etcd.core, etcd_layout=layout)
    assert store.backend == "etcd"
    replicator = Replicator(store, etcd, layout, str(tmp_path), anti_entropy_seconds=3600)
    replicator.start()

    def item(n: int, port: int) -> tuple[str, bytes]:
        return f"m{n}", orjson.dumps({"id": f"m{n}", "url": f"http://127.0.0.1:{port}", "slug": "many"})

    try:
        assert replicator.wait_synced(10)
        taken = free_port()
        revision = store.put_many("instances", [item(1, taken), item(2, free_port())])
        assert store.index() >= revision
        assert {i for i, _ in store.versions("instances")} == {"m1", "m2"}
        # A unique URL held by m1: the whole write is refused, m3 included.
        with pytest.raises(_core.ConflictError, match="m1"):
            store.put_many("instances", [item(3, free_port()), item(4, taken)])
        # Past etcd's ops per txn (128): refused before anything is sent.
        with pytest.raises(_core.InvalidRecordError, match="128"):
            store.put_many("instances", [item(n, free_port()) for n in range(10, 80)])
        assert {i for i, _ in store.versions("instances")} == {"m1", "m2"}
        assert client_keys(etcd, layout) == {"m1", "m2"}
    finally:
        replicator.stop()
        store.close()


def client_keys(client: Client, layout: Layout) -> set[str]:
    _, kvs = client.list_prefix(layout.rec("instances", ""))
    return {kv.key.decode().rsplit("/", 1)[-1] for kv in kvs}


def test_a_token_created_on_one_server_works_on_another_read_with_its_index(cluster: Cluster) -> None:
    """Creating a token is a write like any other: with its answer's index, another server
    waits for its replica before it authenticates (it used to refuse the token at once)."""
    a, c = cluster.nodes[0], cluster.nodes[2]
    c.cut("blackhole")  # C's replica cannot have the token before the heal below
    try:
        created = a.server.call("POST", "/registry-svc/tokens", {"role": "proxy", "description": "fresh"})
        assert created.status == 201
        healer = threading.Timer(0.5, c.heal)
        healer.start()
        query = f"/registry-svc/instances?index={created.index}&wait=0s"
        seen = c.server.call("GET", query, token=created.json["token"], timeout=15)
        assert seen.status == 200, seen.body
        healer.join()
    finally:
        c.heal()
    # Without an index, an unknown token is still refused at once.
    assert c.server.call("GET", "/registry-svc/instances", token="rsv_not-a-token").status == 401


def test_an_etcd_election_without_quorum_declares_no_live_node_gone(tmp_path: Path) -> None:
    """The hardening issue's item 4: with heartbeats of 2 s, etcd's leader killed and
    another member paused for 8 s (no quorum: nobody can heartbeat) under registrations.
    Once etcd is back, no running server is declared gone, and every acknowledged
    instance is as it was registered (Healthy, `type: none`: no probe would bring it back)."""
    root = tmp_path
    etcd = EtcdCluster(root / "etcd").start()
    servers: list[Server] = []
    acknowledged: dict[str, str] = {}
    stop = threading.Event()
    try:
        endpoints = ",".join(f"http://{e}" for e in etcd.endpoints)
        first = Server(root / "a", args=["--etcd", endpoints, "--heartbeat-seconds", "2"]).start()
        servers.append(first)
        for name in ("b", "c"):
            (root / name).mkdir()
            shutil.copy(first.data_dir / "admin.token", root / name / "admin.token")
            servers.append(Server(root / name, args=["--etcd", endpoints, "--heartbeat-seconds", "2"]).start())
        wait_for(lambda: len(first.call("POST", "/registry-svc/nodes").json["nodes"]) == 3, 20, "three live nodes")

        def register_load() -> None:
            n = 0
            while not stop.is_set() and n < 2000:
                server = servers[n % 3]
                body = {**instance_body(30000 + n, "quorum"), "status": "Healthy"}
                try:
                    reply = server.call("PUT", "/registry-svc/instance", body, timeout=5)
                except OSError:
                    reply = None
                if reply is not None and reply.status in (200, 201):
                    acknowledged[reply.json["instance"]["id"]] = server.url
                n += 1
                time.sleep(0.02)

        loader = threading.Thread(target=register_load)
        loader.start()
        time.sleep(2)
        leader = wait_for(etcd.leader, 10, "an etcd leader")
        paused = next(m for m in etcd.members if m is not leader)
        leader.kill9()
        assert paused.proc is not None
        paused.proc.send_signal(signal.SIGSTOP)
        time.sleep(8)  # no quorum: four heartbeats missed by everyone
        paused.proc.send_signal(signal.SIGCONT)
        etcd.restart(leader)
        wait_for(etcd.leader, 20, "a new etcd leader")
        time.sleep(8)  # the sweeper's judgement time, and the nodes' next heartbeats
        stop.set()
        loader.join()
        assert len(acknowledged) > 100, len(acknowledged)
        for server in servers:
            log = server.log_path.read_text()
            assert "marking its instances Unhealthy" not in log, log[-3000:]
        nodes = first.call("POST", "/registry-svc/nodes").json["nodes"]
        assert sorted(n["status"] for n in nodes) == ["Healthy"] * 3, nodes
        listed = {i["id"]: i for i in first.call("GET", "/registry-svc/instances?slug=quorum").json["instances"]}
        assert set(acknowledged) <= set(listed), "an acknowledged registration was lost"
        wrong = {i: listed[i]["statusReason"] for i in acknowledged if listed[i]["status"] != "Healthy"}
        assert not wrong, wrong
    finally:
        stop.set()
        for server in servers:
            server.kill9()
        for member in etcd.members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signal.SIGCONT)
        etcd.stop()
