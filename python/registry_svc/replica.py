"""The replicator: keeps this server's LMDB store a copy of etcd's records (cluster mode).

The algorithm of Kubernetes' reflector and etcd's own cache: list the prefix at a revision R
(paginated), replace the local state with it (upsert what is listed, delete what is not, so
deletes made while this server was away arrive too), then watch from R+1 and apply each
watch response in one LMDB transaction that also stores the applied revision. Events at or
below the applied revision are dropped (etcd 3.4.23 can duplicate them). After a broken
stream it resumes from applied+1; a compaction past that revision means a relist.

Every request carries etcd's require-leader metadata, so a member cut off from its quorum
refuses the ping and cancels the watch rather than serving a stale view; the replicator
then moves to another endpoint. A ping (a linearizable read) every `ping_seconds` proves
contact, and its time is what the workers turn into the staleness header and the refusal
of writes. An anti-entropy check compares every key and mod revision at the applied
revision with etcd's and repairs (and logs) any divergence, since 3.4.23 has known watch
bugs.

One replicator runs per data dir (an flock on `replicator.lock`): the supervisor of the
server. Worker processes only read the store.
"""

from __future__ import annotations

import fcntl
import logging
import queue
import random
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from registry_svc import _core
from registry_svc.cluster import REPLICA_STATE, fresh_until, replica_state
from registry_svc.etcd import Client, Compacted, EtcdError, EtcdUnavailable, KeyValue, Watch, WatchMessage
from registry_svc.etcd_keys import Layout

log = logging.getLogger("registry_svc")

PING_S = 0.5
PING_TIMEOUT_S = 1.0
ANTI_ENTROPY_S = 60.0
# Keys per page of the anti-entropy scan (keys only).
SCAN_PAGE = 5000
BACKOFF_MAX_S = 2.0
STATE_EVERY_S = 0.25
# Most watch responses applied in one LMDB transaction.
MAX_BATCH = 256
Change = tuple[str, str, bytes | None, int]


class ReplicaError(Exception):
    """The data dir cannot serve as this cluster's replica."""


class Replicator:
    """List-then-watch from etcd into the local store, on threads of its own."""

    def __init__(
        self,
        store: _core.Store,
        client: Client,
        layout: Layout,
        data_dir: str,
        ping_seconds: float = PING_S,
        anti_entropy_seconds: float = ANTI_ENTROPY_S,
    ) -> None:
        self.store = store
        self.client = client
        self.layout = layout
        self.ping_seconds = ping_seconds
        self.anti_entropy_seconds = anti_entropy_seconds
        self._lock_path = Path(data_dir) / "replicator.lock"
        self._lock_file: IO[str] | None = None
        self._apply = threading.Lock()  # one writer of the replica at a time
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._watch: Watch | None = None
        self._threads: list[threading.Thread] = []
        previous = replica_state(store)
        # Stale until the first contact: the gate leaves reads to the workers (and their
        # staleness header) even when etcd is away from the start.
        store.set_fresh_until(0)
        self.state: dict[str, Any] = {
            "mode": "cluster",
            "prefix": layout.prefix,
            "clusterId": previous.get("clusterId"),
            "connected": False,
            "contact": previous.get("contact", 0),
            # Since when contact is unbroken (0 while there is none): the sweeper counts
            # a node's silence from here, as nobody could heartbeat before.
            "since": 0,
            "etcdRevision": previous.get("etcdRevision", 0),
            "endpoint": None,
            "relists": previous.get("relists", 0),
            "divergences": previous.get("divergences", 0),
            "lastError": None,
        }
        # A replica on disk resumes from its applied revision; an empty one lists first.
        self._relist = not previous
        self._published: tuple[float, bool | None] = (0.0, None)
        # A resumed watch (no relist) may have missed what a buggy stream dropped: the ping
        # loop runs the anti-entropy check soon after.
        self._check_soon = False

    # -- life cycle -----------------------------------------------------------------

    def check_data_dir(self) -> None:
        """Refuses a data dir that holds a single-machine store or another prefix's replica."""
        previous = replica_state(self.store)
        if not previous and self.store.index() > 0:
            raise ReplicaError(
                "this data dir holds a single-machine store; load it into etcd with "
                "`registry-svc cluster import --data-dir DIR --etcd URL` and start the cluster server on a new --data-dir"
            )
        if previous and previous.get("prefix") != self.layout.prefix:
            raise ReplicaError(
                f"this data dir replicates etcd prefix '{previous.get('prefix')}', not '{self.layout.prefix}'; use a new --data-dir"
            )
        known = previous.get("clusterId")
        if known is None:
            return
        try:
            header = self._ping()
        except (EtcdUnavailable, EtcdError, OSError):
            return  # etcd away: the replica is served read-only, and the ping loop checks again
        if header.get("cluster_id") != known:
            raise ReplicaError(
                f"this data dir replicates etcd cluster {known}, but the etcd at {','.join(self.client.endpoints)} is cluster "
                f"{header.get('cluster_id')} (another cluster with the same prefix); use a new --data-dir"
            )

    def _ping(self) -> dict[str, Any]:
        """etcd's response header (cluster id, revision) for one cheap read."""
        return dict(self.client.range(self.layout.bootstrap, count_only=True, timeout=PING_TIMEOUT_S)["header"])

    def start(self) -> None:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._lock_path.open("w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ReplicaError(f"another server replicates into this data dir ({self._lock_path} is locked)") from None
        for target, name in ((self._replicate, "replica-watch"), (self._ping_loop, "replica-ping")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_synced(self, timeout: float) -> bool:
        """Whether the first list (or a resume) reached etcd within `timeout`."""
        return self._synced.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._lock_file is not None:
            self._lock_file.close()

    # -- the watch --------------------------------------------------------------------

    def _replicate(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                resumed = not self._relist
                if self._relist:
                    self._list_and_replace()
                self._watch_from(self.store.index() + 1, resumed)
                backoff = 0.05
            except Compacted:
                log.warning("replica: revision %d is compacted in etcd; relisting", self.store.index() + 1)
                self._relist = True
            except (EtcdUnavailable, EtcdError, OSError) as e:
                if self._stop.is_set():
                    return
                self._lost(str(e))
                time.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(BACKOFF_MAX_S, backoff * 2)
            except Exception:
                log.exception("replica: unexpected error; restarting the watch")
                time.sleep(BACKOFF_MAX_S)

    def _list_and_replace(self) -> None:
        listing = self.client.core.list_prefix(self.layout.rec_prefix)
        revision = listing.revision
        with self._apply:
            changes = listing.differences(self.store, self.layout)
            self.store.apply_replica(changes, revision, exact=True)
        self._relist = False
        self.state["relists"] = int(self.state["relists"]) + 1
        self._published = (0.0, None)  # publish the new count at once
        log.info("replica: listed %d records at revision %d (%d changes applied)", len(listing), revision, len(changes))
        self._contact(revision)
        self._synced.set()

    def _watch_from(self, start: int, resumed: bool) -> None:
        """Applies the watch from `start` until it breaks. A reader thread parses the stream;
        this thread applies whatever has arrived meanwhile in one LMDB transaction (group
        commit: under a burst of writes, one sync covers many watch responses)."""
        watch = self.client.watch(self.layout.rec_prefix, start)
        self._watch = watch
        arrived: queue.Queue[WatchMessage | BaseException] = queue.Queue()
        reader = threading.Thread(target=self._read, args=(watch, arrived), name="replica-read", daemon=True)
        try:
            self.state["endpoint"] = watch.endpoint
            self._check_soon = resumed
            self._synced.set()
            reader.start()
            while not self._stop.is_set():
                batch = [arrived.get()]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(arrived.get_nowait())
                    except queue.Empty:
                        break
                messages = [m for m in batch if isinstance(m, WatchMessage)]
                if messages:
                    self._apply_messages(messages)
                failure = next((m for m in batch if isinstance(m, BaseException)), None)
                if failure is not None:
                    raise failure
        finally:
            self._watch = None
            watch.close()

    def _read(self, watch: Watch, arrived: queue.Queue[WatchMessage | BaseException]) -> None:
        """Hands each message of the stream to the applier, and the reason it ended."""
        try:
            while True:
                message = watch.next()
                if message.canceled:
                    if message.compact_revision:
                        raise Compacted(11, f"watch canceled: compacted at {message.compact_revision}")
                    raise EtcdUnavailable(f"watch canceled by {watch.endpoint}: {message.cancel_reason or 'no reason'}")
                if not message.created:
                    arrived.put(message)
        except BaseException as e:
            arrived.put(e)

    def _apply_messages(self, messages: list[WatchMessage]) -> None:
        with self._apply:
            applied = self.store.index()
            changes: list[Change] = []
            top = applied
            for message in messages:
                events = message.events
                if not events:
                    # A progress notification: every later event has a higher revision.
                    top = max(top, message.revision)
                for key, value, revision in events:
                    if revision <= applied:
                        continue  # a duplicate, or a replay after a resume
                    top = max(top, revision)
                    parsed = self.layout.parse_rec(key)
                    if parsed is not None:
                        changes.append((parsed[0], parsed[1], value, revision))
            if top > applied:
                self.store.apply_replica(changes, top)
        self._contact(max(top, messages[-1].revision))

    # -- contact, state ---------------------------------------------------------------

    def _ping_loop(self) -> None:
        last_check = time.monotonic()
        while not self._stop.wait(self.ping_seconds):
            try:
                header = self._ping()
                cluster_id = header.get("cluster_id")
                if self.state.get("clusterId") not in (None, cluster_id):
                    log.error(
                        "replica: etcd cluster id changed from %s to %s; this replica holds another cluster's data",
                        self.state["clusterId"], cluster_id,
                    )  # fmt: skip
                self.state["clusterId"] = cluster_id
                self._contact(int(header["revision"]))
            except (EtcdUnavailable, EtcdError, OSError) as e:
                self._lost(str(e))
                watch = self._watch
                if watch is not None:
                    watch.close()  # a silent stream: make the watch thread reconnect
                continue
            due = time.monotonic() - last_check >= self.anti_entropy_seconds or self._check_soon
            if due and self._synced.is_set():
                last_check = time.monotonic()
                self._check_soon = False
                try:
                    self.anti_entropy()
                except Compacted:
                    self._relist = True
                    watch = self._watch
                    if watch is not None:
                        watch.close()
                except (EtcdUnavailable, EtcdError) as e:
                    log.warning("replica: anti-entropy check failed: %s", e)

    def anti_entropy(self) -> int:
        """Compares every record key and mod revision with etcd's, and repairs what differs.
        Returns how many records differed.

        The scan does not hold the replica's apply lock (review finding 9): etcd is listed
        page by page at the revision the replica had when the scan began, while watch
        events go on being applied. What differs is only a candidate (it may have changed
        since): each is read again from etcd, holding the lock, at the revision the replica
        is at then, and repaired only if it still differs (a compare on mod_revision)."""
        began = self.store.index()
        listing = self.client.core.list_prefix(self.layout.rec_prefix, began, keys_only=True, page=SCAN_PAGE)
        # Records the watch changed after `began` are newer than the listing: not candidates.
        candidates = [
            (collection, record_id)
            for collection, record_id, _, _ in listing.differences(self.store, self.layout)
            if (self.store.get(collection, record_id) or (0, b""))[0] <= began
        ]
        if not candidates:
            return 0
        with self._apply:
            applied = self.store.index()
            repairs: list[Change] = []
            for collection, record_id in candidates:
                found = self.client.range(self.layout.rec(collection, record_id), revision=applied).get("kvs") or []
                local = self.store.get(collection, record_id)
                if found:
                    kv = KeyValue.of(found[0])
                    if local is None or local[0] != kv.mod_revision:
                        repairs.append((collection, record_id, kv.value, kv.mod_revision))
                elif local is not None:
                    repairs.append((collection, record_id, None, applied))
            if not repairs:
                return 0
            ids = sorted({f"{c}/{i}" for c, i, _, _ in repairs})
            log.error("replica: anti-entropy found %d records differing from etcd at revision %d, repaired: %s",
                      len(ids), applied, ", ".join(ids[:20]))  # fmt: skip
            self.store.apply_replica(repairs, applied, exact=True)
            self.state["divergences"] = int(self.state["divergences"]) + len(ids)
            self._published = (0.0, None)
            self._write_state()
            return len(ids)

    def _contact(self, etcd_revision: int) -> None:
        was = self.state["connected"]
        now = time.time()
        self.state.update(connected=True, contact=now, lastError=None)
        if not was:
            self.state["since"] = now
        self.state["etcdRevision"] = max(int(self.state["etcdRevision"]), etcd_revision)
        if not was:
            log.warning("replica: connected to etcd (applied revision %d)", self.store.index())
        self._write_state()

    def _lost(self, error: str) -> None:
        if self.state["connected"]:
            log.warning("replica: lost etcd: %s", error)
        self.state.update(connected=False, since=0, lastError=error[:300])
        self._write_state()

    def _write_state(self) -> None:
        """Publishes the state to the workers (and the gate), at most every STATE_EVERY_S
        unless the connection changed."""
        now = time.monotonic()
        connected = bool(self.state["connected"])
        if connected == self._published[1] and now - self._published[0] < STATE_EVERY_S:
            return
        self._published = (now, connected)
        state = {**self.state, "appliedRevision": self.store.index()}
        self.store.set_state(REPLICA_STATE, orjson.dumps(state))
        # Every process's gates and DNS leave reads to the workers once this passes (a
        # page they all map: rust/core/write_counts.rs).
        self.store.set_fresh_until(fresh_until(state))
