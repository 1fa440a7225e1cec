"""Typed stub of the Rust extension (rust/python.rs). Keep it true to the module."""

import builtins
from collections.abc import Callable
from typing import Self

__build__: str
"""The extension's crate version and build profile, e.g. "registry-svc-core 0.1.0 (release)"."""

def unmapped_address(address: str) -> str:
    """The IPv4 address an IPv6 spelling carries (IPv4-mapped, IPv4-compatible, NAT64
    `64:ff9b::/96`, 6to4 `2002::/16`), or the address itself. ValueError for a non-address."""

class EtcdUnavailable(Exception):
    """No etcd endpoint took the request (refused, reset, timed out, or no leader)."""

class EtcdAmbiguous(EtcdUnavailable):
    """A write was sent and its answer lost: it may have been applied. Never sent again
    blindly: read what it would have written first."""

class EtcdError(Exception):
    """etcd answered with an error; args = (code, message)."""

class Compacted(EtcdError):
    """The revision asked for is older than etcd's compaction."""

class EtcdClient:
    """etcd's JSON gateway with failover across `endpoints` (`host:port`), the GIL released
    while it waits (rust/etcd/client.rs): the write path's client and Python's."""

    def __new__(cls, endpoints: builtins.list[str], timeout: float = 3.0, connect_timeout: float = 1.0) -> Self: ...
    @property
    def endpoints(self) -> builtins.list[str]: ...
    @property
    def preferred(self) -> int:
        """The index of the endpoint that answered last."""
    def list_prefix(self, prefix: bytes, revision: int = 0, keys_only: bool = False, page: int = 1000) -> EtcdListing:
        """Every key under `prefix` at `revision` (0: now), paginated, held in Rust.
        Compacted if that revision is compacted between pages."""
    def call(self, path: str, body: bytes, timeout: float | None = None, idempotent: bool = True) -> bytes:
        """POSTs the JSON `body` to `path`; the answer's JSON. A call that is not
        `idempotent` and lost its answer raises EtcdAmbiguous and is never sent again."""

class EtcdListing:
    """Etcd's keys under a prefix at one revision (rust/etcd/list.rs)."""

    @property
    def revision(self) -> int: ...
    def __len__(self) -> int: ...
    def items(self) -> builtins.list[tuple[bytes, bytes, int]]:
        """(key, value, mod revision) of each key (value empty when listed keys only)."""
    def differences(self, store: Store, layout: EtcdLayout) -> builtins.list[tuple[str, str, bytes | None, int]]:
        """The changes that make `store`'s records equal this listing, as
        `Store.apply_replica` takes them."""

class WatchMessage:
    """One message of a watch stream (rust/etcd/watch.rs)."""

    revision: int
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    @property
    def events(self) -> builtins.list[tuple[bytes, bytes | None, int]]:
        """(key, value or None for a delete, mod revision) of each change."""

class EtcdWatch:
    """A watch of every key under `prefix` from `start_revision`, on the first endpoint that
    takes it (EtcdUnavailable if none)."""

    endpoint: str
    def __new__(cls, client: EtcdClient, prefix: bytes, start_revision: int, progress_notify: bool = True) -> Self: ...
    def next(self) -> WatchMessage:
        """The next message, waited for with the GIL released; EtcdUnavailable when the
        stream breaks, ends, fails or is closed."""
    def close(self) -> None:
        """Ends the stream from any thread."""

def etcd_prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with `prefix`."""

class EtcdLayout:
    """Where a registry's keys live under `prefix` in etcd (rust/etcd/keys.rs)."""

    def __new__(cls, prefix: str = "/registry-svc/") -> Self: ...
    @property
    def prefix(self) -> str: ...
    @property
    def root(self) -> bytes: ...
    @property
    def rec_prefix(self) -> bytes: ...
    def rec(self, collection: str, record_id: str) -> bytes: ...
    def parse_rec(self, key: bytes) -> tuple[str, str] | None: ...
    def uniq(self, collection: str, field: str, value: str) -> bytes: ...
    def coll(self, collection: str) -> bytes: ...
    @property
    def live_prefix(self) -> bytes: ...
    def live(self, node_id: str) -> bytes: ...
    def elect(self, job: str) -> bytes: ...
    @property
    def bootstrap(self) -> bytes: ...

def etcd_record_ops(
    layout: EtcdLayout, collection: str, record_id: str, json: bytes, old: bytes | None = None
) -> bytes:
    """The JSON of [compares, ops] that put a record with its guard keys in step."""

def etcd_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot hold a registry's keys in etcd, or None."""

ETCD_DEFAULT_PREFIX: str
ETCD_MAX_TXN_OPS: int
REPLICA_STATE: str
STALE_AFTER_S: float
CATCH_UP_S: float

class StoreError(Exception):
    """Base class of every store error."""

class NotFoundError(StoreError):
    """No record with that id."""

class ConflictError(StoreError):
    """A unique field is held by another record; args = (message, holder_id)."""

class VersionMismatchError(StoreError):
    """The record (or, for a guarded write, its collection) changed since it was read."""

class InvalidRecordError(StoreError):
    """The record or the request is not acceptable to the store."""

class StoreFullError(StoreError):
    """The LMDB map is full; nothing was written."""

class SaturatedError(StoreError):
    """Every routable instance is over its queue limit or has its KV cache full."""

class NoRoutableError(StoreError):
    """The slug has instances, but none is routable."""

class Store:
    """The registry store over one LMDB directory. Safe to share between threads.

    Collections: "instances", "definitions", "nodes", "tokens". Every write is durable when
    the call returns and yields the registry index it was applied at. `expect_version`:
    None = any, 0 = the record must not exist, n = the record must be at version n.
    """

    def __new__(
        cls,
        path: str,
        map_size: int = ...,
        default_policy: str = "round_robin",
        slug_policies: dict[str, str] = ...,
        eject_seconds: float = 30.0,
        eject_max_seconds: float = 300.0,
        eject_failures: int = 5,
        balancer_state: str | None = None,
        etcd: EtcdClient | None = None,
        etcd_layout: EtcdLayout | None = None,
        catch_up_seconds: float = 5.0,
    ) -> Self:
        """`balancer_state`: a file holding the in-flight counts and outlier ejections,
        mapped by every process that opens it (rust/shared.rs); None keeps them private.
        `etcd`: cluster mode, every write goes to etcd under `etcd_layout` and is answered
        once this replica applied it (at most `catch_up_seconds` later)."""
    @property
    def backend(self) -> str:
        """Where writes go: "local" (this store's writer) or "etcd"."""
    def replica_staleness(self) -> float | None:
        """Seconds since the replica last heard from etcd, when past STALE_AFTER_S."""
    def pick_json(
        self,
        slug: str,
        policy_name: str | None = None,
        zone: str | None = None,
        key: str | None = None,
        tags: builtins.list[str] = ...,
        model: str | None = None,
        prefix: bytes | None = None,
    ) -> bytes:
        """The `{"instance": ...}` body of a pick, with its load reading. NotFoundError for
        an unknown slug or a model no instance serves, NoRoutableError when none is
        routable, SaturatedError when every one is over its bounds, ValueError for an
        unknown policy."""
    def with_load(self, body: bytes) -> bytes:
        """An answer carrying instances, with their load readings (rust/core/load_json.rs)."""
    def report_load(self, id: str, queued: int, running: int, kv_cache: float, interval_ms: int) -> bool:
        """Records a model server's load, taken now (rust/core/load.rs); False when the
        table has no room for it."""
    def cancelled_queries(self, seen: int) -> tuple[int, list[int]]:
        """The blocking queries whose clients went away since `seen` (0 at first), as the
        gates' `x-registry-query` ids, and the count to pass next time."""
    def reap_dead_processes(self) -> int:
        """Takes the in-flight requests of server processes that died (a crashed worker)
        out of the shared balancer counts; returns how many were forgotten."""
    def get(self, collection_name: str, id: str) -> tuple[int, bytes] | None: ...
    def list(
        self, collection_name: str, filters: builtins.list[tuple[str, str]] = ...
    ) -> tuple[int, builtins.list[bytes]]: ...
    def list_json(
        self, collection_name: str, filters: builtins.list[tuple[str, str]], key: str
    ) -> tuple[int, bytes]: ...
    def changes(self, collection_name: str, since: int) -> tuple[int, builtins.list[bytes], int]:
        """(index, records written after `since`, live record count)."""
    def ids(self, collection_name: str) -> builtins.list[str]:
        """Every id of the collection, sorted."""
    def ids_by(self, collection_name: str, field: str, value: str) -> builtins.list[str]: ...
    def put(self, collection_name: str, id: str, json: bytes, expect_version: int | None = None) -> int: ...
    def put_nowait(
        self,
        collection_name: str,
        id: str,
        json: bytes,
        expect_version: int | None,
        done: Callable[[int | StoreError], object],
    ) -> None:
        """`put` without blocking: `done` gets the index, or the store error, from the writer thread."""
    def put_many(self, collection_name: str, items: builtins.list[tuple[str, bytes]]) -> int: ...
    def delete(
        self,
        collection_name: str,
        id: str,
        expect_version: int | None = None,
        expect_collection_index: int | None = None,
    ) -> int:
        """Deletes a record; with `expect_collection_index`, only if nothing in the collection
        was written since that collection index (else VersionMismatchError)."""
    def apply_replica(
        self, changes: builtins.list[tuple[str, str, bytes | None, int]], applied: int, exact: bool = False
    ) -> None:
        """Applies changes committed in etcd (collection, id, json or None for a delete,
        revision) in one transaction and sets the applied revision (cluster replicas).
        `exact`: etcd's state at a revision (relist, repair), applied as given; otherwise
        watch events, skipped where the record is already at or past them."""
    def versions(self, collection_name: str) -> builtins.list[tuple[str, int]]:
        """(id, version) of every record of a collection, sorted by id."""
    def state(self, name: str) -> bytes | None:
        """A small named state value kept beside the records (None if never set)."""
    def set_fresh_until(self, unix_ms: int) -> None:
        """Until when the replica counts as fresh, for every process of the server (a page
        they all map): their gates and DNS leave reads to the workers (and their staleness
        header) after it."""
    def forget_replica(self) -> None:
        """Marks the store as no cluster's replica (a server started without etcd)."""
    def set_state(self, name: str, value: bytes) -> None:
        """Sets a named state value durably; it moves no index and wakes no watcher."""
    def wait_index(self, revision: int, timeout: float) -> bool:
        """Waits (without the GIL) until the registry index is at least `revision`, at most
        `timeout` seconds; returns whether it got there."""
    def writer_stats(self) -> tuple[int, int]:
        """(writes, group-commit batches) committed by this process's writer thread."""
    def cache_usage(self) -> tuple[int, int]:
        """(entries, bytes) of this process's response cache."""
    def index(self) -> int: ...
    def collection_index(self, collection_name: str) -> int: ...
    def partition_index(self, collection_name: str, value: str) -> int:
        """The registry index of the last write touching partition `value` (an instance slug)."""
    def close(self) -> None: ...

class Front:
    """A gate (rust/edge/): listens on `host:port` and forwards checked requests to the
    workers on 127.0.0.1:`upstream_port`. Bodies over the limits get 413 before they are
    read. OSError when the port is taken. The API port has one; with `data_plane`, it holds
    the data port (reads and the proxy only, SO_REUSEPORT: every process joins)."""

    def __init__(
        self,
        host: str,
        port: int,
        upstream_port: int,
        api_body_limit: int = 1048576,
        proxy_body_limit: int = 16777216,
        threads: int = 2,
        store: Store | None = None,
        data_plane: bool = False,
        proxy_networks: list[str] | None = None,
        proxy_timeout: float = 60.0,
        answer_reads: bool = True,
        access_log: bool = False,
        max_connections: int = 0,
        api_port: int = 0,
    ) -> None:
        """With `store`, instance lookups, one instance and picks with a valid token and a
        well-formed query are answered by the gate itself, without the workers
        (rust/reads.rs); with `proxy_networks` as well, it proxies `/<slug>/...` to the
        instances in those networks (rust/forward.rs)."""
    def stats(self) -> tuple[int, int, int, int]:
        """(answered, forwarded, refused, proxied) requests since the gate started."""
    def proxy_stats(self) -> list[tuple[str, int]]:
        """The proxy's upstream outcomes and `ejections` since the gate started."""
    @property
    def port(self) -> int: ...
    def close(self) -> None:
        """Stops listening and drops every connection."""

class Picker:
    """One slug's instances held in memory and picked by the server's selection code
    (rust/python_picker.rs): policies, zones, tags, Unknown only when nothing is Healthy.
    ValueError for an unknown policy."""

    def __init__(self, slug: str, policy: str = "round_robin") -> None: ...
    def replace(self, instances: list[bytes]) -> int:
        """Swaps in `instances` (each one's stored JSON); returns how many. ValueError
        naming the first that has no id or url, and nothing changes then."""
    def pick(self, zone: str | None = None, key: str | None = None, tags: list[str] | None = None) -> tuple[str, str]:
        """(id, url) of the chosen instance. NotFoundError when none is known,
        NoRoutableError when none is routable."""
    def __len__(self) -> int: ...

class Epp:
    """Envoy's external processor as an endpoint picker on `host:port` (rust/epp/),
    answering from `store`; ValueError for a bad host, OSError when it cannot listen."""
    def __init__(self, host: str, port: int, store: Store) -> None: ...
    @property
    def port(self) -> int: ...
    def close(self) -> None: ...

class LoadScraper:
    """Scrapes the load of every instance that declares `"load": {"type": "prometheus"}`
    (rust/load/), fenced by `networks`; ValueError for a bad network, OSError when its
    thread cannot start."""
    def __init__(self, store: Store, networks: list[str]) -> None: ...
    def stop(self) -> None: ...

def load_stats(store: Store) -> tuple[int, int, int, list[tuple[float, bool]]]:
    """(sources scraped now, scrapes, failed scrapes, [(a reading's age in seconds, whether
    it still counts)]): the load scraper and the load table, for /metrics."""

class ChangeSignal:
    """The store's notifier as a file descriptor (rust/core/write_counts.rs): readable once
    any process wrote to the store, or a gate gave notice of an abandoned query, since the
    last `clear`. OSError when it cannot be made."""

    def __init__(self, store: Store) -> None: ...
    def fileno(self) -> int: ...
    def clear(self) -> bool:
        """Makes it unreadable until the next change; whether it was readable."""
    def close(self) -> None:
        """Stops its thread and closes the descriptor."""

class Dns:
    """The DNS interface of one process (rust/dns/): UDP and TCP on `host:port` (SO_REUSEPORT:
    every process joins), authoritative for `domain`, answering from `store`. OSError when
    the port cannot be bound, ValueError for a bad domain or exempt network."""

    def __init__(
        self,
        host: str,
        port: int,
        store: Store,
        domain: str = "registry.",
        ttl: int = 0,
        rate_limit: int = 1000,
        rate_exempt: list[str] = ...,
        threads: int = 1,
    ) -> None: ...
    def stats(self) -> list[tuple[str, int]]:
        """Questions by outcome (answered, nodata, nxdomain, refused, failed, rate_limited)."""
    @property
    def port(self) -> int: ...
    def close(self) -> None:
        """Stops answering."""

def check_dns_options(domain: str, rate_exempt: list[str]) -> str:
    """The domain in canonical form (lowercase, ending in a dot); ValueError naming the
    flag (`--dns-domain`, `--dns-rate-exempt`) whose value the DNS server would refuse."""

class NetPolicy:
    """The networks the server may connect to for one purpose ("probe" or "proxy"): the
    fence of rust/netguard.rs, the proxy's own. Refusals are ValueErrors whose message is
    the instance's statusReason."""

    def __init__(self, cidrs: list[str], purpose: str) -> None: ...
    def allows(self, address: str) -> bool: ...
    def describe(self) -> str: ...
    @property
    def loopback_only(self) -> bool: ...
    def known(self, host: str) -> list[str] | None:
        """The allowed addresses of `host` known without a resolver (an IP address,
        localhost); None when a resolver must be asked; ValueError(reason) if none."""
    def choose(self, host: str, found: list[str]) -> list[str]:
        """What a resolver found for `host`, less what is not allowed; ValueError(reason)."""

def access_line(
    created: float,
    method: str,
    path: str,
    route: str,
    status: int,
    seconds: float,
    token: str | None,
    client: str | None,
) -> str:
    """The access-log line of one request, in the gates' format (rust/edge/access.rs)."""

def authenticate(store: Store, header: str) -> tuple[str, str, str | None, float | None]:
    """(token id, role, slug, expiry in unix seconds) of the token an Authorization header
    names (rust/tokens.rs, cached until the tokens move); ValueError(the 401's message)."""

def query_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Raw query pairs decoded by the gates' rule (rust/reads.rs), grouped by name and
    sorted; ValueError((error, errors)) naming a part that is not percent-encoded UTF-8."""

def path_segment(name: str, raw: str) -> str:
    """A raw path parameter decoded by the gates' rule (rust/reads.rs; `+` stays `+`);
    ValueError((error, errors)) naming it when it is not percent-encoded UTF-8."""

def role_allows(role: str, permission: str) -> bool:
    """Whether `role` grants `permission` (rust/roles.rs; the gates ask the same)."""

def sees_every_slug(role: str) -> bool:
    """Whether a caller of `role` sees every slug's records (admins, proxies)."""

# The store's collections, and each one's unique fields (rust/core/model.rs).
COLLECTIONS: list[str]
UNIQUE_FIELDS: dict[str, list[str]]

# Every permission by its constant's name, and each role with what it grants (rust/roles.rs).
PERMISSIONS: dict[str, str]
ROLES: list[tuple[str, list[str]]]

def parse_url(text: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port or None, path) of an endpoint URL in canonical form (rust/url.rs);
    ValueError saying what is wrong."""

def canonical_host(text: str) -> str:
    """A host name or IP address in canonical form (IPv6 without brackets); ValueError."""

def canonical_ip(text: str) -> str:
    """An IP address as `str(ipaddress.ip_address(text))` writes it; ValueError saying what is
    wrong (not an address, or an IPv6 zone)."""

def blocking_params(index: str | None, wait: str | None) -> tuple[int, float] | None:
    """A blocking query's parameters (the last `index` and `wait` values, decoded): None for
    a plain query, else (index, seconds to wait: 300 by default, at most 600). ValueError
    with (error, errors) naming the bad parameter. The gates apply the same rule."""

def parse_index(text: str) -> int | None:
    """An index as a client sends it: 1 to 19 ASCII digits, else None."""

def lookup_filters(params: list[tuple[str, list[str]]]) -> list[tuple[str, str]]:
    """The store filters of an instance lookup (rust/query.rs), each value in its stored
    form, repeats removed, sorted; ValueError((error, errors)) when refused."""

LOOKUP_FILTERS: list[str]

def pick_query(
    params: list[tuple[str, list[str]]],
) -> tuple[str, str | None, str | None, str | None, list[str], str | None]:
    """A pick's query checked (rust/query.rs): (slug, policy, zone, key, tags sorted and
    distinct, model); ValueError((error, errors)) when refused."""

def canonical_path(path: str) -> str:
    """A URL path of RFC 3986 characters ('' for none or '/'); ValueError."""

def parse_networks(items: list[str]) -> list[str]:
    """Networks in canonical CIDR form, blanks skipped; ValueError naming a bad one."""

def is_sensitive(address: str) -> bool:
    """Whether an address is link-local or a cloud metadata address (any IPv6 spelling)."""

POLICIES: list[str]
LOAD_MIN_INTERVAL_MS: int
LOAD_MAX_INTERVAL_MS: int
LOAD_DEFAULT_INTERVAL_MS: int
PREFIX_HEADER: str
"""The selector's policy names (`select.rs` `Policy::NAMES`)."""
RESERVED_SLUGS: list[str]
"""Slugs that name the registry's own routes (`rules.rs`)."""
SLUG_PATTERN: str
"""A slug as a regular expression (`rules.rs`; `is_slug` is the same rule)."""
ID_PATTERN: str
"""A record id as a regular expression (`rules.rs`; `is_record_id` is the same rule)."""

def is_slug(text: str) -> bool: ...
def is_record_id(text: str) -> bool: ...
def is_registry_route(path: str) -> bool:
    """Whether a request target is one of the registry's own routes rather than the proxy's."""

def route_record(slug: str, body: bytes) -> str:
    """The record to store for `slug`'s proxy settings `body` (JSON; rust/route.rs), every
    field given or defaulted; ValueError(field, message) for the first bad field."""
