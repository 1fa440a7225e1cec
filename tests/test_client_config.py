"""One configuration for `oo` and `registry_svc.client` (the first-hour issue, item 5), the
installable wheel, and what both say while a server is starting (item 7)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import OO
from test_first_hour import User

from conftest import Server, free_port

REPO = Path(__file__).resolve().parent.parent

# Registers this process's instance with no registry URL and no token given: the client
# finds both the way `oo` does. Prints where the package came from, then the instance id.
CLIENT_SCRIPT = """
import registry_svc
from registry_svc.client import Registration, RegistryError
print(registry_svc.__file__, flush=True)
try:
    with Registration("http://127.0.0.1:{port}", slug="cfg-{name}", ttl=5, drain_seconds=0, handle_sigterm=False) as me:
        print("registered", me.id, flush=True)
except RegistryError as e:
    print("refused", e.status, e.message, flush=True)
"""


def run_client(user: User, name: str, *, pythonpath: str = "", cwd: Path | None = None, **env: str) -> str:
    script = CLIENT_SCRIPT.format(port=free_port(), name=name)
    environ = {**user.env, **env}
    if pythonpath:
        environ["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", script], env=environ, cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("client-config")).start()
    yield server
    server.kill9()


def test_the_client_uses_oo_logins_server_and_token(tmp_path: Path, srv: Server) -> None:
    user = User(tmp_path / "home")
    refused = run_client(user, "before", OB_SERVER_URL=srv.url)
    # No token anywhere (a server on this machine, but not this user's admin token file):
    # the 401 says how to give one.
    assert "refused 401" in refused, refused
    assert "no token was sent" in refused and "oo login TOKEN" in refused and "RegistryClient(token=...)" in refused
    login = user.oo("login", srv.admin_token, "--url", srv.url.replace("127.0.0.1", "localhost"))
    assert login.code == 0, login.err
    # Neither OB_SERVER_URL nor a token: the server and token of the last `oo login`.
    out = run_client(user, "login")
    assert "registered inst_" in out, out
    assert "registered" in run_client(user, "old-name", OB_REGISTRY_URL=srv.url), "the old variable name still works"


def test_the_client_uses_the_local_admin_token_file_like_oo(tmp_path: Path, srv: Server) -> None:
    user = User(tmp_path / "home")
    out = run_client(user, "local", OB_SERVER_URL=srv.url, REGISTRY_SVC_DATA_DIR=str(srv.data_dir))
    assert "registered inst_" in out, out
    listed = user.oo("i", "ls", "--slug", "cfg-local", "-o", "json", OB_SERVER_URL=srv.url,
                     REGISTRY_SVC_DATA_DIR=str(srv.data_dir))  # fmt: skip
    assert listed.code == 0, listed.err  # and `oo` finds the same token the same way


def test_make_wheel_installs_into_another_environment(tmp_path: Path, srv: Server) -> None:
    """`make wheel`, then the wheel installed elsewhere (here a target directory ahead of
    the checkout on the path) registers and resolves with its own extension."""
    wheels = tmp_path / "dist"
    done = subprocess.run(["make", "-s", "-o", "build", "wheel", f"WHEEL_DIR={wheels}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels.glob("registry_svc-*.whl")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                          str(wheel)], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert list((site / "registry_svc").glob("_core*.so")), "the wheel carries the Rust extension"
    user = User(tmp_path / "home")
    out = run_client(user, "wheel", pythonpath=str(site), cwd=tmp_path, OB_SERVER_URL=srv.url, OB_TOKEN=srv.admin_token)
    origin, registered = out.splitlines()[:2]
    assert origin.startswith(str(site)), f"imported {origin}, not the installed wheel"
    assert registered.startswith("registered inst_"), out


def test_health_says_starting_with_retry_after_until_the_workers_answer(tmp_path: Path) -> None:
    """Polled from the moment the process starts: connection refused, then 503
    {"status":"starting"} with Retry-After while only the gate is up, then 200; never a 502."""
    server = Server(tmp_path / "data")
    log = server.log_path.open("ab")
    server.proc = subprocess.Popen(server.command(), env={**os.environ, "OB_SELF_URL": ""}, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    seen: list[tuple[int, bytes, str | None]] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (seen and seen[-1][0] == 200):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            try:
                conn.request("GET", "/health")
                reply = conn.getresponse()
                seen.append((reply.status, reply.read(), reply.getheader("retry-after")))
            except OSError:
                time.sleep(0.005)  # not listening yet
            finally:
                conn.close()
    finally:
        server.kill9()
        log.close()
    assert seen and seen[-1][0] == 200, seen[-3:]
    early = seen[:-1]
    assert early, "the gate listens before the workers answer; its answer then was never seen"
    assert {(status, body, retry) for status, body, retry in early} == {(503, b'{"status":"starting"}', "1")}, early


def test_oo_says_the_server_is_starting_rather_than_an_error(tmp_path: Path) -> None:
    """`oo --version` against the gate before its workers answer, and `oo i watch` across a
    restart: "starting" and a retry, never a 502."""
    server = Server(tmp_path / "data").start()
    user = User(tmp_path / "home")
    env = {"OB_SERVER_URL": server.url, "OB_TOKEN": server.admin_token}
    watch = subprocess.Popen([OO, "i", "watch"], env={**user.env, **env},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(1)  # the watch has its first answer and blocks on the next
        server.stop()
        log = server.log_path.open("ab")
        server.proc = subprocess.Popen(server.command(), env={**os.environ, "OB_SELF_URL": ""}, stdout=log,
                                       stderr=subprocess.STDOUT)  # fmt: skip
        statuses = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            run = user.oo("--version", **env)
            statuses.append(run.out + run.err)
            if "registry-svc 0." in run.out:
                break
            time.sleep(0.02)
        added = server.register({"url": f"http://127.0.0.1:{free_port()}", "slug": "after-restart",
                         "healthCheck": {"type": "none"}}).json["instance"]  # fmt: skip
        time.sleep(3)  # the watch's backoff reaches the server again
    finally:
        watch.terminate()
        out, err = watch.communicate(timeout=10)
        server.kill9()
        log.close()
    assert f"ADDED    {added['id']}" in out, out + err
    assert "retrying" in err and "502" not in err, err
    assert not any("502" in s for s in statuses), statuses
