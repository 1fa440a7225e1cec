"""The health checker: which instances are due, the per-instance pass/failure counts, and
writing what the probes found.

Checks run concurrently on one asyncio loop (in the node agent, see `agent.py`). What is
due comes off a heap keyed on each check's next due time, so a tick costs what is due, not
the number of instances tracked (entries of forgotten or replaced checks are dropped when
they surface). Each
instance keeps explicit counts of consecutive passes and failures; its stored `status`
changes only when a threshold is crossed (rules in `status.py`), so one lost probe does
not flap it. A result is applied inside a compare-and-set update of the current record
(`records.update`), so it is judged against the status the record has when it is
written. Only status changes are written, plus a refresh of `lastHeartbeat` when it is
older than `HEARTBEAT_REFRESH_S`; a probe that changes nothing writes nothing. Probes
themselves are in `probes.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from registry_svc import _core, checks, metrics, records, status
from registry_svc.checks import CheckState
from registry_svc.clock import parse_time, utc_now
from registry_svc.models import HEALTH_CHECK_DEFAULTS
from registry_svc.probes import ProbeResult, probe, probe_check
from registry_svc.settings import LOOPBACK_NETWORKS
from registry_svc.status import Transition

log = logging.getLogger("registry_svc")

INSTANCES = "instances"
HEARTBEAT_REFRESH_S = 60.0
MAX_CONCURRENT_PROBES = 256
TICK_S = 0.2
RELOAD_MIN_S = 1.0


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps `seconds`, returning early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


Decide = Callable[[dict[str, Any]], Transition | None]


def write_status(store: _core.Store, instance_id: str, decide: Decide, alive: bool) -> records.Applied:
    """Applies `decide(current record)` to the instance, and refreshes its `lastHeartbeat`
    when `alive` and it is stale, in one compare-and-set update. Transitions are logged
    once, when written."""
    return _write(store, instance_id, lambda current: status.apply(current, decide(current)), alive)


def write_checks(
    store: _core.Store, instance_id: str, judged_checks: list[dict[str, Any]], check_status: dict[str, Any], alive: bool
) -> records.Applied:
    """Writes `checkStatus` and what it makes the instance (`checks.decide`), in one
    compare-and-set update, if the record still has the checks that were judged."""

    def change(current: dict[str, Any]) -> bool | None:
        if current.get("checks") != judged_checks:
            return None  # changed meanwhile: these results are about checks it no longer has
        changed = current.get("checkStatus") != check_status
        current["checkStatus"] = check_status
        return status.apply(current, checks.decide(current, check_status)) or changed

    return _write(store, instance_id, change, alive)


def _write(
    store: _core.Store, instance_id: str, change: Callable[[dict[str, Any]], bool | None], alive: bool
) -> records.Applied:
    """One compare-and-set update of an instance: `change` edits the record (True when it
    changed it, None to leave the record alone), then a live instance's stale
    `lastHeartbeat` is refreshed; a transition is logged once, when written."""

    def update(current: dict[str, Any] | None) -> dict[str, Any] | None:
        if current is None:
            return None
        changed = change(current)
        if changed is None:
            return None
        if alive and (changed or _heartbeat_age(current) > HEARTBEAT_REFRESH_S):
            current["lastHeartbeat"] = utc_now()
            changed = True
        return current if changed else None

    applied = records.update(store, INSTANCES, instance_id, update, f"instance '{instance_id}'")
    if applied.wrote and applied.record is not None:
        status.log_transition(applied.record, (applied.previous or {}).get("status"))
    return applied


def deregister_if_unhealthy(store: _core.Store, instance_id: str) -> bool:
    """Deletes the instance if it is still Unhealthy (checked inside the delete)."""
    applied = records.update(
        store,
        INSTANCES,
        instance_id,
        lambda current: records.DELETE if current is not None and current.get("status") == "Unhealthy" else None,
        f"instance '{instance_id}'",
    )
    return applied.wrote


def _heartbeat_age(record: dict[str, Any]) -> float:
    try:
        return time.time() - parse_time(record["lastHeartbeat"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return float("inf")


@dataclass
class HealthChecker:
    """Probes the instances this node is responsible for, each on its own interval."""

    store: _core.Store
    # Which instances this node checks; re-evaluated whenever the instance set is reloaded.
    is_mine: Callable[[dict[str, Any]], bool]
    policy: _core.NetPolicy = field(default_factory=lambda: _core.NetPolicy(list(LOOPBACK_NETWORKS), "probe"))
    clock: Callable[[], float] = time.monotonic
    probes_run: int = 0
    writes: int = 0
    # How late checks started, in seconds past their due time (for the capacity benchmark
    # and for spotting an overloaded checker).
    max_lateness: float = 0.0
    _instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    _states: dict[str, CheckState] = field(default_factory=dict)
    # Instances with several `checks`: each check's verdict, by check name.
    _verdicts: dict[str, dict[str, checks.Verdict]] = field(default_factory=dict)
    _known: set[str] = field(default_factory=set)
    _loaded_index: int = -1
    _loaded_at: float = float("-inf")
    # (when to look, tie-breaker, instance id, check name or None for `healthCheck`, its
    # state, the due time it was scheduled for): valid while that state is still the
    # instance's and still due then.
    _due: list[tuple[float, int, str, str | None, CheckState, float]] = field(default_factory=list)
    _order: Iterator[int] = field(default_factory=itertools.count)
    _clean_size: int = 0
    _writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "health-write"))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def request_full_reload(self) -> None:
        """Re-decides every instance at the next tick (which node checks what changed)."""
        self._loaded_index = -1

    def reload(self) -> None:
        """Catches up with the store: at most once per RELOAD_MIN_S, and only the records
        written since the last time (a full read at start or after `request_full_reload`)."""
        now = self.clock()
        index = self.store.collection_index(INSTANCES)
        if index == self._loaded_index or now - self._loaded_at < RELOAD_MIN_S:
            return
        if self._loaded_index < 0:
            self._full_reload(now)
            return
        index, changed, live = self.store.changes(INSTANCES, self._loaded_index)
        for raw in changed:
            self._track(orjson.loads(raw), now, spread=False)
        if len(self._known) != live:  # something was deleted
            present = set(self.store.ids(INSTANCES))
            for gone in self._known - present:
                self._forget(gone)
            self._known = present
        self._loaded_index, self._loaded_at = index, now

    def _full_reload(self, now: float) -> None:
        """Re-decides every instance. What it keeps checking keeps its counts, verdicts and
        schedule: a reload (which node checks what changed) must not blank a check's last
        result in `checkStatus` until its next probe."""
        index, raws = self.store.list(INSTANCES)
        first = not self._known
        self._known = set()
        for raw in raws:
            self._track(orjson.loads(raw), now, spread=first)
        for instance_id in set(self._instances) - self._known:
            self._forget(instance_id)
        self._loaded_index, self._loaded_at = index, now

    def _track(self, instance: dict[str, Any], now: float, spread: bool) -> None:
        instance_id = instance["id"]
        self._known.add(instance_id)
        if not self.is_mine(instance):
            self._forget(instance_id)
            return
        # Records written by the API carry a full check; imported ones may not.
        instance["healthCheck"] = {**HEALTH_CHECK_DEFAULTS, **(instance.get("healthCheck") or {})}
        previous = self._instances.get(instance_id)
        self._track_checks(instance, previous, now, spread)
        self._instances[instance_id] = instance
        checked = instance["healthCheck"]["type"] != "none"
        state = self._states.get(instance_id)
        if state is None:
            interval = float(instance["healthCheck"]["intervalSeconds"])
            # Spread the first round over an interval at start; probe new ones at once.
            state = CheckState(next_due=now + (random.uniform(0, interval) if spread else 0.0))
            self._states[instance_id] = state
            if checked:
                self._schedule(instance_id, None, state, state.next_due)
        elif checked and previous is not None and previous["healthCheck"]["type"] == "none":
            state.next_due = now  # it had nothing to check, so nothing on the heap
            self._schedule(instance_id, None, state, now)

    def _track_checks(
        self, instance: dict[str, Any], previous: dict[str, Any] | None, now: float, spread: bool
    ) -> None:
        """Keeps the verdict of every check the record still has unchanged."""
        before = self._verdicts.pop(instance["id"], {})
        kept = {c["name"]: c for c in (previous or {}).get("_judged", [])}
        verdicts: dict[str, checks.Verdict] = {}
        for check in instance.get("checks") or []:
            name = check["name"]
            if name in before and kept.get(name) == check:
                verdicts[name] = before[name]
            else:
                delay = random.uniform(0, float(check["intervalSeconds"])) if spread else 0.0
                verdicts[name] = checks.Verdict(next_due=now + delay)
                self._schedule(instance["id"], name, verdicts[name], now + delay)
        if verdicts:
            self._verdicts[instance["id"]] = verdicts
            instance["_judged"] = list(instance["checks"])

    def _forget(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)
        self._states.pop(instance_id, None)
        self._verdicts.pop(instance_id, None)

    async def run(self, stop: asyncio.Event) -> None:
        """Checks until `stop` is set."""
        semaphore = asyncio.Semaphore(MAX_CONCURRENT_PROBES)
        while not stop.is_set():
            try:
                self.reload()
                self._start_due(semaphore)
            except Exception:
                log.exception("health checker tick failed")
            await pause(stop, TICK_S)
        for task in list(self._tasks):
            task.cancel()
        self._writer.shutdown(wait=True)

    def _schedule(self, instance_id: str, name: str | None, state: CheckState, due: float, look: float = -1) -> None:
        """Puts a check on the heap for `due` (looked at `look`, when later)."""
        heapq.heappush(self._due, (max(due, look), next(self._order), instance_id, name, state, due))

    def _live(self, entry: tuple[float, int, str, str | None, CheckState, float]) -> bool:
        """Whether a heap entry still stands: its state is still the instance's (or the
        check's), and still due when the entry says."""
        _, _, instance_id, name, state, at = entry
        current = self._states.get(instance_id) if name is None else self._verdicts.get(instance_id, {}).get(name)
        return current is state and state.next_due == at

    def _start_due(self, semaphore: asyncio.Semaphore) -> None:
        """Starts every check whose time has come, and puts it back for its next turn."""
        now = self.clock()
        wall = time.time()
        due = self._due
        while due and due[0][0] <= now:
            entry = heapq.heappop(due)
            if not self._live(entry):
                continue  # forgotten, replaced, or put back for another time since
            _, _, instance_id, name, state, at = entry
            if state.in_flight:
                # Still running from its last turn: looked at again next tick (as late as
                # it then is), so a slow check never runs twice at once.
                self._schedule(instance_id, name, state, at, now + TICK_S)
                continue
            instance = self._instances[instance_id]
            check = (
                instance["healthCheck"] if name is None else next(c for c in instance["checks"] if c["name"] == name)
            )
            if name is None and check["type"] == "none":
                continue  # nothing to check; `_track` schedules it again if that changes
            self.max_lateness = max(self.max_lateness, now - at)
            state.next_due = now + float(check["intervalSeconds"])
            self._schedule(instance_id, name, state, state.next_due)
            state.in_flight = True
            if isinstance(state, checks.Verdict):
                self._spawn(self._run_check(instance, check, state, semaphore))
            elif check["type"] == "ttl":
                self._spawn(self._apply(instance, state, lambda current: status.after_ttl_check(current, wall), False))
            else:
                self._spawn(self._probe_and_apply(instance, state, semaphore))
        self._compact()

    def _compact(self) -> None:
        """Drops the heap's stale entries (of forgotten or replaced checks) once the heap has
        doubled since it was last clean: amortised, no tick pays for all of them."""
        if len(self._due) > 2 * self._clean_size + 1024:
            self._due = [entry for entry in self._due if self._live(entry)]
            heapq.heapify(self._due)
            self._clean_size = len(self._due)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe_and_apply(self, instance: dict[str, Any], state: CheckState, semaphore: asyncio.Semaphore) -> None:
        async with semaphore:
            result = await probe(self.policy, instance)
        self.probes_run += 1
        metrics.probe(str(instance["healthCheck"]["type"]), result.ok)
        state.count(result)
        passes, failures = state.passes, state.failures

        def decide(current: dict[str, Any]) -> Transition | None:
            check = {**HEALTH_CHECK_DEFAULTS, **(current.get("healthCheck") or {})}
            return status.after_probe(
                current.get("status", "Unknown"), check, passes, failures, result.ok, result.reason
            )

        await self._apply(instance, state, decide, result.ok)

    async def _run_check(
        self, instance: dict[str, Any], check: dict[str, Any], verdict: checks.Verdict, semaphore: asyncio.Semaphore
    ) -> None:
        """Runs one of an instance's checks; writes when a verdict (or the record's
        `checkStatus`) changes."""
        try:
            if check["type"] == "ttl":
                ok, output = checks.ttl_result(instance, check, time.time())
            else:
                async with semaphore:
                    result = await probe_check(self.policy, instance, check)
                self.probes_run += 1
                metrics.probe(str(check["type"]), result.ok)
                ok, output = result.ok, result.reason
            verdict.judge(check, ProbeResult(ok, output))
            judged_checks = instance["_judged"]
            now_status = checks.check_status(judged_checks, self._verdicts.get(instance["id"], {}))
            # A probe's pass keeps lastHeartbeat fresh, unless a ttl check reads it.
            alive = ok and check["type"] != "ttl" and all(c["type"] != "ttl" for c in judged_checks)
            stale = alive and _heartbeat_age(instance) > HEARTBEAT_REFRESH_S
            if instance.get("checkStatus") == now_status and not stale:
                decision = checks.decide(instance, now_status)
                if decision is None or (decision.status, decision.reason) == (
                    instance.get("status"),
                    instance.get("statusReason"),
                ):
                    return
            loop = asyncio.get_running_loop()
            applied = await loop.run_in_executor(
                self._writer, write_checks, self.store, instance["id"], judged_checks, now_status, alive
            )
            if applied.wrote:
                self.writes += 1
            if applied.record is not None:
                instance.update(
                    {k: applied.record.get(k) for k in ("status", "statusReason", "checkStatus", "lastHeartbeat")}
                )
        except Exception as e:
            log.warning("check %s of instance %s not written: %s", check.get("name"), instance["id"], e)
        finally:
            verdict.in_flight = False

    async def _apply(self, instance: dict[str, Any], state: CheckState, decide: Decide, alive: bool) -> None:
        """Writes the decision (off the loop), then follows the record as written."""
        loop = asyncio.get_running_loop()
        try:
            if not self._may_change(instance, decide, alive):
                await self._after_write(instance, state, instance)
                return
            applied = await loop.run_in_executor(self._writer, write_status, self.store, instance["id"], decide, alive)
            if applied.wrote:
                self.writes += 1
            if applied.record is None:
                return  # deleted meanwhile; the next reload forgets it
            instance.update({k: applied.record.get(k) for k in ("status", "statusReason", "lastHeartbeat")})
            await self._after_write(instance, state, applied.record)
        except Exception as e:
            # A write that keeps conflicting, a full or closed store: retried at the next
            # interval; one line, no traceback per tick.
            log.warning("health result for instance %s not written: %s", instance["id"], e)
        finally:
            state.in_flight = False

    @staticmethod
    def _may_change(instance: dict[str, Any], decide: Decide, alive: bool) -> bool:
        """Whether the result could change the record, judged on the copy loaded at the
        last reload (at most RELOAD_MIN_S old): most probes change nothing and cost no
        store access. Whenever this says yes, the write re-decides on the current record."""
        if alive and _heartbeat_age(instance) > HEARTBEAT_REFRESH_S:
            return True
        return decide(dict(instance)) is not None

    async def _after_write(self, instance: dict[str, Any], state: CheckState, current: dict[str, Any]) -> None:
        """Tracks how long the instance has been Unhealthy, and deregisters it after
        `deregisterAfterSeconds`."""
        if current.get("status") != "Unhealthy":
            state.unhealthy_since = None
            return
        state.unhealthy_since = state.unhealthy_since or self.clock()
        after = float(instance["healthCheck"].get("deregisterAfterSeconds", 0))
        if after > 0 and self.clock() - state.unhealthy_since >= after:
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(self._writer, deregister_if_unhealthy, self.store, instance["id"]):
                self.writes += 1
                log.info("deregistered instance %s: unhealthy for %gs", instance["id"], after)
