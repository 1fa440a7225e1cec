"""Per-slug proxy settings (the first-hour issue, item 13): `stripPrefix`, `retries` and
`timeoutSeconds`, set with `PUT /registry-svc/routing/{slug}`, obeyed by the gates on both
ports, and shown by `oo services SLUG`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from test_first_hour import User

from conftest import NO_CHECK, LoopbackHTTP, Server, free_port


class PathEcho(LoopbackHTTP):
    """A loopback upstream answering every GET with the path it got; `/slow...` waits 2 s first."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if "/slow" in self.path:
                    time.sleep(2)
                body = self.path.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def echo() -> Iterator[PathEcho]:
    upstream = PathEcho()
    yield upstream
    upstream.close()


def route(server: Server, slug: str, body: dict[str, Any], token: Any = None) -> Any:
    kwargs = {} if token is None else {"token": token}
    return server.call("PUT", f"/registry-svc/routing/{slug}", body, **kwargs)


@pytest.mark.parametrize("data_port", [False, True], ids=["api-port", "data-port"])
def test_strip_prefix_cuts_the_slug_from_the_forwarded_path(server: Server, echo: PathEcho, data_port: bool) -> None:
    slug = f"strip-{int(data_port)}"
    server.register({"url": echo.url, "slug": slug, "healthCheck": NO_CHECK})
    kept = server.call("GET", f"/{slug}/api/items?x=1", data_port=data_port)
    assert (kept.status, kept.body) == (200, f"/{slug}/api/items?x=1".encode())
    set_ = route(server, slug, {"stripPrefix": True})
    assert set_.status == 201, set_.body
    assert set_.json["routing"] == {"slug": slug, "policy": "round_robin", "ownPolicy": False, "stripPrefix": True, "retries": 1,
                                    "timeoutSeconds": 60.0, "custom": True,
                                    "loadWeights": {"queued": 2, "running": 2, "kvCache": 1}}  # fmt: skip
    for path, upstream in ((f"/{slug}/api/items?x=1", b"/api/items?x=1"), (f"/{slug}", b"/"), (f"/{slug}?q", b"/?q")):
        got = server.call("GET", path, data_port=data_port)
        assert (got.status, got.body) == (200, upstream), path
    assert server.call("DELETE", f"/registry-svc/routing/{slug}").status == 204
    back = server.call("GET", f"/{slug}/api", data_port=data_port)
    assert back.body == f"/{slug}/api".encode(), "deleting the settings puts the slug back in the path"


def test_retries_try_other_instances_only_as_often_as_the_slug_allows(server: Server, echo: PathEcho) -> None:
    """Two instances refuse connections, one answers (round robin). With `retries: 0` the
    first refusal is the client's 502; with `retries: 2` every GET is answered. (Few
    requests: five failures in a row would eject the refusing instances.)"""
    for url in (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}", echo.url):
        server.register({"url": url, "slug": "flaky", "healthCheck": NO_CHECK})
    assert route(server, "flaky", {"retries": 0}).status == 201
    statuses = sorted(server.call("GET", "/flaky/x").status for _ in range(3))
    assert statuses == [200, 502, 502], statuses
    assert route(server, "flaky", {"retries": 2}).status == 200
    assert [server.call("GET", "/flaky/x").status for _ in range(3)] == [200] * 3


def test_a_slugs_timeout_replaces_the_servers(server: Server, echo: PathEcho) -> None:
    server.register({"url": echo.url, "slug": "slowpoke", "healthCheck": NO_CHECK})
    assert route(server, "slowpoke", {"timeoutSeconds": 0.5}).status == 201
    started = time.monotonic()
    late = server.call("GET", "/slowpoke/slow", data_port=True)
    assert late.status == 504 and "did not answer within 0.5s" in late.json["error"], late.body
    assert time.monotonic() - started < 1.9, "answered before the upstream did"
    assert route(server, "slowpoke", {"timeoutSeconds": 5}).status == 200
    assert server.call("GET", "/slowpoke/slow").body == b"/slowpoke/slow"


def test_bad_settings_are_refused_naming_the_field_and_change_nothing(server: Server) -> None:
    assert route(server, "guarded", {"retries": 2}).status == 201
    for body, field in (({"retries": 9}, "retries"), ({"retries": "2"}, "retries"), ({"stripPrefix": 1}, "stripPrefix"),
                        ({"timeoutSeconds": 0}, "timeoutSeconds"), ({"timeoutSeconds": 7200}, "timeoutSeconds"),
                        ({"timeout": 3}, "timeout")):  # fmt: skip
        refused = route(server, "guarded", body)
        assert refused.status == 400 and refused.json["error"].startswith(f"{field}:"), (body, refused.body)
    assert server.call("PUT", "/registry-svc/routing/Not_A_Slug", {}).json["error"].startswith("slug:")
    assert server.call("GET", "/registry-svc/routing/guarded").json["routing"]["retries"] == 2


def test_only_an_admin_sets_them_and_a_service_sees_its_own(server: Server) -> None:
    mine = server.token("service", "svc-own")
    assert route(server, "svc-own", {"retries": 0}, token=mine).status == 403
    assert route(server, "svc-own", {"retries": 0}, token=None).status == 201  # the admin's
    assert server.call("GET", "/registry-svc/routing/svc-own", token=mine).json["routing"]["retries"] == 0
    assert server.call("GET", "/registry-svc/routing/guarded", token=mine).status == 404
    listed = server.call("GET", "/registry-svc/routing", token=mine).json
    assert set(listed["slugRoutes"]) == {"svc-own"}
    assert "guarded" in server.call("GET", "/registry-svc/routing").json["slugRoutes"]
    assert server.call("DELETE", "/registry-svc/routing/never-set").status == 404


def test_oo_sets_and_shows_a_slugs_proxy_settings(tmp_path: Path, server: Server, echo: PathEcho) -> None:
    user = User(tmp_path / "home")
    env = {"OB_SERVER_URL": server.url, "OB_TOKEN": server.admin_token}
    server.register({"url": echo.url, "slug": "shown", "healthCheck": NO_CHECK})
    set_ = user.oo("routing", "shown", "--strip-prefix", "--retries", "3", "--timeout", "7.5", **env)
    assert set_.code == 0, set_.err
    shown = user.oo("services", "shown", **env)
    assert shown.code == 0, shown.err
    assert "strip prefix: yes" in shown.out and "retries: 3" in shown.out and "timeout: 7.5s" in shown.out, shown.out
    assert server.call("GET", "/shown/a").body == b"/a"
    reset = user.oo("routing", "shown", "--reset", **env)
    assert reset.code == 0, reset.err
    assert "strip prefix: no" in user.oo("services", "shown", **env).out
