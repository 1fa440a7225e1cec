"""Instance health checks: probes, the per-instance state machine, and the checker loop.

Checks run concurrently on one asyncio loop (in the node agent, see `agent.py`). Each
instance keeps explicit counts of consecutive passes and failures; its stored `status`
changes only when a threshold is crossed, so one lost probe does not flap it. Only status
changes are written (through the store's apply path), plus a refresh of `lastHeartbeat`
when it is older than `HEARTBEAT_REFRESH_S`; a probe that changes nothing writes nothing.

Transitions:
- `Unknown`: the first result decides (Healthy on a pass, Unhealthy on a failure).
- `Healthy` -> `Unhealthy` after `unhealthyThreshold` consecutive failures.
- `Unhealthy`/`Starting` -> `Healthy` after `healthyThreshold` consecutive passes.
- `Starting` stays `Starting` while probes fail (the service says it is coming up).
- `Stopping` is never changed by a probe.
- `ttl`: `Unhealthy` when no heartbeat came within `intervalSeconds`; the heartbeat
  endpoint makes it `Healthy` again. `none`: never probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from registry_svc import _core
from registry_svc.clock import parse_time, utc_now

log = logging.getLogger("registry_svc")

INSTANCES = "instances"
HEALTH_CHECK_DEFAULTS: dict[str, Any] = {
    "type": "tcp",
    "path": "/health",
    "intervalSeconds": 10,
    "timeoutSeconds": 2,
    "healthyThreshold": 2,
    "unhealthyThreshold": 3,
    "deregisterAfterSeconds": 0,
}
HEARTBEAT_REFRESH_S = 60.0
MAX_CONCURRENT_PROBES = 256
TICK_S = 0.2
RELOAD_MIN_S = 1.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str


@dataclass
class CheckState:
    """What the checker remembers of one instance between probes."""

    passes: int = 0
    failures: int = 0
    next_due: float = 0.0
    in_flight: bool = False
    unhealthy_since: float | None = None


@dataclass(frozen=True)
class Transition:
    status: str
    reason: str


def _error_reason(err: BaseException, timeout: float) -> str:
    if isinstance(err, TimeoutError):
        return f"timeout after {timeout:g}s"
    if isinstance(err, ConnectionRefusedError):
        return "connect refused"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _unverified_tls() -> ssl.SSLContext:
    # A health check asks "does it answer", not "is it who it claims": like Consul's
    # TLSSkipVerify, self-signed upstreams must not read as down.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_TLS = _unverified_tls()


async def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    """Passes when a TCP connection to host:port opens within `timeout`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as e:
        return ProbeResult(False, _error_reason(e, timeout))
    writer.close()
    return ProbeResult(True, "tcp connect ok")


async def probe_http(url: str, timeout: float) -> ProbeResult:
    """Passes on a 2xx answer to `GET url` within `timeout`."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def exchange() -> int:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=_TLS if secure else None, server_hostname=host if secure else None
        )
        try:
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: registry-svc-health\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
        fields = status_line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise OSError(0, "not an HTTP response")
        return int(fields[1])

    try:
        status = await asyncio.wait_for(exchange(), timeout)
    except (OSError, TimeoutError, ssl.SSLError) as e:
        return ProbeResult(False, _error_reason(e, timeout))
    return ProbeResult(200 <= status < 300, f"HTTP {status}")


def probe_target(instance: dict[str, Any]) -> tuple[str, int]:
    """Host and port to connect to for `instance`."""
    host = instance.get("host") or instance.get("ip") or (urlsplit(instance["url"]).hostname or "")
    port = instance.get("port") or urlsplit(instance["url"]).port
    if port is None:
        port = 443 if instance.get("scheme") == "https" else 80
    return host, int(port)


async def probe(instance: dict[str, Any]) -> ProbeResult:
    """Runs the instance's configured check once."""
    check = instance.get("healthCheck") or {}
    timeout = float(check.get("timeoutSeconds", 2))
    if check.get("type") == "http":
        return await probe_http(instance["url"].rstrip("/") + check.get("path", "/health"), timeout)
    host, port = probe_target(instance)
    return await probe_tcp(host, port, timeout)


def decide(status: str, check: dict[str, Any], state: CheckState, result: ProbeResult) -> Transition | None:
    """Counts `result` into `state` and returns the status change it causes, if any."""
    if result.ok:
        state.passes, state.failures = state.passes + 1, 0
    else:
        state.passes, state.failures = 0, state.failures + 1
    if status == "Stopping":
        return None
    if result.ok:
        if status == "Healthy":
            return None
        needed = 1 if status == "Unknown" else int(check.get("healthyThreshold", 2))
        return Transition("Healthy", result.reason) if state.passes >= needed else None
    if status in ("Unhealthy", "Starting"):
        return None
    needed = 1 if status == "Unknown" else int(check.get("unhealthyThreshold", 3))
    return Transition("Unhealthy", result.reason) if state.failures >= needed else None


def ttl_expired(instance: dict[str, Any], now_wall: float) -> Transition | None:
    """`Unhealthy` when a ttl instance's last heartbeat is older than its interval."""
    if instance.get("status") in ("Unhealthy", "Stopping"):
        return None
    interval = float((instance.get("healthCheck") or {}).get("intervalSeconds", 10))
    age = now_wall - parse_time(instance["lastHeartbeat"]).timestamp()
    return Transition("Unhealthy", f"no heartbeat for {int(age)}s") if age > interval else None


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps `seconds`, returning early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def write_status(store: _core.Store, instance_id: str, transition: Transition | None, alive: bool) -> bool:
    """Applies a status change (and/or a lastHeartbeat refresh when `alive`) onto the
    current record, with its version as precondition. Returns True if it wrote."""
    for _ in range(3):
        found = store.get(INSTANCES, instance_id)
        if found is None:
            return False
        version, raw = found
        record = orjson.loads(raw)
        changed = False
        if transition is not None and (record["status"], record.get("statusReason")) != (
            transition.status,
            transition.reason,
        ):
            record["status"], record["statusReason"] = transition.status, transition.reason
            changed = True
        if alive and (changed or _heartbeat_age(record) > HEARTBEAT_REFRESH_S):
            record["lastHeartbeat"] = utc_now()
            changed = True
        if not changed:
            return False
        try:
            store.put(INSTANCES, instance_id, orjson.dumps(record), version)
            return True
        except _core.VersionMismatchError:
            continue
    return False


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
    clock: Callable[[], float] = time.monotonic
    probes_run: int = 0
    writes: int = 0
    # How late checks started, in seconds past their due time (for the capacity benchmark
    # and for spotting an overloaded checker).
    max_lateness: float = 0.0
    _instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    _states: dict[str, CheckState] = field(default_factory=dict)
    _known: set[str] = field(default_factory=set)
    _loaded_index: int = -1
    _loaded_at: float = float("-inf")
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
        index, raws = self.store.list(INSTANCES)
        first = not self._known
        self._known = set()
        for instance_id in list(self._instances):
            self._forget(instance_id)
        for raw in raws:
            self._track(orjson.loads(raw), now, spread=first)
        self._loaded_index, self._loaded_at = index, now

    def _track(self, instance: dict[str, Any], now: float, spread: bool) -> None:
        instance_id = instance["id"]
        self._known.add(instance_id)
        if not self.is_mine(instance):
            self._forget(instance_id)
            return
        # Records written by the API carry a full check; imported ones may not.
        instance["healthCheck"] = {**HEALTH_CHECK_DEFAULTS, **(instance.get("healthCheck") or {})}
        self._instances[instance_id] = instance
        if instance_id not in self._states:
            interval = float(instance["healthCheck"]["intervalSeconds"])
            # Spread the first round over an interval at start; probe new ones at once.
            self._states[instance_id] = CheckState(next_due=now + (random.uniform(0, interval) if spread else 0.0))

    def _forget(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)
        self._states.pop(instance_id, None)

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

    def _start_due(self, semaphore: asyncio.Semaphore) -> None:
        now = self.clock()
        wall = time.time()
        for instance_id, instance in self._instances.items():
            state = self._states[instance_id]
            check = instance["healthCheck"]
            if state.in_flight or state.next_due > now:
                continue
            self.max_lateness = max(self.max_lateness, now - state.next_due)
            state.next_due = now + float(check["intervalSeconds"])
            if check["type"] == "none":
                continue
            if check["type"] == "ttl":
                self._spawn(self._apply(instance, state, ttl_expired(instance, wall), alive=False))
                continue
            state.in_flight = True
            self._spawn(self._probe_and_apply(instance, state, semaphore))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe_and_apply(self, instance: dict[str, Any], state: CheckState, semaphore: asyncio.Semaphore) -> None:
        try:
            async with semaphore:
                result = await probe(instance)
            self.probes_run += 1
            transition = decide(instance["status"], instance["healthCheck"], state, result)
            await self._apply(instance, state, transition, alive=result.ok)
        finally:
            state.in_flight = False

    async def _apply(
        self, instance: dict[str, Any], state: CheckState, transition: Transition | None, alive: bool
    ) -> None:
        status = transition.status if transition else instance["status"]
        if transition is not None:
            instance["status"], instance["statusReason"] = transition.status, transition.reason
        deregister_after = float(instance["healthCheck"].get("deregisterAfterSeconds", 0))
        if status == "Unhealthy":
            state.unhealthy_since = state.unhealthy_since or self.clock()
        else:
            state.unhealthy_since = None
        loop = asyncio.get_running_loop()
        if (
            deregister_after > 0
            and state.unhealthy_since is not None
            and self.clock() - state.unhealthy_since >= deregister_after
        ):
            await loop.run_in_executor(self._writer, self._deregister, instance["id"], deregister_after)
            return
        if transition is None and not (alive and _heartbeat_age(instance) > HEARTBEAT_REFRESH_S):
            return
        wrote = await loop.run_in_executor(self._writer, write_status, self.store, instance["id"], transition, alive)
        if wrote:
            self.writes += 1
            if alive:
                instance["lastHeartbeat"] = utc_now()

    def _deregister(self, instance_id: str, after: float) -> None:
        try:
            self.store.delete(INSTANCES, instance_id)
            log.info("deregistered instance %s: unhealthy for %gs", instance_id, after)
            self.writes += 1
        except _core.NotFoundError:
            pass
