"""Field validators. Each raises a 400 `ApiError` naming the field and what is wrong."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from registry_svc.errors import ApiError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Ids: what the store accepts, minus characters that are awkward in URLs and shells.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_SLUG = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")

MAX_URL_LEN = 2048


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
    s = string(value, field, max_len=253)
    if not _HOSTNAME.match(s):
        raise fail(field, "must be a host name (letters, digits, '.', '-', '_')")
    return s


def ip_address(value: Any, field: str) -> str:
    s = string(value, field, max_len=64)
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        raise fail(field, f"'{s}' is not an IPv4 or IPv6 address") from None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def http_url(value: Any, field: str) -> str:
    """An absolute http(s) URL with a host; a trailing '/' alone as path is dropped."""
    s = string(value, field, max_len=MAX_URL_LEN)
    if any(c.isspace() for c in s):
        raise fail(field, "must not contain whitespace")
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https"):
        raise fail(field, f"must be an http:// or https:// URL, got '{s}'")
    if not parts.hostname:
        raise fail(field, "must include a host")
    try:
        port_number = parts.port  # urlsplit validates the port lazily, here
    except ValueError:
        port_number = 0
    if port_number == 0:
        raise fail(field, "has an invalid port (must be 1-65535)")
    return s[:-1] if parts.path == "/" and not parts.query and not parts.fragment and s.endswith("/") else s


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
