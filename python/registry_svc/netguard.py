"""Which addresses the server may connect to on its own behalf: health probes and proxy
upstreams (`--probe-networks`, `--proxy-networks`).

A registered URL is an instruction to open a connection, and a service token may register
any URL, so without a fence a health check is a port scanner whose results come back in
`statusReason`, and a made-up host name is a DNS query leaving the machine. The fence:
- an IP address outside the allowed networks is never connected to;
- `localhost` is 127.0.0.1 / ::1 without asking a resolver;
- when every allowed network is loopback, no other host name is resolved at all;
- otherwise a name is resolved, and only its addresses inside the networks are used. The
  connection then goes to the address that was checked, never to the name again, so a
  second resolution cannot answer differently (DNS rebinding);
- link-local addresses (169.254.0.0/16, fe80::/10, where clouds serve instance metadata and
  credentials) and the other metadata addresses are reached only when a network that names
  them is given (`--proxy-networks 0.0.0.0/0,169.254.169.254/32`), never through a wider one
  such as 0.0.0.0/0. Without this a service token could register 169.254.169.254 and anyone
  could read the machine's cloud credentials through the public proxy.
Refusals are `Refused` errors whose message is the instance's `statusReason`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from registry_svc import _core, urls

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOOPBACKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Link-local ranges, and cloud metadata addresses outside them (AWS's IPv6 one, Alibaba's).
SENSITIVE = tuple(
    ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)
LOCALHOST = ("127.0.0.1", "::1")


class Refused(Exception):
    """A connection the network policy does not allow; the message says why."""


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (`10.0.0.0/8`, `::1/128`, or a bare address); ValueError naming a bad one."""
    networks = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"'{text}' is not a network in CIDR form (e.g. 127.0.0.0/8)") from None
    if not networks:
        raise ValueError("give at least one network (e.g. 127.0.0.0/8,::1/128)")
    return tuple(networks)


def is_sensitive(address: str) -> bool:
    """Whether `address` is link-local or a cloud metadata address (IPv4-mapped too)."""
    ip = _unmapped(ipaddress.ip_address(address))
    return any(ip.version == s.version and ip in s for s in SENSITIVE)


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address an IPv6 spelling carries (mapped, compatible, NAT64, 6to4): the
    Rust fence's rule (`netguard.rs` `unmapped`), not a second copy of it."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    return ipaddress.ip_address(_core.unmapped_address(str(ip)))


def _names_sensitive(network: IPNetwork) -> bool:
    return any(network.version == s.version and network.subnet_of(s) for s in SENSITIVE)  # type: ignore[arg-type]


def _is_loopback(network: IPNetwork) -> bool:
    return any(network.version == lo.version and network.subnet_of(lo) for lo in _LOOPBACKS)  # type: ignore[arg-type]


@dataclass(frozen=True)
class NetworkPolicy:
    """The networks one kind of outgoing connection (probes, or proxying) may reach."""

    networks: tuple[IPNetwork, ...]
    purpose: str  # "probe" or "proxy", for messages

    @classmethod
    def of(cls, cidrs: Iterable[str], purpose: str) -> NetworkPolicy:
        return cls(parse_networks(cidrs), purpose)

    @property
    def loopback_only(self) -> bool:
        return all(_is_loopback(n) for n in self.networks)

    def describe(self) -> str:
        return ", ".join(str(n) for n in self.networks)

    def allows(self, address: str) -> bool:
        ip = _unmapped(ipaddress.ip_address(address))
        within = [n for n in self.networks if ip.version == n.version and ip in n]
        if is_sensitive(str(ip)):
            return any(_names_sensitive(n) for n in within)
        return bool(within)

    def _outside(self, what: str) -> Refused:
        return Refused(f"{what} is outside the {self.purpose} networks ({self.describe()}); not connected")

    def _refused_address(self, address: str) -> Refused:
        if is_sensitive(address):
            return Refused(
                f"address {address} is link-local or a cloud metadata address; not connected unless a "
                f"{self.purpose} network names it"
            )
        return self._outside(f"address {address}")

    def _literal(self, host: str) -> list[str] | None:
        """The addresses of `host` known without a resolver, or None if it needs one."""
        if urls.is_ip(host):
            if not self.allows(host):
                raise self._refused_address(host)
            return [host]
        if host == "localhost":
            allowed = [a for a in LOCALHOST if self.allows(a)]
            if not allowed:
                raise self._outside("localhost")
            return allowed
        if self.loopback_only:
            raise Refused(
                f"host '{host}' not resolved: the {self.purpose} networks ({self.describe()}) are loopback only"
            )
        return None

    def _filter(self, host: str, infos: list[tuple[object, ...]]) -> list[str]:
        found = [str(info[4][0]) for info in infos]  # type: ignore[index]
        allowed = [a for a in dict.fromkeys(found) if self.allows(a)]
        if not allowed:
            raise self._outside(f"host '{host}' ({', '.join(dict.fromkeys(found))})")
        return allowed

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host` this policy lets us connect to; Refused if none."""
        known = self._literal(host)
        if known is not None:
            return known
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise Refused(f"cannot resolve host '{host}': {e.strerror or e}") from None
        return self._filter(host, infos)  # type: ignore[arg-type]
