"""Locust scenarios: who asks the registry what, and how often.

Sidecars (most users) look up and pick instances of the services they call; services
register themselves once and then heartbeat; operators list nodes, definitions and
instances. Run it through `make loadtest` (`python -m loadtest.run_locust`), which starts
a seeded server and passes REGISTRY_TOKEN and REGISTRY_SLUGS.
"""

from __future__ import annotations

import itertools
import os
import random

from locust import between, constant, task
from locust.contrib.fasthttp import FastHttpUser

TOKEN = os.environ.get("REGISTRY_TOKEN", "")
SLUGS = int(os.environ.get("REGISTRY_SLUGS", "100"))
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_service_numbers = itertools.count()


def random_slug() -> str:
    return f"svc-{random.randrange(SLUGS)}"


class Sidecar(FastHttpUser):
    """A proxy sidecar: asks for instances of a service on (nearly) every request."""

    weight = 8
    wait_time = constant(0)

    @task(3)
    def lookup(self) -> None:
        with self.client.get(
            f"/registry-svc/instances?slug={random_slug()}", headers=AUTH, name="lookup by slug", catch_response=True
        ) as resp:
            if resp.status_code != 200 or not resp.json().get("instances"):
                resp.failure(f"lookup: HTTP {resp.status_code}")

    @task(7)
    def pick(self) -> None:
        with self.client.get(
            f"/registry-svc/instance/pick?slug={random_slug()}", headers=AUTH, name="pick", catch_response=True
        ) as resp:
            if resp.status_code != 200 or "instance" not in resp.json():
                resp.failure(f"pick: HTTP {resp.status_code}")


class Service(FastHttpUser):
    """A service instance: registers once, then heartbeats and sometimes re-registers."""

    weight = 2
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        number = next(_service_numbers)
        self.body = {"url": f"http://svc-load-{os.getpid()}-{number}:8080", "slug": f"load-{number % 10}",
                     "healthCheck": {"type": "none"}}  # made-up hosts: never probed  # fmt: skip
        resp = self.client.put("/registry-svc/instance", json=self.body, headers=AUTH, name="register")
        self.instance_id = resp.json()["instance"]["id"] if resp.status_code in (200, 201) else None

    @task(8)
    def heartbeat(self) -> None:
        if self.instance_id:
            self.client.put(f"/registry-svc/instance/{self.instance_id}/heartbeat", headers=AUTH, name="heartbeat")

    @task(1)
    def re_register(self) -> None:
        self.client.put("/registry-svc/instance", json=self.body, headers=AUTH, name="re-register")


class Operator(FastHttpUser):
    """A person or dashboard: lists what is there, now and then."""

    weight = 1
    wait_time = between(0.5, 1.5)

    @task
    def nodes(self) -> None:
        self.client.post("/registry-svc/nodes", headers=AUTH, name="list nodes")

    @task
    def definitions(self) -> None:
        self.client.get("/registry-svc/definitions", headers=AUTH, name="list definitions")

    @task
    def one_service(self) -> None:
        self.client.get(
            f"/registry-svc/instances?slug={random_slug()}&status=Healthy", headers=AUTH, name="healthy of a slug"
        )

    @task
    def node_self(self) -> None:
        self.client.get("/registry-svc/node/self", headers=AUTH, name="node self")
