"""Server settings: command-line flags and the `OB_*` environment, handed to the worker
processes through the environment."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry_svc import _core, urls

if TYPE_CHECKING:
    from registry_svc.etcd import Client

DEFAULT_PORT = 11337
DEFAULT_MAP_SIZE = 8 << 30
DEFAULT_MAX_PROXY_BODY = 16 << 20
# The largest body of a request to the registry's own routes (413 beyond).
MAX_API_BODY = 1 << 20
POLICIES = tuple(_core.POLICIES)  # the selector's names (rust/core/select.rs)
# Where the server may connect on its own behalf (health probes, proxy upstreams) unless
# told otherwise: this machine only. See `rust/netguard.rs`.
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
_CHILD_ENV = "REGISTRY_SVC_SETTINGS"


@dataclass(frozen=True)
class Settings:
    """Everything a server process needs to know about its configuration."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: str = str(Path.home() / ".registry-svc")
    processes: int = 1
    workers: int = 2
    map_size: int = DEFAULT_MAP_SIZE
    heartbeat_seconds: float = 10.0
    default_policy: str = "round_robin"
    slug_policies: dict[str, str] = field(default_factory=dict)
    eject_seconds: float = 30.0
    self_url: str = ""
    node_id: str | None = None
    region: str | None = None
    availability_zone: str | None = None
    probe_networks: tuple[str, ...] = LOOPBACK_NETWORKS
    proxy_networks: tuple[str, ...] = LOOPBACK_NETWORKS
    max_proxy_body_bytes: int = DEFAULT_MAX_PROXY_BODY
    # How long the proxy waits for an upstream's response head, and between two pieces
    # of a body, before it gives up (504, or a cut body).
    proxy_timeout_seconds: float = 60.0
    log_level: str = "info"
    # "text", or "json": JSON log lines and an access log line per request.
    log_format: str = "text"
    # "open": /metrics needs no token; "token": it needs node:view.
    metrics: str = "open"
    # Cluster mode: etcd client endpoints (`host:port`) and the key prefix; none = the
    # embedded single-machine store.
    etcd_endpoints: tuple[str, ...] = ()
    etcd_prefix: str = "/registry-svc/"
    # The loopback port the Robyn workers listen on behind the gate (set at start).
    internal_port: int = 0
    # The data plane's port (lookups, picks, the proxy; every process holds it with
    # SO_REUSEPORT): None = the API port + 1 when that is free, 0 = none.
    data_port: int | None = None
    # Client connections each gate holds at once (503 past it); 0 = a third of the
    # process's descriptor limit.
    max_connections: int = 0
    # The DNS interface (rust/dns/): UDP and TCP port (0 = off; every process holds it with
    # SO_REUSEPORT), its domain, answers' TTL, and UDP answers per second per client with
    # the networks that are not limited.
    dns_port: int = 0
    dns_domain: str = "registry."
    dns_ttl: int = 0
    dns_rate_limit: int = 1000
    dns_rate_exempt: tuple[str, ...] = LOOPBACK_NETWORKS
    # Envoy's external processor, the endpoint picker (rust/epp/): its gRPC port (0 = off),
    # held by the supervisor.
    epp_port: int = 0

    @property
    def clustered(self) -> bool:
        return bool(self.etcd_endpoints)

    @property
    def admin_token_path(self) -> Path:
        return Path(self.data_dir) / "admin.token"

    @property
    def store_path(self) -> Path:
        return Path(self.data_dir) / "store"

    @property
    def balancer_state_path(self) -> Path:
        """In-flight counts and outlier ejections, shared by the server's processes
        (rust/core/shared.rs); the supervisor starts it empty."""
        return Path(self.data_dir) / "balancer.state"

    def open_gate(
        self, store: _core.Store, port: int, workers_port: int, threads: int, *, data_plane: bool = False
    ) -> _core.Front:
        """A gate (rust/edge/) on `port`, in front of the workers on `workers_port`, with
        this configuration's limits and proxy: the API port's (OSError if it is taken) or,
        with `data_plane`, this process's share of the data port. With the access log on,
        the API port leaves reads to the workers, which log them; a gate logs what its
        proxy forwards."""
        json_log = self.log_format == "json"
        return _core.Front(
            self.host, port, workers_port, MAX_API_BODY, self.max_proxy_body_bytes,
            threads=threads, store=store, data_plane=data_plane, answer_reads=data_plane or not json_log,
            access_log=json_log, proxy_networks=list(self.proxy_networks), proxy_timeout=self.proxy_timeout_seconds,
            max_connections=self.max_connections, api_port=self.port,
        )  # fmt: skip

    def open_dns(self, store: _core.Store, threads: int) -> _core.Dns | None:
        """This process's share of the DNS port (rust/dns/), or None when it is off."""
        if not self.dns_port:
            return None
        return _core.Dns(
            self.host, self.dns_port, store, domain=self.dns_domain, ttl=self.dns_ttl,
            rate_limit=self.dns_rate_limit, rate_exempt=list(self.dns_rate_exempt), threads=threads,
        )  # fmt: skip

    def open_store(self) -> _core.Store:
        """This process's store handle, with the load-balancing settings: the local LMDB
        store, or in cluster mode its replica with writes going to etcd."""
        options: dict[str, Any] = {
            "default_policy": self.default_policy,
            "slug_policies": self.slug_policies,
            "eject_seconds": self.eject_seconds,
            "eject_max_seconds": max(300.0, self.eject_seconds * 10),
            "balancer_state": str(self.balancer_state_path),
        }
        if self.clustered:
            options.update(etcd=self.etcd.core, etcd_layout=self.etcd_layout())
        return _core.Store(str(self.store_path), self.map_size, **options)

    @functools.cached_property
    def etcd(self) -> Client:
        """This process's client of the cluster's etcd (cluster mode): one for the store's
        writes, the replica, membership and bootstrap, so they share what it learned of
        which endpoint answers."""
        from registry_svc.etcd import Client

        return Client(list(self.etcd_endpoints))

    def etcd_layout(self) -> _core.EtcdLayout:
        """Where this registry's keys live in etcd (cluster mode)."""
        return _core.EtcdLayout(self.etcd_prefix)

    def describe(self) -> str:
        """The configuration in one log line (no secrets: the admin token only by path)."""
        return (
            f"processes={self.processes} workers={self.workers} data_dir={self.data_dir} "
            f"map_size_mib={self.map_size >> 20} self_url={self.self_url} node_id={self.node_id or '-'} "
            f"region={self.region or '-'} zone={self.availability_zone or '-'} policy={self.default_policy} "
            f"slug_policies={self.slug_policies or '-'} heartbeat_seconds={self.heartbeat_seconds:g} "
            f"eject_seconds={self.eject_seconds:g} probe_networks={','.join(self.probe_networks)} "
            f"proxy_networks={','.join(self.proxy_networks)} max_proxy_body_mib={self.max_proxy_body_bytes >> 20} "
            f"proxy_timeout_seconds={self.proxy_timeout_seconds:g} "
            f"log_level={self.log_level} log_format={self.log_format} metrics={self.metrics} "
            f"data_port={self.data_port if self.data_port is not None else 'default'} "
            + (
                f"dns_port={self.dns_port} dns_domain={self.dns_domain} dns_ttl={self.dns_ttl} "
                f"dns_rate_limit={self.dns_rate_limit} dns_rate_exempt={','.join(self.dns_rate_exempt) or '-'}"
                if self.dns_port
                else "dns_port=off"
            )
            + (f" etcd={','.join(self.etcd_endpoints)} etcd_prefix={self.etcd_prefix}" if self.clustered else "")
        )

    def to_env(self) -> dict[str, str]:
        """The settings as one environment variable for a worker process."""
        import orjson

        return {_CHILD_ENV: orjson.dumps(asdict(self)).decode()}

    @classmethod
    def from_env(cls) -> Settings:
        """The settings a supervisor passed down with `to_env`."""
        import orjson

        raw = os.environ.get(_CHILD_ENV)
        if raw is None:
            raise RuntimeError(f"{_CHILD_ENV} is not set: start the server with `registry-svc serve`")
        fields = orjson.loads(raw)
        for key in ("probe_networks", "proxy_networks", "etcd_endpoints", "dns_rate_exempt"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


def resolve(
    host: str,
    port: int,
    data_dir: str | None,
    processes: int,
    workers: int,
    map_size: int,
    heartbeat_seconds: float = 10.0,
    default_policy: str = "round_robin",
    slug_policies: dict[str, str] | None = None,
    eject_seconds: float = 30.0,
    probe_networks: tuple[str, ...] = LOOPBACK_NETWORKS,
    proxy_networks: tuple[str, ...] | None = None,
    max_proxy_body_bytes: int = DEFAULT_MAX_PROXY_BODY,
    log_level: str = "info",
    proxy_timeout_seconds: float = 60.0,
    etcd_endpoints: tuple[str, ...] = (),
    etcd_prefix: str = "/registry-svc/",
    log_format: str = "text",
    metrics: str = "open",
    data_port: int | None = None,
    max_connections: int = 0,
) -> Settings:
    """Builds the settings from flags and the `OB_*` variables.

    `OB_SELF_URL` defaults to this server's own address; `http://` is added when missing.
    Raises `urls.UrlError` when it is not a valid URL.
    """
    self_url = os.environ.get("OB_SELF_URL", "").strip()
    if not self_url:
        advertised = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
        self_url = f"http://{advertised}:{port}"
    elif "://" not in self_url:
        self_url = f"http://{self_url}"
    return Settings(
        host=host,
        port=port,
        data_dir=str(Path(data_dir).expanduser().resolve()) if data_dir else Settings.data_dir,
        processes=processes,
        workers=workers,
        map_size=map_size,
        heartbeat_seconds=heartbeat_seconds,
        default_policy=default_policy,
        slug_policies=dict(slug_policies or {}),
        eject_seconds=eject_seconds,
        self_url=urls.canonical_url(self_url),
        node_id=os.environ.get("OB_NODE_ID") or None,
        region=os.environ.get("OB_REGION") or None,
        availability_zone=os.environ.get("OB_AVAILABILITY_ZONE") or None,
        probe_networks=probe_networks,
        proxy_networks=probe_networks if proxy_networks is None else proxy_networks,
        max_proxy_body_bytes=max_proxy_body_bytes,
        proxy_timeout_seconds=proxy_timeout_seconds,
        log_level=log_level,
        etcd_endpoints=etcd_endpoints,
        etcd_prefix=etcd_prefix,
        log_format=log_format,
        metrics=metrics,
        data_port=data_port,
        max_connections=max_connections,
    )
