"""Field validators. Each raises a 400 `ApiError` naming the field and what is wrong."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from registry_svc import urls
from registry_svc.errors import ApiError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Ids: what the store accepts, minus characters that are awkward in URLs and shells.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_SLUG = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")


def fail(field: str, problem: str) -> ApiError:
    """The 400 error for `field`."""
    return ApiError(400, f"{field}: {problem}")


def reject_unknown(obj: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuses fields outside `allowed`, naming the first one."""
    allowed_set = set(allowed)
    for key in obj:
        if key not in allowed_set:
            name = f"{where}.{key}" if where else key
            raise fail(name, "unknown field")


def string(value: Any, field: str, *, max_len: int = 256, allow_empty: bool = False) -> str:
    """A string without control characters, within `max_len`."""
    if not isinstance(value, str):
        raise fail(field, f"must be a string, not {type_name(value)}")
    if not value and not allow_empty:
        raise fail(field, "must not be empty")
    if len(value) > max_len:
        raise fail(field, f"must be at most {max_len} characters")
    if _CONTROL.search(value):
        raise fail(field, "must not contain control characters")
    return value


def optional_string(value: Any, field: str, *, max_len: int = 256) -> str | None:
    """`string`, or None for null."""
    return None if value is None else string(value, field, max_len=max_len)


def integer(value: Any, field: str, low: int, high: int) -> int:
    """An integer (not a bool, not a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, f"must be an integer, not {type_name(value)}")
    if not low <= value <= high:
        raise fail(field, f"must be between {low} and {high}, got {value}")
    return value


def port(value: Any, field: str) -> int:
    """A TCP port, 1-65535."""
    return integer(value, field, 1, 65535)


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise fail(field, f"must be true or false, not {type_name(value)}")
    return value


def obj(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(field, f"must be an object, not {type_name(value)}")
    return value


def array(value: Any, field: str, *, max_items: int = 256) -> list[Any]:
    if not isinstance(value, list):
        raise fail(field, f"must be an array, not {type_name(value)}")
    if len(value) > max_items:
        raise fail(field, f"must have at most {max_items} items")
    return value


def string_list(value: Any, field: str, *, max_items: int = 64, max_len: int = 128) -> list[str]:
    """An array of non-empty strings, duplicates removed (first occurrence kept)."""
    items = array(value, field, max_items=max_items)
    out: list[str] = []
    for i, item in enumerate(items):
        s = string(item, f"{field}[{i}]", max_len=max_len)
        if s not in out:
            out.append(s)
    return out


def string_map(value: Any, field: str, *, max_items: int = 64, max_value_len: int = 1024) -> dict[str, str]:
    """An object whose values are strings."""
    mapping = obj(value, field)
    if len(mapping) > max_items:
        raise fail(field, f"must have at most {max_items} entries")
    for key, item in mapping.items():
        string(key, f"{field} key", max_len=128)
        string(item, f"{field}.{key}", max_len=max_value_len, allow_empty=True)
    return dict(mapping)


def record_id(value: Any, field: str = "id") -> str:
    """An id: letters, digits, '_', '.', ':', '-', starting with a letter or digit, <=128."""
    s = string(value, field, max_len=128)
    if not _ID.match(s):
        raise fail(
            field,
            "may contain only letters, digits, '_', '.', ':' and '-', and must start with a letter or digit",
        )
    return s


def slug(value: Any, field: str = "slug") -> str:
    """A service slug: lowercase letters, digits, '-' and '_', at most 63 characters."""
    if value == "":
        raise fail(field, "must not be empty (omit it instead)")
    s = string(value, field, max_len=63)
    if not _SLUG.match(s):
        raise fail(field, "must be lowercase letters, digits, '-' or '_', starting and ending with a letter or digit")
    return s


def hostname(value: Any, field: str) -> str:
    """A DNS host name, lower-cased (see `urls.canonical_host`)."""
    s = string(value, field, max_len=253)
    if is_ip(s):
        raise fail(field, f"'{s}' is an IP address; give it as ip")
    try:
        return urls.canonical_host(s)
    except urls.UrlError as e:
        raise fail(field, str(e)) from None


def ip_address(value: Any, field: str) -> str:
    """An IPv4 or IPv6 address (IPv6 without brackets), in canonical form."""
    s = string(value, field, max_len=64)
    try:
        address = ipaddress.ip_address(s)
    except ValueError:
        raise fail(field, f"'{s}' is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise fail(field, "an IPv6 zone (%...) is not allowed")
    return str(address)


is_ip = urls.is_ip


def http_url(value: Any, field: str) -> str:
    """An absolute http(s) URL, in the canonical form of `urls.parse_url`."""
    return endpoint(value, field).url


def endpoint(value: Any, field: str) -> urls.Endpoint:
    """`http_url`, parsed."""
    s = string(value, field, max_len=urls.MAX_URL_LEN)
    try:
        return urls.parse_url(s)
    except urls.UrlError as e:
        raise fail(field, str(e)) from None


def type_name(value: Any) -> str:
    """JSON's name for the type of `value`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
