"""`Registration`: this process's instance in the registry, for as long as it runs.

    with Registration("http://127.0.0.1:8080", slug="user-svc", token=TOKEN) as me:
        serve_forever()

Registers with a `ttl` health check and heartbeats every third of the TTL on a daemon
thread, so the instance is Healthy while the process lives and turns Unhealthy by itself
if the process hangs or dies without a word. On exit, and on SIGTERM, it drains: status
Stopping (routing stops at once: nothing routes to Stopping), a short wait for requests in
flight, then the record is deleted.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

from registry_svc.client.http import RegistryClient, RegistryError

log = logging.getLogger("registry_svc.client")


class Registration:
    """Registers `url` (this process's endpoint) under `slug` while it is in use."""

    def __init__(
        self,
        url: str,
        *,
        slug: str | None = None,
        registry: str | None = None,
        token: str | None = None,
        ttl: float = 10.0,
        drain_seconds: float = 2.0,
        handle_sigterm: bool = True,
        **fields: Any,
    ) -> None:
        """`fields` are further registration fields (tags, metadata, weight, zone, ...).
        `registry` and `token` are found the way `oo` finds them (`RegistryClient`)."""
        if ttl < 1:
            raise ValueError("ttl must be at least 1 second")
        self.client = RegistryClient(registry, token)
        self.body: dict[str, Any] = {"url": url, **fields, "healthCheck": {"type": "ttl", "intervalSeconds": ttl}}
        if slug is not None:
            self.body["slug"] = slug
        self.ttl = ttl
        self.drain_seconds = drain_seconds
        self.handle_sigterm = handle_sigterm
        self.instance: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handler: Any = None
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        assert self.instance is not None, "not registered"
        return str(self.instance["id"])

    def start(self) -> Registration:
        """Registers (raises RegistryError if the registry refuses) and starts heartbeating."""
        _, _, answer = self.client.request("PUT", "/registry-svc/instance", self.body)
        self.instance = answer["instance"]
        self._heartbeat()
        self._thread = threading.Thread(target=self._beat, name="registry-heartbeat", daemon=True)
        self._thread.start()
        if self.handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _heartbeat(self, status: str | None = None) -> None:
        body = {} if status is None else {"status": status}
        _, _, answer = self.client.request("PUT", f"/registry-svc/instance/{self.id}/heartbeat", body)
        self.instance = answer["instance"]

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._heartbeat()
            except RegistryError as e:
                if e.status == 404:
                    # Deregistered behind our back (an operator, deregisterAfterSeconds): back in.
                    log.warning("registration %s is gone; registering again", self.id)
                    try:
                        _, _, answer = self.client.request("PUT", "/registry-svc/instance", self.body)
                        self.instance = answer["instance"]
                    except RegistryError as again:
                        log.warning("registering again failed: %s", again)
                else:
                    # The registry is away: keep trying; the ttl check marks us if it lasts.
                    log.warning("heartbeat of %s failed: %s", self.id, e)

    def stop(self) -> None:
        """Drains and deregisters (once; later calls do nothing). Errors are logged, not
        raised: the process is going away either way."""
        with self._lock:
            if self.instance is None or self._stop.is_set():
                return
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._heartbeat("Stopping")  # from here on, nothing routes to it
            time.sleep(self.drain_seconds)  # for requests already in flight
            self.client.request("DELETE", f"/registry-svc/instance/{self.id}")
        except RegistryError as e:
            if e.status != 404:
                log.warning("deregistering %s failed: %s", self.id, e)
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous_handler
        self.stop()
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    def __enter__(self) -> Registration:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
