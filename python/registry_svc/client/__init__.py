"""A Python client of registry-svc for services and sidecars.

- `Registration`: registers this process's instance, heartbeats it (a `ttl` check) on a
  thread, and on exit or SIGTERM drains it (status Stopping, a short wait, then delete).
- `Resolver`: keeps one slug's instances in memory, fed by blocking queries, and picks
  locally with the server's own selection code (the Rust extension), so a sidecar pays no
  network round trip per request; it keeps the last good list while the server is away.
- `RegistryClient`: the small HTTP client both use.

Only the standard library, orjson and the package's Rust extension are needed: not Robyn
or anything else the server runs on.
"""

from registry_svc.client.http import RegistryClient, RegistryError
from registry_svc.client.registration import Registration
from registry_svc.client.resolver import Picked, Resolver

__all__ = ["Picked", "Registration", "RegistryClient", "RegistryError", "Resolver"]
