"""The Python implementation of the canonical URL form that urls.py had before the rule
moved to Rust (rust/url.rs), kept unchanged as the oracle of tests/test_rules.py: the Rust
rule must answer exactly as it did. (Formerly: Endpoint URLs in one canonical form.)

The canonical form of an instance or node URL:
- scheme `http` or `https`, lower-cased;
- host lower-cased: a DNS name (labels of letters, digits and '-', at most 63 characters
  each, 253 in all, the last label not all digits), an IPv4 address in dotted-quad form,
  or an IPv6 address in brackets, compressed (`[::1]`);
- the port only when it is not the scheme's default (`http://h:80` is `http://h`);
- a path of RFC 3986 path characters (percent-escapes allowed), or none; `/` alone is none;
- no user:password@, no query string, no fragment.

Anything else is refused with a message naming what is wrong, so that two spellings of
one endpoint can never become two instances, and the address that is probed is the one
that is proxied to.
"""

from __future__ import annotations

import functools
import ipaddress
import re

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LEN = 2048

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/]*)(?P<path>.*)$", re.DOTALL)
_AUTHORITY = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<name>[^:\[\]]*))(?::(?P<port>[0-9]*))?$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# RFC 3986 pchar plus '/': unreserved, sub-delims, ':', '@', and %XX escapes.
_PATH = re.compile(r"^(?:/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*)*$")


# The shapes are today's (registry_svc.urls); the rule below is the old one.
from registry_svc.urls import Endpoint, UrlError  # noqa: E402


def canonical_host(text: str) -> str:
    """A host name or IP address in canonical form (IPv6 without brackets); UrlError else."""
    if ":" in text:
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            raise UrlError(f"'{text}' is not a valid IPv6 address") from None
        if address.scope_id:
            raise UrlError("an IPv6 zone (%...) is not allowed")
        return str(address)
    lowered = text.lower()
    try:
        return str(ipaddress.IPv4Address(lowered))
    except ValueError:
        pass
    if not lowered:
        raise UrlError("must include a host")
    if len(lowered) > 253:
        raise UrlError("host name is longer than 253 characters")
    labels = lowered.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise UrlError(
                f"'{text}' is not a valid host name (dot-separated labels of letters, digits and '-', "
                "1-63 characters each, not starting or ending with '-')"
            )
    if labels[-1].isdigit():
        # `1.2.3` or `2130706433` would be read as IPv4 by resolvers: refuse the ambiguity.
        raise UrlError(f"'{text}' is neither an IPv4 address nor a host name")
    return lowered


@functools.lru_cache(maxsize=4096)
def parse_url(text: str) -> Endpoint:
    """The canonical endpoint of an absolute http(s) URL; UrlError saying what is wrong.
    Cached: a registration parses its URL in the model and again to compose the address,
    and probes and the proxy parse the same stored URLs again and again."""
    if len(text) > MAX_URL_LEN:
        raise UrlError(f"must be at most {MAX_URL_LEN} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UrlError("must not contain whitespace or control characters")
    match = _URL.match(text)
    if match is None:
        raise UrlError(f"must be an absolute http:// or https:// URL, got '{text}'")
    scheme = match["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlError(f"must be an http:// or https:// URL, got '{text}'")
    authority, path = match["authority"], match["path"]
    if "?" in authority or "?" in path or "#" in authority or "#" in path:
        raise UrlError("must not have a query string or fragment")
    if "@" in authority:
        raise UrlError("must not contain credentials (user:password@)")
    parts = _AUTHORITY.match(authority)
    if parts is None:
        raise UrlError(f"has an invalid host or port: '{authority}'")
    raw_host = parts["v6"] if parts["v6"] is not None else parts["name"]
    if parts["v6"] is not None and ":" not in raw_host:
        raise UrlError(f"'[{raw_host}]' is not a bracketed IPv6 address")
    host = canonical_host(raw_host)
    port: int | None = None
    if parts["port"] is not None:
        if not parts["port"] or int(parts["port"]) == 0 or int(parts["port"]) > 65535:
            raise UrlError("has an invalid port (must be 1-65535)")
        port = int(parts["port"])
        if port == DEFAULT_PORTS[scheme]:
            port = None
    return Endpoint(scheme, host, port, canonical_path(path))


def canonical_path(path: str) -> str:
    """A URL path of RFC 3986 characters ('' for none or '/'); UrlError else."""
    if path in ("", "/"):
        return ""
    if not path.startswith("/"):
        raise UrlError("path must start with '/'")
    if "?" in path or "#" in path:
        raise UrlError("must not have a query string or fragment")
    if not _PATH.match(path):
        raise UrlError("path may contain only letters, digits, '/', percent-escapes (%XX) and -._~!$&'()*+,;=:@")
    return path


def canonical_url(text: str) -> str:
    """`parse_url(text).url`."""
    return parse_url(text).url
