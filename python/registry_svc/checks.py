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
from registry_svc.status import Transition, short

PASSING, FAILING = "passing", "failing"


@dataclass
class Verdict:
    """One check's state in the checker."""

    passes: int = 0
    failures: int = 0
    state: str | None = None  # None (no result yet), PASSING or FAILING
    output: str = ""
    next_due: float = 0.0
    in_flight: bool = False

    def count(self, check: dict[str, Any], ok: bool, output: str) -> bool:
        """Counts a result; True when the verdict changed (its output is kept then)."""
        if ok:
            self.passes, self.failures = self.passes + 1, 0
        else:
            self.passes, self.failures = 0, self.failures + 1
        wanted = PASSING if ok else FAILING
        if self.state == wanted:
            # A failing check says why it fails now (another cause is news); a passing one
            # keeps its first output (no write per answer).
            if wanted == FAILING and short(output) != self.output:
                self.output = short(output)
                return True
            return False
        if self.state is not None:
            needed = int(check.get("healthyThreshold" if ok else "unhealthyThreshold", 2 if ok else 3))
            if (self.passes if ok else self.failures) < needed:
                return False
        self.state, self.output = wanted, short(output)
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
