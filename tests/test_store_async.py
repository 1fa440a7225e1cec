"""`put_async`: writes awaited on an event loop, completed by the store's writer thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from registry_svc import _core
from registry_svc.http import put_async


def record(instance_id: str, url: str) -> bytes:
    return orjson.dumps({"id": instance_id, "url": url, "slug": "s"})


def test_concurrent_awaited_writes_all_land_and_errors_arrive_as_exceptions(tmp_path: Path) -> None:
    store = _core.Store(str(tmp_path / "store"))

    async def main() -> None:
        indexes = await asyncio.gather(
            *(put_async(store, "instances", f"i{n}", record(f"i{n}", f"http://h{n}"), 0) for n in range(200))
        )
        assert sorted(indexes) == list(range(1, 201))
        with pytest.raises(_core.ConflictError):
            await put_async(store, "instances", "other", record("other", "http://h1"), 0)
        with pytest.raises(_core.VersionMismatchError):
            await put_async(store, "instances", "i1", record("i1", "http://h1"), 0)
        with pytest.raises(_core.InvalidRecordError):
            await put_async(store, "instances", "i2", b"not json", None)

    asyncio.run(main())
    assert len(store.ids_by("instances", "slug", "s")) == 200
    store.close()
