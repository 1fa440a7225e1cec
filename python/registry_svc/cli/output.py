"""What `oo` prints: aligned tables, "8s ago" ages, and JSON (pretty on a terminal,
compact when piped so `| jq` gets one document per call)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def print_json(data: Any) -> None:
    if sys.stdout.isatty():
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(json.dumps(data, separators=(",", ":"), ensure_ascii=False))


def print_data(data: Any, output: str) -> None:
    """`data` as JSON (`output` "json") or as YAML."""
    if output == "json":
        print_json(data)
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell plus three spaces (like Go's tabwriter in 1Backend)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def ago(timestamp: str | None, now: datetime | None = None) -> str:
    """`2026-11-27T19:15:22.123Z` as "8s ago", "1m5s ago", "2h3m4s ago"."""
    if not timestamp:
        return "never"
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 0:
        return "just now"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{secs}s"
    return f"{text} ago"


def percent(usage: Any, part: str) -> str:
    try:
        return f"{float(usage[part]['percent']):.1f}"
    except (KeyError, TypeError, ValueError):
        return "-"


def shorten(text: str | None, width: int) -> str:
    """`text` on one line, cut to `width` characters with '...'."""
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 3] + "..."
