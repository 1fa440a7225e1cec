"""The instance status rules, in one place: what a probe result, a TTL expiry, a heartbeat
or the loss of a node does to an instance's `status`.

Each rule is a pure function of the record *as it is now* (read inside the write that
applies the result, see `records.update`), never of a copy cached before the probe
started: a service that said `Stopping` while a probe was in flight stays `Stopping`.

Transitions:
- `Unknown`: the first probe result decides (Healthy on a pass, Unhealthy on a failure).
- `Healthy` -> `Unhealthy` after `unhealthyThreshold` consecutive failures.
- `Unhealthy`/`Starting` -> `Healthy` after `healthyThreshold` consecutive passes.
- `Starting` stays `Starting` while probes fail (the service says it is coming up).
- `Stopping` is never changed by a probe, a TTL expiry or a node loss; only the service
  (heartbeat or re-registration) or an admin changes it.
- `ttl`: `Unhealthy` when no heartbeat came within `intervalSeconds`; a heartbeat without
  a status makes it `Healthy` again. `none`: never probed.
- The node an instance runs on stopped heartbeating: `Unhealthy` (its reason keeps the
  status it had), until a live node's checker probes it back (see `agent.py`), or the node
  heartbeats again and gives it back the status it had (`type: none` has no probe to do it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from registry_svc.clock import parse_time

log = logging.getLogger("registry_svc")

STATUSES = ("Unknown", "Healthy", "Unhealthy", "Starting", "Stopping")
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class Transition:
    status: str
    reason: str


def short(reason: str) -> str:
    """A statusReason: one line, at most MAX_REASON_CHARS characters."""
    line = " ".join(reason.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def after_probe(
    status: str, check: dict[str, Any], passes: int, failures: int, ok: bool, reason: str
) -> Transition | None:
    """The change a probe result makes, given the consecutive pass/failure counts
    including it."""
    if status == "Stopping":
        return None
    if ok:
        if status == "Healthy":
            return None
        needed = 1 if status == "Unknown" else int(check.get("healthyThreshold", 2))
        return Transition("Healthy", short(reason)) if passes >= needed else None
    if status in ("Unhealthy", "Starting"):
        return None
    needed = 1 if status == "Unknown" else int(check.get("unhealthyThreshold", 3))
    return Transition("Unhealthy", short(reason)) if failures >= needed else None


def after_ttl_check(instance: dict[str, Any], now_wall: float) -> Transition | None:
    """`Unhealthy` when a ttl instance's last heartbeat is older than its interval."""
    if instance.get("status") in ("Unhealthy", "Stopping"):
        return None
    interval = float((instance.get("healthCheck") or {}).get("intervalSeconds", 10))
    age = now_wall - parse_time(instance["lastHeartbeat"]).timestamp()
    return Transition("Unhealthy", f"no heartbeat for {int(age)}s") if age > interval else None


def after_heartbeat(instance: dict[str, Any], requested: str | None, by: str | None = None) -> Transition | None:
    """A heartbeat's change: the status it names (Stopping: a drain, which says who drained
    it, by token id), or Healthy for a ttl instance."""
    if requested == "Stopping" and by:
        return Transition(requested, f"drained by token {by}")
    if requested is not None:
        return Transition(requested, "set by heartbeat")
    check_type = (instance.get("healthCheck") or {}).get("type")
    if check_type == "ttl" and instance.get("status") not in ("Starting", "Stopping"):
        return Transition("Healthy", "TTL heartbeat received")
    return None


# Appended to the reason of an instance the loss of its node made Unhealthy, with the
# status it had: the node's return gives it back (`after_node_returned`).
_WAS = "; was "


def after_node_lost(instance: dict[str, Any], reason: str) -> Transition | None:
    """The node running the instance stopped heartbeating. An instance Unhealthy already
    keeps its own reason; the others remember their status in the reason."""
    current = instance.get("status")
    if current in ("Stopping", "Unhealthy"):
        return None
    return Transition("Unhealthy", short(reason)[: MAX_REASON_CHARS - 20] + f"{_WAS}{current}")


def after_node_returned(instance: dict[str, Any], node_id: str) -> Transition | None:
    """The instance's node heartbeats again: what its loss took is given back (the status
    the instance had before), for an instance nothing else changed since. A checked
    instance is probed on as ever from there."""
    reason = str(instance.get("statusReason") or "")
    if instance.get("status") != "Unhealthy" or not reason.startswith(f"node {node_id} (") or _WAS not in reason:
        return None
    before = reason.rsplit(_WAS, 1)[1]
    if before not in STATUSES or before == "Unhealthy":
        return None
    return Transition(before, f"node {node_id} is heartbeating again")


def apply(record: dict[str, Any], transition: Transition | None) -> bool:
    """Sets the transition's status and reason on `record`; False if it already had them.
    The reason also goes to `details`, the name 1Backend's clients read it under."""
    if transition is None or (record.get("status"), record.get("statusReason"), record.get("details")) == (
        transition.status,
        transition.reason,
        transition.reason,
    ):
        return False
    record["status"], record["statusReason"], record["details"] = (
        transition.status,
        transition.reason,
        transition.reason,
    )
    return True


def log_transition(record: dict[str, Any], before: str | None) -> None:
    """One log line for a written status change of an instance (nothing if unchanged)."""
    if record.get("status") != before:
        reason = record.get("statusReason")
        log.info(
            "instance %s (%s): %s -> %s%s",
            record.get("id"),
            record.get("url"),
            before or "new",
            record.get("status"),
            f" ({reason})" if reason else "",
        )
