"""`registry-svc` / `python -m registry_svc`: the server command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from registry_svc import _core, about, cluster_import, etcd, etcd_keys
from registry_svc import settings as settings_mod
from registry_svc.supervisor import serve
from registry_svc.urls import UrlError

LOG_LEVELS = ("debug", "info", "warning", "error")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="registry-svc", description="Service registry and discovery server.")
    p.add_argument("--version", action="version", version=f"registry-svc {about.describe(about.version_info())}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Node identity comes from OB_SELF_URL, OB_NODE_ID, OB_REGION, OB_AVAILABILITY_ZONE.",
    )
    s.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=settings_mod.DEFAULT_PORT, help="listen port (default 11337)")
    s.add_argument(
        "--data-port",
        type=int,
        default=None,
        help="the data plane's port: instance lookups, picks and the proxy, served in Rust by every process "
        "(default: --port + 1 when free; 0 = off)",
    )
    s.add_argument("--data-dir", default=None, help="data directory (default ~/.registry-svc)")
    s.add_argument("--processes", type=int, default=1, help="server processes sharing the store (default 1)")
    s.add_argument("--workers", type=int, default=2, help="worker threads per process (default 2)")
    s.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=10.0,
        help="node heartbeat interval; a node silent for 3 intervals turns Unhealthy (default 10)",
    )
    _balancing_flags(s)
    _dns_flags(s)
    _epp_flags(s)
    s.add_argument(
        "--log-level",
        default=os.environ.get("OB_LOG_LEVEL", "info"),
        choices=LOG_LEVELS,
        help="log detail: debug, info (status transitions, tokens created and revoked, start-up), "
        "warning, error (default info; env OB_LOG_LEVEL)",
    )
    s.add_argument(
        "--log-format",
        default=os.environ.get("OB_LOG_FORMAT", "text"),
        choices=("text", "json"),
        help="text, or json: every log line a JSON object, plus an access log line per request (method, path, "
        "status, duration, token id); the gate then leaves lookups to the workers so each is logged "
        "(default text; env OB_LOG_FORMAT)",
    )
    s.add_argument(
        "--metrics",
        default=os.environ.get("OB_METRICS", "open"),
        choices=("open", "token"),
        help="GET /metrics: open, or token (needs node:view) (default open; env OB_METRICS)",
    )
    s.add_argument(
        "--etcd",
        default=os.environ.get("OB_ETCD_ENDPOINTS"),
        metavar="http://H:P[,http://H:P...]",
        help="cluster mode: etcd client endpoints; etcd holds the registry and this server keeps a local replica "
        "that serves reads (default: none, the embedded single-machine store; env OB_ETCD_ENDPOINTS)",
    )
    s.add_argument(
        "--etcd-prefix",
        default=os.environ.get("OB_ETCD_PREFIX", etcd_keys.DEFAULT_PREFIX),
        help=f"key prefix of this registry in etcd (default {etcd_keys.DEFAULT_PREFIX}; env OB_ETCD_PREFIX)",
    )
    s.add_argument(
        "--map-size-mib",
        type=int,
        default=settings_mod.DEFAULT_MAP_SIZE >> 20,
        help="LMDB map size in MiB: the most the store can hold (default 8192; disk is used only as filled)",
    )
    _cluster_parser(sub)
    return p


def _balancing_flags(s: argparse.ArgumentParser) -> None:
    """`serve`'s flags for load balancing, the proxy and the connection cap."""
    s.add_argument(
        "--policy",
        default="round_robin",
        choices=settings_mod.POLICIES,
        help="default load-balancing policy of pick and the proxy (default round_robin)",
    )
    s.add_argument(
        "--slug-policy",
        action="append",
        default=[],
        metavar="SLUG=POLICY",
        help="load-balancing policy for one slug; repeatable (e.g. --slug-policy user-svc=least_request)",
    )
    s.add_argument(
        "--eject-seconds",
        type=float,
        default=30.0,
        help="how long the proxy ejects an instance after 5 consecutive failures; doubles on repeat (default 30)",
    )
    s.add_argument(
        "--probe-networks",
        default=os.environ.get("OB_PROBE_NETWORKS", ",".join(settings_mod.LOOPBACK_NETWORKS)),
        metavar="CIDR[,CIDR...]",
        help="networks health probes may connect to; an instance outside them turns Unhealthy unprobed, and "
        "with loopback networks only no host name but localhost is resolved "
        "(default 127.0.0.0/8,::1/128; env OB_PROBE_NETWORKS; 0.0.0.0/0,::/0 allows any but link-local and metadata addresses, which a network must name)",
    )
    s.add_argument(
        "--proxy-networks",
        default=os.environ.get("OB_PROXY_NETWORKS"),
        metavar="CIDR[,CIDR...]",
        help="networks the proxy may forward to (default: the probe networks; env OB_PROXY_NETWORKS)",
    )
    s.add_argument(
        "--max-proxy-body-mib",
        type=int,
        default=settings_mod.DEFAULT_MAX_PROXY_BODY >> 20,
        help="largest request body the proxy accepts, in MiB; larger ones get 413 before they are read "
        "(default 16; the registry's own routes take at most 1 MiB)",
    )
    s.add_argument(
        "--proxy-timeout-seconds",
        type=float,
        default=60.0,
        help="how long the proxy waits for an upstream's response, and between two pieces of a body (default 60)",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        default=0,
        metavar="N",
        help="client connections each port holds at once; a new one past it gets 503 and is closed "
        "(default: a third of the open-files limit)",
    )


def _epp_flags(s: argparse.ArgumentParser) -> None:
    """`serve`'s flag for Envoy's external processor."""
    s.add_argument(
        "--epp-port",
        type=int,
        default=0,
        help="serve Envoy's ext_proc endpoint picker (gRPC) on this port: the Gateway API Inference "
        "Extension's x-gateway-destination-endpoint, chosen like pick (default 0: off)",
    )


def _dns_flags(s: argparse.ArgumentParser) -> None:
    """`serve`'s flags for the DNS interface."""
    s.add_argument(
        "--dns-port",
        type=int,
        default=0,
        help="serve DNS on this UDP and TCP port: <slug>.service.<domain> and the other Consul-style names, "
        "answered by every process from the store (default 0: off)",
    )
    s.add_argument("--dns-domain", default="registry.", help="the DNS domain answered for (default registry.)")
    s.add_argument(
        "--dns-ttl", type=int, default=0, help="TTL of DNS answers in seconds (default 0: not cached, as Consul)"
    )
    s.add_argument(
        "--dns-rate-limit",
        type=int,
        default=1000,
        metavar="N",
        help="UDP answers per second per client address (IPv6: per /64); past it every second answer is an empty "
        "truncated one (the client retries over TCP) and the rest are dropped (default 1000; 0: no limit)",
    )
    s.add_argument(
        "--dns-rate-exempt",
        default=",".join(settings_mod.LOOPBACK_NETWORKS),
        metavar="CIDR[,CIDR...]",
        help="clients not rate limited (default 127.0.0.0/8,::1/128: a forged loopback source cannot arrive from "
        "the network; '' for none)",
    )


def _cluster_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`cluster import`."""
    c = sub.add_parser("cluster", help="cluster tools").add_subparsers(dest="cluster_command", required=True)
    imp = c.add_parser(
        "import",
        help="load a single-machine store into etcd",
        description="Load every record of a single-machine data dir into an empty etcd prefix, so that cluster "
        "servers started on new data dirs serve them. The admin token of DIR stays valid.",
    )
    imp.add_argument("--data-dir", required=True, help="the single-machine data directory to read")
    imp.add_argument("--etcd", required=True, metavar="http://H:P[,http://H:P...]", help="etcd client endpoints")
    imp.add_argument(
        "--etcd-prefix", default=etcd_keys.DEFAULT_PREFIX, help=f"key prefix (default {etcd_keys.DEFAULT_PREFIX})"
    )


class FlagError(Exception):
    """A flag's value the server refuses to start with (exit status 2)."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "cluster":
        logging.basicConfig(level="INFO", format="%(message)s")
        return cluster_import.main(args.data_dir, args.etcd, args.etcd_prefix)
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    if args.log_format == "json":
        from registry_svc.access import use_json_logs

        use_json_logs()
    try:
        settings = checked_settings(args)
    except FlagError as e:
        print(f"registry-svc: {e}", file=sys.stderr)
        return 2
    return serve(settings)


def checked_settings(args: argparse.Namespace) -> settings_mod.Settings:
    """The settings the flags describe; FlagError naming the first flag that is wrong."""
    _check_numbers(args)
    slug_policies = _slug_policies(args.slug_policy)
    dns_exempt = tuple(n.strip() for n in args.dns_rate_exempt.split(",") if n.strip())
    try:
        dns_domain = _core.check_dns_options(args.dns_domain, list(dns_exempt))
    except ValueError as e:
        raise FlagError(str(e)) from None
    networks: dict[str, tuple[str, ...]] = {}
    for flag, value in (("--probe-networks", args.probe_networks), ("--proxy-networks", args.proxy_networks)):
        if value is not None:
            try:
                networks[flag] = tuple(_core.parse_networks(value.split(",")))
            except ValueError as e:
                raise FlagError(f"{flag}: {e}") from None
    etcd_endpoints: tuple[str, ...] = ()
    if args.etcd:
        try:
            etcd_endpoints = tuple(etcd.parse_endpoints(args.etcd))
        except ValueError as e:
            raise FlagError(f"--etcd: {e}") from None
    if problem := etcd_keys.prefix_problem(args.etcd_prefix):
        raise FlagError(f"--etcd-prefix {problem}")
    try:
        settings = settings_mod.resolve(
            args.host,
            args.port,
            args.data_dir,
            args.processes,
            args.workers,
            args.map_size_mib << 20,
            args.heartbeat_seconds,
            args.policy,
            slug_policies,
            args.eject_seconds,
            probe_networks=networks["--probe-networks"],
            proxy_networks=networks.get("--proxy-networks"),
            max_proxy_body_bytes=args.max_proxy_body_mib << 20,
            proxy_timeout_seconds=args.proxy_timeout_seconds,
            log_level=args.log_level,
            etcd_endpoints=etcd_endpoints,
            etcd_prefix=args.etcd_prefix,
            log_format=args.log_format,
            metrics=args.metrics,
            data_port=args.data_port,
            max_connections=args.max_connections,
        )
    except UrlError as e:
        raise FlagError(f"OB_SELF_URL: {e}") from None
    return dataclasses.replace(
        settings,
        dns_port=args.dns_port,
        dns_domain=dns_domain,
        dns_ttl=args.dns_ttl,
        dns_rate_limit=args.dns_rate_limit,
        dns_rate_exempt=dns_exempt,
        epp_port=args.epp_port,
    )


def _check_numbers(args: argparse.Namespace) -> None:
    """Ports, counts and durations within their ranges."""
    if not 1 <= args.port <= 65535:
        raise FlagError(f"--port must be 1-65535, got {args.port}")
    if args.data_port is not None and (not 0 <= args.data_port <= 65535 or args.data_port == args.port):
        raise FlagError(f"--data-port must be 0 (off) or 1-65535 and not --port, got {args.data_port}")
    if args.processes < 1 or args.workers < 1 or args.map_size_mib < 1 or args.max_proxy_body_mib < 1:
        raise FlagError("--processes, --workers, --map-size-mib and --max-proxy-body-mib must be at least 1")
    if not 0.1 <= args.heartbeat_seconds <= 3600:
        raise FlagError("--heartbeat-seconds must be between 0.1 and 3600")
    if not 0.1 <= args.proxy_timeout_seconds <= 3600:
        raise FlagError("--proxy-timeout-seconds must be between 0.1 and 3600")
    if args.max_connections < 0:
        raise FlagError("--max-connections must be 0 (derived) or more")
    if not 0 <= args.dns_port <= 65535 or (args.dns_port and args.dns_port == args.port):
        raise FlagError(f"--dns-port must be 0 (off) or 1-65535 and not --port, got {args.dns_port}")
    if not 0 <= args.epp_port <= 65535 or (args.epp_port and args.epp_port in (args.port, args.data_port)):
        raise FlagError(f"--epp-port must be 0 (off) or 1-65535 and not --port or --data-port, got {args.epp_port}")
    if not 0 <= args.dns_ttl <= 2**31 - 1 or args.dns_rate_limit < 0:
        raise FlagError("--dns-ttl must be 0 to 2147483647 and --dns-rate-limit 0 or more")
    if not 0.1 <= args.eject_seconds <= 3600:
        raise FlagError("--eject-seconds must be between 0.1 and 3600")


def _slug_policies(items: list[str]) -> dict[str, str]:
    """`--slug-policy SLUG=POLICY`, repeated."""
    slug_policies: dict[str, str] = {}
    for item in items:
        slug, _, policy = item.partition("=")
        if not slug or policy not in settings_mod.POLICIES:
            raise FlagError(
                f"--slug-policy wants SLUG=POLICY with POLICY in {', '.join(settings_mod.POLICIES)}; got '{item}'"
            )
        slug_policies[slug] = policy
    return slug_policies


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
