"""The Python client library (`registry_svc.client`) against real server processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Server, free_port, wait_for
from registry_svc import _core
from registry_svc.client import Registration, RegistryError, Resolver


def slug_instances(server: Server, slug: str) -> list[dict[str, Any]]:
    return list(server.call("GET", f"/registry-svc/instances?slug={slug}").json["instances"])


def test_a_registration_heartbeats_while_in_use_and_leaves_nothing_behind(server: Server) -> None:
    port = free_port()
    with Registration(f"http://127.0.0.1:{port}", slug="client-ctx", registry=server.url, token=server.admin_token,
                      ttl=1, drain_seconds=0.1, tags=["a"]) as me:  # fmt: skip
        record = wait_for(lambda: [i for i in slug_instances(server, "client-ctx") if i["status"] == "Healthy"], 5,
                          "the ttl heartbeat to make it Healthy")[0]  # fmt: skip
        assert record["id"] == me.id
        assert record["tags"] == ["a"]
        time.sleep(2.5)  # over two TTLs: the heartbeats keep it Healthy
        assert slug_instances(server, "client-ctx")[0]["status"] == "Healthy"
    assert slug_instances(server, "client-ctx") == []


def test_a_refused_registration_raises_with_the_servers_message(server: Server) -> None:
    with pytest.raises(RegistryError) as refused:
        Registration("not a url", slug="client-bad", registry=server.url, token=server.admin_token).start()
    assert refused.value.status == 400
    assert "url" in refused.value.message
    with pytest.raises(RegistryError) as unauthorized:
        Registration("http://127.0.0.1:1", slug="client-bad", registry=server.url, token="rsv_nope").start()
    assert unauthorized.value.status == 401


SIGTERM_SCRIPT = """
import sys, time
from registry_svc.client import Registration
reg = Registration(sys.argv[1], slug="client-sigterm", registry=sys.argv[2], token=sys.argv[3], ttl=1,
                   drain_seconds=0.3).start()
print(reg.id, flush=True)
while True:
    time.sleep(1)
"""


def test_sigterm_drains_then_deregisters_the_process_instance(server: Server, tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text(SIGTERM_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), f"http://127.0.0.1:{free_port()}", server.url, server.admin_token],
        stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    assert proc.stdout is not None
    instance_id = proc.stdout.readline().strip()
    wait_for(lambda: [i for i in slug_instances(server, "client-sigterm") if i["status"] == "Healthy"], 5, "Healthy")
    proc.send_signal(signal.SIGTERM)
    seen_stopping = wait_for(
        lambda: (
            proc.poll() is not None or any(i["status"] == "Stopping" for i in slug_instances(server, "client-sigterm"))
        ),
        5,
        "the drain",
    )
    assert seen_stopping
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    assert server.call("GET", f"/registry-svc/instance/{instance_id}").status == 404


def test_a_resolver_follows_adds_and_removals_and_serves_through_a_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    try:
        token = server.admin_token

        def register(port: int) -> str:
            reply = server.register(
                {"url": f"http://127.0.0.1:{port}", "slug": "resolved", "healthCheck": {"type": "none"}}
            )
            assert reply.status == 201
            return str(reply.json["instance"]["id"])

        with Resolver("resolved", registry=server.url, token=token) as resolver:
            with pytest.raises(LookupError):
                resolver.pick()
            first, second = register(free_port()), register(free_port())
            wait_for(lambda: len(resolver.instances()) == 2, 5, "the resolver to see both")
            picked = {resolver.pick().id for _ in range(10)}
            assert picked == {first, second}  # round robin over both, locally
            assert server.call("DELETE", f"/registry-svc/instance/{second}").status == 204
            wait_for(lambda: len(resolver.instances()) == 1, 5, "the resolver to drop the removed one")
            assert {resolver.pick().id for _ in range(5)} == {first}
            # The server goes away: the last good list keeps serving.
            server.kill9()
            time.sleep(0.5)
            assert resolver.pick().id == first
            assert resolver.last_error is not None
            server.start()
            third = register(free_port())
            wait_for(lambda: len(resolver.instances()) == 2, 10, "the resolver to follow after the restart")
            assert {resolver.pick().id for _ in range(10)} == {first, third}
            assert resolver.last_error is None
    finally:
        server.kill9()


def open_files() -> set[str]:
    """The files (not sockets, pipes or devices) this process holds open."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            held.add(target)
    return held


def test_a_resolver_holds_its_instances_in_memory_not_in_a_store(server: Server) -> None:
    """Review finding 11: a resolver used to open a private LMDB store (a temp dir, a map,
    a balancer table) per slug."""
    before = open_files()
    assert server.register({"url": f"http://127.0.0.1:{free_port()}", "slug": "in-memory",
                            "healthCheck": {"type": "none"}}).status == 201  # fmt: skip
    with Resolver("in-memory", registry=server.url, token=server.admin_token) as resolver:
        assert len(resolver.instances()) == 1
        assert resolver.pick().url.startswith("http://127.0.0.1:")
        assert open_files() - before == set()


def instance(id_: str, **fields: Any) -> bytes:
    import orjson

    return orjson.dumps({"id": id_, "url": f"http://127.0.0.1:{9000 + int(id_[1:])}", "status": "Healthy", **fields})


def test_the_picker_selects_as_the_server_does_over_a_list_in_memory() -> None:
    picker = _core.Picker("s")
    with pytest.raises(_core.NotFoundError):
        picker.pick()
    assert picker.replace([instance("i2"), instance("i1"), instance("i3", status="Unhealthy")]) == 3
    assert len(picker) == 3
    assert [picker.pick()[0] for _ in range(4)] == ["i1", "i2", "i1", "i2"]  # round robin, id order
    # A new list keeps the round robin's count (4 picks so far: the fifth takes the second).
    picker.replace([instance("i1"), instance("i2"), instance("i4")])
    assert [picker.pick()[0] for _ in range(3)] == ["i2", "i4", "i1"]
    # Zones and tags filter; Unknown is used only when nothing is Healthy.
    picker.replace([instance("i1", zone="a", tags=["x"]), instance("i2", zone="b"), instance("i3", status="Unknown")])
    assert picker.pick(zone="b")[0] == "i2"
    assert picker.pick(tags=["x"])[0] == "i1"
    assert {picker.pick()[0] for _ in range(6)} == {"i1", "i2"}
    picker.replace([instance("i3", status="Unknown")])
    assert picker.pick() == ("i3", "http://127.0.0.1:9003")
    picker.replace([instance("i1", status="Unhealthy"), instance("i2", maintenance={"reason": "x"})])
    with pytest.raises(_core.NoRoutableError):
        picker.pick()
    # A list with something that is not an instance changes nothing.
    with pytest.raises(ValueError, match=r"instances\[1\]"):
        picker.replace([instance("i5"), b'{"id": "no-url"}'])
    assert len(picker) == 2
    with pytest.raises(ValueError, match="unknown policy"):
        _core.Picker("s", "fastest")
    hashed = _core.Picker("s", "consistent_hash")
    hashed.replace([instance(f"i{n}") for n in range(1, 9)])
    assert len({hashed.pick(key="user-7")[0] for _ in range(5)}) == 1


def test_the_client_imports_without_the_server_stack() -> None:
    """Robyn, psutil, pynvml, click and yaml are the server's: the client needs none of them."""
    script = (
        "import sys\n"
        "for name in ('robyn', 'psutil', 'pynvml', 'click', 'yaml', 'urllib3'):\n"
        "    sys.modules[name] = None  # an import of any of them now fails\n"
        "from registry_svc.client import Registration, Resolver\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
