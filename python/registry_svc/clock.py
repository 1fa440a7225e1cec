"""Time in the API's one format: RFC 3339, UTC, milliseconds, 'Z'."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """The current time as `2026-11-27T19:15:22.123Z`."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    """`moment` (timezone-aware) as RFC 3339 UTC with milliseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """Parses a timestamp written by `format_time`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
