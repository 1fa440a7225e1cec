"""This server's own node record: created at start, refreshed by heartbeats."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from pathlib import Path
from typing import Any

import orjson

from registry_svc import _core, records
from registry_svc.clock import utc_now
from registry_svc.settings import Settings

NODES = "nodes"
log = logging.getLogger("registry_svc")


def _read_kept(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def find_by_url(store: _core.Store, url: str) -> tuple[int, dict[str, Any]] | None:
    """The node registered under `url`, with its version."""
    for node_id in store.ids_by(NODES, "url", url):
        found = store.get(NODES, node_id)
        if found is not None:
            return found[0], orjson.loads(found[1])
    return None


def upsert_self(
    store: _core.Store, settings: Settings, usage: dict[str, Any], gpus: list[dict[str, Any]]
) -> dict[str, Any]:
    """Writes this node's record with fresh usage. The id is `OB_NODE_ID`, else the one kept
    in the data dir for this node's URL (`node-<hash>.id`), else the id the node already has under its URL, else a new
    `node_...` id, which is then kept: a node removed by an operator comes back with the
    same id at its next heartbeat."""
    # Per node URL: several nodes may share one data dir (tests, one machine).
    digest = hashlib.sha256(settings.self_url.encode()).hexdigest()[:12]
    kept = Path(settings.data_dir) / f"node-{digest}.id"

    def attempt() -> dict[str, Any]:
        by_url = find_by_url(store, settings.self_url)
        node_id = settings.node_id or _read_kept(kept) or (by_url[1]["id"] if by_url else None)
        if node_id is None:
            node_id = "node_" + secrets.token_hex(6)
        if not settings.node_id and _read_kept(kept) != node_id:
            kept.write_text(node_id + "\n")
        if by_url is not None and by_url[1]["id"] != node_id:
            # OB_NODE_ID changed: the old record under this URL is replaced.
            with contextlib.suppress(_core.NotFoundError):
                store.delete(NODES, by_url[1]["id"], by_url[0])
        version, previous = records.read(store, NODES, node_id)
        record = {
            "id": node_id,
            "url": settings.self_url,
            "region": settings.region,
            "availabilityZone": settings.availability_zone,
            "lastHeartbeat": utc_now(),
            "status": "Healthy",
            "heartbeatIntervalSeconds": settings.heartbeat_seconds,
            "usage": usage,
            "gpus": gpus,
        }
        store.put(NODES, node_id, orjson.dumps(record), version)
        if previous is not None and previous.get("status") != "Healthy":
            log.info(
                "node %s (%s): %s -> Healthy (heartbeating again)", node_id, settings.self_url, previous.get("status")
            )
        return record

    return records.retrying(attempt, f"node {settings.self_url}")
