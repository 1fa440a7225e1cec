"""An instance's several `checks`: each one's verdict, and what they make the instance.

Each check has its own interval, thresholds and consecutive pass/failure counts (kept by
the checker, `health.py`), and a verdict: unknown until its first result, then `passing`
or `failing`, which turns only after its threshold of results the other way (the single
`healthCheck`'s rule, `status.after_probe`, per check). What the verdicts make the
instance:

- a failing `critical` check: Unhealthy, its statusReason naming the check;
- every critical check passing: Healthy (a failing `warning` check is named in the reason
  but keeps it routable);
- a critical check still unknown and none failing: no change yet.

`Stopping` is never changed, and `Starting` stays `Starting` while a check fails, as with
one check. `checkStatus` in the record shows each check (`passing`, `warning`,
`critical`) with the output of the result that set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry_svc.clock import parse_time
from registry_svc.probes import ProbeResult
from registry_svc.status import Transition, after_probe, short

PASSING, FAILING = "passing", "failing"


@dataclass
class CheckState:
    """What the checker remembers of one instance between probes."""

    passes: int = 0
    failures: int = 0
    next_due: float = 0.0
    in_flight: bool = False
    unhealthy_since: float | None = None

    def count(self, result: ProbeResult) -> None:
        """Counts a probe result into the consecutive passes/failures."""
        if result.ok:
            self.passes, self.failures = self.passes + 1, 0
        else:
            self.passes, self.failures = 0, self.failures + 1


@dataclass
class Verdict(CheckState):
    """One of an instance's checks in the checker: its counts, and its verdict."""

    state: str | None = None  # None (no result yet), PASSING or FAILING
    output: str = ""

    def judge(self, check: dict[str, Any], result: ProbeResult) -> bool:
        """Counts a result; True when the verdict changed (its output is kept then). The
        verdict turns as one `healthCheck`'s status does (`status.after_probe`: the first
        result decides, then a threshold of results the other way)."""
        self.count(result)
        wanted = PASSING if result.ok else FAILING
        if self.state == wanted:
            # A failing check says why it fails now (another cause is news); a passing one
            # keeps its first output (no write per answer).
            if wanted == FAILING and short(result.reason) != self.output:
                self.output = short(result.reason)
                return True
            return False
        as_status = {None: "Unknown", PASSING: "Healthy", FAILING: "Unhealthy"}[self.state]
        if after_probe(as_status, check, self.passes, self.failures, result.ok, result.reason) is None:
            return False
        self.state, self.output = wanted, short(result.reason)
        return True


def ttl_result(instance: dict[str, Any], check: dict[str, Any], now_wall: float) -> tuple[bool, str]:
    """A ttl check passes while the instance's last heartbeat is within its interval."""
    try:
        age = now_wall - parse_time(instance["lastHeartbeat"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return False, "no heartbeat yet"
    interval = float(check.get("intervalSeconds", 10))
    return (True, "heartbeat received") if age <= interval else (False, f"no heartbeat for {int(age)}s")


def check_status(checks: list[dict[str, Any]], verdicts: dict[str, Verdict]) -> dict[str, dict[str, str]]:
    """`checkStatus`: each check with a verdict, as `{"status", "output"}`."""
    out: dict[str, dict[str, str]] = {}
    for check in checks:
        verdict = verdicts.get(check["name"])
        if verdict is None or verdict.state is None:
            continue
        failing = "warning" if check.get("severity") == "warning" else "critical"
        out[check["name"]] = {"status": PASSING if verdict.state == PASSING else failing, "output": verdict.output}
    return out


def judged(checks: list[dict[str, Any]], status: dict[str, dict[str, str]]) -> Transition | None:
    """What the checks make the instance, None while undecided."""

    def named(check: dict[str, Any]) -> str:
        return f"check '{check['name']}' ({check['type']}): {status[check['name']]['output']}"

    critical = [c for c in checks if c.get("severity", "critical") == "critical"]
    failing = [c for c in critical if status.get(c["name"], {}).get("status") == "critical"]
    if failing:
        more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
        return Transition("Unhealthy", short(named(failing[0]) + more))
    if any(c["name"] not in status for c in critical):
        return None
    warned = [c for c in checks if status.get(c["name"], {}).get("status") == "warning"]
    if warned:
        return Transition("Healthy", short("warning: " + named(warned[0])))
    return Transition("Healthy", f"all {len(checks)} checks pass" if len(checks) > 1 else named(checks[0]))


def decide(current: dict[str, Any], status: dict[str, dict[str, str]]) -> Transition | None:
    """The instance's change, judged on the record as it is now."""
    if current.get("status") == "Stopping":
        return None
    outcome = judged(current.get("checks") or [], status)
    if outcome is None or (outcome.status == "Unhealthy" and current.get("status") == "Starting"):
        return None
    return outcome
