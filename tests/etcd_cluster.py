"""Cluster test harness: a fault-injecting TCP proxy per registry server and etcd member,
and the suite's own reader of a replica's LMDB files. The etcd members themselves are in
`loadtest/etcd_cluster.py`, shared with the benchmark."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from pathlib import Path

from loadtest.etcd_cluster import EtcdCluster, Member, etcd_call

__all__ = ["EtcdCluster", "FaultProxy", "Member", "etcd_call", "replica_records"]

COLLECTION_TAGS = {1: "instances", 2: "definitions", 3: "nodes", 4: "tokens"}


def replica_records(data_dir: Path) -> tuple[int, dict[tuple[str, str], tuple[int, bytes]]]:
    """A replica's records read straight from its LMDB files with py-lmdb (not the server's
    code): (applied revision, {(collection, id): (version, json)})."""
    import lmdb

    env = lmdb.open(str(data_dir / "store"), readonly=True, lock=False, max_dbs=4, subdir=True)
    try:
        records_db = env.open_db(b"records", create=False)
        meta_db = env.open_db(b"meta", create=False)
        out = {}
        with env.begin() as txn:
            applied = int.from_bytes(txn.get(b"index", db=meta_db) or b"\0" * 8, "big")
            for key, value in txn.cursor(db=records_db):
                out[(COLLECTION_TAGS[key[0]], key[1:].decode())] = (int.from_bytes(value[:8], "big"), bytes(value[8:]))
        return applied, out
    finally:
        env.close()


class FaultProxy:
    """A TCP proxy from a loopback port to `target`, with modes: `pass` (forward), `blackhole`
    (a silent partition: connections stay open and new ones are accepted, but no byte moves
    either way until healed, as when a network drops every packet and TCP keeps
    retransmitting), `reset` (close every connection, refuse new ones) and `lose-answer`
    (`lose_answer_to`: the next request carrying one of some byte patterns reaches etcd,
    and its answer is dropped with the connection, once: a member that applied a write and
    lost the connection before the client heard)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.mode = "pass"
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._stop = False
        self._lock = threading.Lock()
        # lose-answer: what marks the request, the connections that carried one, and how
        # many answers were dropped.
        self._patterns: list[bytes] = []
        self._marked: set[socket.socket] = set()
        self.lost = 0
        # hold: what marks a request to hold back, and the held (peer, bytes) until release.
        self._hold: list[bytes] = []
        self._held: list[tuple[socket.socket, bytes]] = []
        self.held = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lose_answer_to(self, patterns: list[bytes]) -> None:
        """Drops the answer to the next request that carries one of `patterns` (and that
        connection), then passes everything again."""
        with self._lock:
            self._patterns = list(patterns)
            self.mode = "lose-answer"

    def hold_requests(self, patterns: list[bytes]) -> None:
        """Holds back every request carrying one of `patterns` (it reaches etcd only at
        `release`): a slow answer to that request alone, while other connections flow."""
        with self._lock:
            self._hold, self.held = list(patterns), 0

    def release(self) -> None:
        """Sends the held requests on, and holds nothing more."""
        with self._lock:
            held, self._hold, self._held = self._held, [], []
            for peer, data in held:
                with contextlib.suppress(OSError):
                    peer.setblocking(True)
                    peer.settimeout(2)
                    peer.sendall(data)
                    peer.setblocking(False)

    def set(self, mode: str) -> None:
        assert mode in ("pass", "blackhole", "reset")
        self._patterns, self._marked = [], set()
        with self._lock:
            previous, self.mode = self.mode, mode
            if mode == "reset":
                for sock in list(self._pairs):
                    self._close(sock)
            elif mode == "blackhole" and previous != "blackhole":
                for sock in self._pairs:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(sock)
            elif mode == "pass" and previous == "blackhole":
                for sock in self._pairs:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.register(sock, selectors.EVENT_READ)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        with self._lock:
            for sock in list(self._pairs):
                self._close(sock)
        self.listener.close()

    def _close(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with self._lock:
                    if sock is self.listener:
                        self._accept()
                    elif sock in self._pairs:
                        self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.mode == "reset":
            client.close()
            return
        registered = self.mode in ("pass", "lose-answer")
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if registered:
                self._selector.register(s, selectors.EVENT_READ)
        self._pairs[client] = upstream
        self._pairs[upstream] = client

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        peer = self._pairs[sock]
        if self._hold and any(p in data for p in self._hold):
            self._held.append((peer, data))
            self.held += 1
            return
        if self.mode == "lose-answer":
            if sock in self._marked:  # etcd answered the marked request: drop it, and the connection
                self._marked.discard(sock)
                self._close(sock)
                self.lost += 1
                self.mode, self._patterns = "pass", []
                return
            if any(p in data for p in self._patterns):
                self._marked.add(peer)  # the upstream side: its next bytes are the answer
        try:
            peer.setblocking(True)
            peer.settimeout(2)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close(sock)
