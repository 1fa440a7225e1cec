"""`Resolver`: one slug's instances in this process, picked locally.

    users = Resolver("user-svc", policy="least_request", token=TOKEN)
    target = users.pick()          # Picked(id=..., url=...), no network round trip
    users.close()

A thread follows the slug with blocking queries (`?index=&wait=`), so a change reaches the
resolver within milliseconds of its write and an idle slug costs one parked request. The
instances live in memory (`_core.Picker`) and are picked by the same Rust selection code
the server runs (policies, zones, tags, Unknown only when nothing is Healthy), so a local
pick behaves as the server's `pick` would. When the server is away (restarting,
unreachable) the last good list keeps serving, and the thread reconnects.
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple
from urllib.parse import quote

import orjson

from registry_svc import _core
from registry_svc.client.http import RegistryClient, RegistryError

log = logging.getLogger("registry_svc.client")

WAIT = "30s"
# A NamedTuple from the extension's (id, url) without the generated __new__'s overhead.
_make = tuple.__new__
BACKOFF_MAX_S = 2.0


class Picked(NamedTuple):
    """The instance a pick chose."""

    id: str
    url: str


class Resolver:
    """Follows `slug`'s instances and picks among them in process."""

    def __init__(
        self,
        slug: str,
        *,
        policy: str | None = None,
        registry: str | None = None,
        token: str | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        """Returns once the first list arrived (or after `ready_timeout`, with an empty
        list: `pick` then raises LookupError until one arrives). `policy` defaults to the
        round robin of the server's default."""
        self.slug = slug
        self.policy = policy
        self.client = RegistryClient(registry, token, timeout=60.0)
        self._picker = _core.Picker(slug, policy or "round_robin")
        self._instances: list[dict[str, object]] = []
        self.index = 0
        self.updates = 0
        self.last_error: str | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"resolver-{slug}", daemon=True)
        self._thread.start()
        self._ready.wait(ready_timeout)

    def pick(self, zone: str | None = None, key: str | None = None, tags: tuple[str, ...] = ()) -> Picked:
        """An instance of the slug, chosen locally. LookupError when none is known or none is
        routable."""
        try:
            return _make(Picked, self._picker.pick(zone, key, list(tags) if tags else None))
        except (_core.NotFoundError, _core.NoRoutableError) as e:
            raise LookupError(str(e)) from None

    def instances(self) -> list[dict[str, object]]:
        """The instances as last received."""
        return list(self._instances)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _follow(self) -> None:
        backoff = 0.05
        path = f"/registry-svc/instances?slug={quote(self.slug, safe='')}"
        while not self._stop.is_set():
            query = path if not self.index else f"{path}&index={self.index}&wait={WAIT}"
            try:
                _, headers, answer = self.client.request("GET", query)
            except RegistryError as e:
                # Away or refusing: keep the last good list, retry with capped backoff.
                if self.last_error != str(e):
                    log.warning("resolver %s: %s; keeping %d instance(s)", self.slug, e, len(self.instances()))
                self.last_error = str(e)
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            backoff, self.last_error = 0.05, None
            index = int(headers.get("x-registry-index", "0"))
            if index != self.index or not self._ready.is_set():
                self._replace(answer["instances"], index)
            self._ready.set()

    def _replace(self, instances: list[dict[str, object]], index: int) -> None:
        """Makes the picker hold exactly `instances`, swapped in whole."""
        self._picker.replace([orjson.dumps(record) for record in instances])
        self._instances = instances
        self.index = index
        self.updates += 1
