"""Endpoint URLs in one canonical form, used by registration, uniqueness, probes and the
proxy. The rule lives in Rust (`rust/url.rs`, asked through `_core`); this module gives
Python its shapes: `Endpoint`, and `UrlError` carrying the rule's message.

The canonical form of an instance or node URL: scheme `http` or `https`; host lower-cased
(a DNS name whose last label is not all digits, a dotted-quad IPv4 address, or a
compressed IPv6 address in brackets); the port only when it is not the scheme's default;
a path of RFC 3986 path characters, or none; no credentials, query or fragment. Anything
else is refused with a message naming what is wrong.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from registry_svc import _core

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LEN = 2048


class UrlError(ValueError):
    """What is wrong with a URL, phrased to follow the field name ("url: ...")."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed canonical URL."""

    scheme: str
    host: str  # DNS name or IP address (IPv6 without brackets)
    port: int | None  # None: the scheme's default port
    path: str  # '' or '/...'

    @functools.cached_property
    def is_ip(self) -> bool:
        return is_ip(self.host)

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.scheme]

    @property
    def netloc(self) -> str:
        """host[:port] as it appears in the URL (and in a Host header)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def is_ip(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (IPv6 without brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def canonical_host(text: str) -> str:
    """A host name or IP address in canonical form (IPv6 without brackets); UrlError else."""
    try:
        return _core.canonical_host(text)
    except ValueError as e:
        raise UrlError(str(e)) from None


@functools.lru_cache(maxsize=4096)
def parse_url(text: str) -> Endpoint:
    """The canonical endpoint of an absolute http(s) URL; UrlError saying what is wrong.
    Cached: a registration parses its URL in the model and again to compose the address,
    and probes parse the same stored URLs again and again."""
    try:
        scheme, host, port, path = _core.parse_url(text)
    except ValueError as e:
        raise UrlError(str(e)) from None
    return Endpoint(scheme, host, port, path)


def canonical_path(path: str) -> str:
    """A URL path of RFC 3986 characters ('' for none or '/'); UrlError else."""
    try:
        return _core.canonical_path(path)
    except ValueError as e:
        raise UrlError(str(e)) from None


def canonical_url(text: str) -> str:
    """`parse_url(text).url`."""
    return parse_url(text).url
