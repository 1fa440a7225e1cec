"""Where an instance is: its address fields from a registration (a URL, or parts), and
the addresses the proxy must never be given (this registry itself, and link-local or
cloud metadata addresses unless the proxy networks name them)."""

from __future__ import annotations

import ipaddress
from typing import Any

import psutil

from registry_svc import _core, models, urls
from registry_svc.errors import field_error
from registry_svc.settings import Settings


def parse_address(body: models.InstanceRegistration) -> dict[str, Any]:
    """The address fields, from `url` or composed from scheme/host/ip/port/path, with `url`
    in canonical form (see `urls.py`) and `port` always the effective port.

    Parts given beside a `url` must agree with it.
    """
    given: dict[str, Any] = {
        key: value
        for key, value in (
            ("scheme", body.scheme), ("host", body.host), ("ip", body.ip), ("port", body.port),
            ("path", None if body.path is None else body.path or None),
        )
        if value is not None
    }  # fmt: skip
    # A typed 1Backend client must send `url` and sends "" when it registers by parts.
    if body.url is not None and not (body.url == "" and ("host" in given or "ip" in given)):
        if not body.url:
            raise field_error("url", "must not be empty")
        endpoint = urls.parse_url(body.url)  # checked by the model (and cached): cannot fail
        derived = address_fields(endpoint, given.get("ip"))
        for key in ("scheme", "host", "port", "path"):
            if key in given and given[key] != derived[key]:
                raise field_error(key, f"'{given[key]}' does not match url '{endpoint.url}'")
        if "ip" in given and endpoint.is_ip and given["ip"] != derived["ip"]:
            raise field_error("ip", f"'{given['ip']}' does not match url '{endpoint.url}'")
        return derived

    if "host" not in given and "ip" not in given:
        raise field_error("url", "required (or give host or ip, with scheme, port and path)")
    scheme = given.get("scheme", "http")
    port = given.get("port", urls.DEFAULT_PORTS[scheme])
    host = given.get("host") or given["ip"]
    endpoint = urls.Endpoint(
        scheme, host, None if port == urls.DEFAULT_PORTS[scheme] else port, given.get("path") or ""
    )
    return address_fields(endpoint, given.get("ip"))


def address_fields(endpoint: urls.Endpoint, ip: str | None) -> dict[str, Any]:
    """An instance's address fields for `endpoint` (`ip` kept beside a host name)."""
    return {
        "url": endpoint.url,
        "scheme": endpoint.scheme,
        "host": None if endpoint.is_ip else endpoint.host,
        "ip": endpoint.host if endpoint.is_ip else ip,
        "port": endpoint.effective_port,
        "path": endpoint.path or None,
    }


def refuse_unsafe_address(fields: dict[str, Any], field: str, settings: Settings) -> None:
    """Refuses (400 naming `field`) an instance the proxy must never forward to: this
    registry itself (a proxied request would come back to it), and a link-local or cloud
    metadata address unless the proxy networks name it (`rust/netguard.rs`)."""
    address = fields["ip"] or fields["host"]
    own_ports = {settings.port, settings.data_port} - {None, 0}
    if fields["port"] in own_ports and is_own_address(address, settings):
        raise field_error(field, f"'{fields['url']}' is this registry's own address; requests to it would loop")
    ip = fields["ip"]
    if (
        ip is not None
        and _core.is_sensitive(ip)
        and not _core.NetPolicy(list(settings.proxy_networks), "proxy").allows(ip)
    ):
        raise field_error(
            field,
            f"{ip} is a link-local or cloud metadata address; registering it needs a --proxy-networks entry that "
            "names it (e.g. 169.254.169.254/32)",
        )


_own_addresses: dict[tuple[str, str], frozenset[str]] = {}


def is_own_address(address: str, settings: Settings) -> bool:
    """Whether `address` (a host or an IP in any spelling: `[::ffff:127.0.0.1]`, `0.0.0.0`,
    which connects to this machine) reaches this registry on its port."""
    if urls.is_ip(address):
        unmapped = ipaddress.ip_address(_core.unmapped_address(address))
        if unmapped.is_unspecified:
            return True
        if unmapped.is_loopback and settings.host in ("0.0.0.0", "::", ""):
            return True
        address = str(unmapped)
    return address in own_addresses(settings)


def own_addresses(settings: Settings) -> frozenset[str]:
    """The hosts and addresses this registry answers on (with its port): loopback, its
    listen address, its advertised URL's host, and every interface address when it listens
    on all of them."""
    key = (settings.host, settings.self_url)
    if key not in _own_addresses:
        found = {"127.0.0.1", "::1", "localhost", settings.host}
        if settings.self_url:
            found.add(urls.parse_url(settings.self_url).host)
        if settings.host in ("0.0.0.0", "::", ""):
            found |= {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
        _own_addresses[key] = frozenset(found)
    return _own_addresses[key]
