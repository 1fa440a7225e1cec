"""The first hour of a new user: what a Consul or etcdctl user tripped on, driven through
the real `oo` binary and real HTTP against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_cli import OO, Run, ok
from test_health import Backend, wait_until

from conftest import NO_CHECK, Server

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "registry-svc.md"
# The product page's troubleshooting script, cut out verbatim (checked against the page
# below whenever shared/ is beside the checkout, as in CI).
NODE_CONNECTIVITY = Path(__file__).parent / "data" / "node_connectivity.sh"


class User:
    """A shell user with their own home (so `oo login` state is theirs) and no OB_* set."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}

    def oo(self, *args: str, stdin: str | None = None, **env: str) -> Run:
        done = subprocess.run(
            [OO, *args], env={**self.env, **env}, input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
        return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("first-hour"), args=["--heartbeat-seconds", "0.5"]).start()
    yield server
    server.kill9()


@pytest.fixture
def user(tmp_path: Path, srv: Server) -> User:
    u = User(tmp_path / "home")
    u.env["OB_SERVER_URL"] = srv.url
    u.env["OB_TOKEN"] = srv.admin_token
    return u


# --- the docs ----------------------------------------------------------------------------


def test_the_product_pages_node_connectivity_script_runs_verbatim(srv: Server, user: User) -> None:
    script = NODE_CONNECTIVITY.read_text()
    if SEED.exists():
        page = SEED.read_text()
        start = page.index("test_node_connectivity() {")
        assert script == page[start : page.index("```", start)], "tests/data/node_connectivity.sh drifted from the page"
    assert 'curl -fsSL --max-time 5 "$node_url/registry-svc/node/self"' in script  # no token: verbatim
    done = subprocess.run(
        ["bash", "-c", script], env={**user.env, "PATH": f"{Path(OO).parent}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert f"Testing node: {srv.url}" in done.stdout, done.stdout + done.stderr
    assert "✅ Node responds" in done.stdout and "✅ Registry API accessible" in done.stdout, done.stdout


def test_make_install_cli_links_oo_onto_the_path(tmp_path: Path) -> None:
    """`oo` lives in the venv; `make install-cli` links it into ~/.local/bin."""
    repo = Path(__file__).resolve().parent.parent
    home = tmp_path / "home"
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    # -o build: the extension is built already (rebuilding it under running tests would not do).
    done = subprocess.run(
        ["make", "-s", "-o", "build", "install-cli"], cwd=repo, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "add " + str(home / ".local/bin") + " to PATH" in done.stdout
    linked = home / ".local" / "bin" / "oo"
    assert linked.resolve() == Path(OO).resolve()
    version = subprocess.run([str(linked), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("oo "), version.stdout + version.stderr


def test_node_self_is_public_and_other_node_endpoints_are_not(srv: Server) -> None:
    own = srv.call("GET", "/registry-svc/node/self", token=None)
    assert own.status == 200 and own.json["node"]["url"] == srv.url
    assert srv.call("POST", "/registry-svc/nodes", token=None).status == 401
    assert srv.call("DELETE", "/registry-svc/node/http%3A%2F%2Fx%3A1", token=None).status == 401


# --- oo: login, context, hints, global options -----------------------------------------------


def test_login_remembers_the_server_in_any_spelling(tmp_path: Path, srv: Server) -> None:
    u = User(tmp_path / "home")
    # No http://, `localhost`: the same server as http://127.0.0.1:PORT.
    ok(u.oo("--url", f"localhost:{srv.port}", "login", srv.admin_token))
    ok(u.oo("services"))  # no --url, no OB_SERVER_URL: the current context
    listed = ok(u.oo("--url", f"http://127.0.0.1:{srv.port}/", "nodes", "ls", "-o", "json")).json
    assert [n["url"] for n in listed["nodes"]] == [srv.url]  # type: ignore[index]
    config = json.loads((tmp_path / "home" / ".config" / "registry-svc" / "cli.json").read_text())
    assert config["current"] == srv.url
    run = u.oo("i", "ls")
    assert "Warning" not in run.err and run.code == 0


def test_a_401_says_how_to_fix_it(tmp_path: Path, srv: Server) -> None:
    u = User(tmp_path / "home")
    run = u.oo("--url", srv.url, "--token", "rsv_wrong", "i", "ls")
    assert run.code == 1 and "HTTP 401" in run.err
    for hint in ("oo login TOKEN", "OB_TOKEN", "--token", "admin.token"):
        assert hint in run.err, run.err


def test_url_token_and_output_work_after_the_subcommand(tmp_path: Path, srv: Server) -> None:
    u = User(tmp_path / "home")
    listed = ok(u.oo("i", "ls", "--url", srv.url, "--token", srv.admin_token, "-o", "json")).json
    assert "instances" in listed  # type: ignore[operator]
    ok(u.oo("nodes", "ls", f"--url={srv.url}", f"--token={srv.admin_token}"))


# --- oo: tables and filters ------------------------------------------------------------------


def test_tables_show_status_reason_tags_and_say_when_empty(srv: Server, user: User) -> None:
    assert ok(user.oo("i", "ls", "--slug", "nothing-here")).out == "no instances match\n"
    srv.register({"url": "http://tbl-1:80", "slug": "tbl", "tags": ["a", "b"], "status": "Starting",
                  "healthCheck": NO_CHECK})  # fmt: skip
    table = ok(user.oo("i", "ls", "--slug", "tbl")).out.splitlines()
    assert table[0].split() == ["ID", "URL", "STATUS", "REASON", "SLUG", "TAGS", "NODE", "LAST", "HEARTBEAT"]
    assert "Starting" in table[1] and "set at registration" in table[1] and "a,b" in table[1]
    nodes = ok(user.oo("n", "ls")).out.splitlines()
    assert nodes[0].split()[2] == "STATUS" and "Healthy" in nodes[1]


def test_every_api_filter_has_a_flag(srv: Server, user: User) -> None:
    srv.register({"url": "http://filt-name:80", "slug": "flags", "deploymentId": "depl_x", "zone": "z9",
                  "nodeUrl": "http://node-f:11337", "tags": ["solo"], "healthCheck": NO_CHECK})  # fmt: skip
    srv.register({"ip": "10.20.30.40", "port": 80, "slug": "flags", "healthCheck": NO_CHECK})

    def urls(*flags: str) -> set[str]:
        data = ok(user.oo("i", "ls", "--slug", "flags", *flags, "-o", "json")).json
        return {i["url"] for i in data["instances"]}  # type: ignore[index]

    assert urls("--deployment", "depl_x") == urls("--zone", "z9") == urls("--tags=solo") == {"http://filt-name"}
    assert urls("--node", "http://node-f:11337") == {"http://filt-name"}
    assert urls("--ip", "10.20.30.40") == urls("--host", "10.20.30.40") == {"http://10.20.30.40"}
    assert urls("--scheme", "http") == {"http://filt-name", "http://10.20.30.40"}


# --- oo: new verbs ---------------------------------------------------------------------------


def test_services_counts_instances_by_status(srv: Server, user: User) -> None:
    for i, status in enumerate(["Healthy", "Healthy", "Unhealthy"]):
        srv.register({"url": f"http://svc-count-{i}:80", "slug": "counted", "status": status, "healthCheck": NO_CHECK})
    rows = {r["slug"]: r for r in ok(user.oo("services", "-o", "json")).json["services"]}  # type: ignore[index]
    assert (rows["counted"]["instances"], rows["counted"]["Healthy"], rows["counted"]["Unhealthy"]) == (3, 2, 1)
    table = ok(user.oo("services")).out.splitlines()
    assert table[0].split()[:4] == ["SLUG", "INSTANCES", "HEALTHY", "UNHEALTHY"]
    assert any(line.split()[:4] == ["counted", "3", "2", "1"] for line in table)


def test_instance_verbs_register_get_heartbeat_drain_and_pick(tmp_path: Path, srv: Server, user: User) -> None:
    backend = Backend().start()
    try:
        spec = tmp_path / "instances.yaml"
        spec.write_text(
            f"url: http://127.0.0.1:{backend.port}\nslug: verbs\nhealthCheck: {{type: http, intervalSeconds: 1}}\n"
            "---\n- {url: 'http://verbs-extra:80', slug: verbs, healthCheck: {type: none}}\n"
        )
        out = ok(user.oo("instances", "register", "-f", str(spec))).out.splitlines()
        assert len(out) == 2 and all(line.startswith("registered instance inst_") for line in out)
        piped = ok(user.oo("i", "register", "-f", "-", stdin=json.dumps({"url": "http://verbs-stdin:80",
                                                                           "slug": "verbs", "healthCheck": NO_CHECK})))  # fmt: skip
        assert piped.out.startswith("registered instance")
        iid = out[0].split()[2]
        wait_until(lambda: "Healthy" in ok(user.oo("i", "get", iid)).out, what="Healthy")
        got = ok(user.oo("i", "get", iid, "-o", "json")).json["instance"]  # type: ignore[index]
        assert got["url"] == f"http://127.0.0.1:{backend.port}"
        picked = ok(user.oo("pick", "verbs", "-o", "json")).json["instance"]  # type: ignore[index]
        assert picked["id"] == iid  # the only Healthy one
        assert ok(user.oo("i", "heartbeat", iid, "--status", "Starting")).out.strip() == f"instance {iid}: Starting"
        assert ok(user.oo("i", "drain", iid)).out.strip() == f"instance {iid}: Stopping"
        # Drained: never picked again (the Unknown ones are, now that none is Healthy).
        again = {ok(user.oo("pick", "verbs", "-o", "json")).json["instance"]["id"] for _ in range(4)}  # type: ignore[index]
        assert iid not in again
    finally:
        backend.stop()


def test_yaml_output_tags_and_the_service_detail_view(srv: Server, user: User) -> None:
    srv.register({"url": "http://127.0.0.61:8080", "slug": "verbs-y", "tags": ["gpu", "v2"], "healthCheck": NO_CHECK})
    srv.register({"url": "http://127.0.0.62:8080", "slug": "verbs-y", "tags": ["v2"], "healthCheck": NO_CHECK})
    srv.call("PUT", "/registry-svc/definition", {"definition": {"id": "verbs-y", "image": {"name": "nginx:1.27"}}})
    for args in (("i", "ls", "--slug", "verbs-y"), ("services",), ("tokens", "ls"), ("tags",)):
        as_json = json.loads(ok(user.oo(*args, "-o", "json")).out)
        assert yaml.safe_load(ok(user.oo(*args, "-o", "yaml")).out) == as_json, args
    tags = {t["tag"]: t for t in json.loads(ok(user.oo("tags", "-o", "json")).out)["tags"]}
    assert tags["v2"]["instances"] >= 2 and "verbs-y" in tags["v2"]["slugs"] and tags["gpu"]["instances"] >= 1
    assert re.search(r"^gpu\s+\d+\s+\S*verbs-y", ok(user.oo("tags")).out, re.MULTILINE)
    detail = ok(user.oo("services", "verbs-y")).out
    assert "policy:      round_robin (the default)" in detail and "definition:  verbs-y (image nginx:1.27)" in detail
    assert "instances:   2" in detail and "http://127.0.0.61:8080" in detail and "none every 10s" in detail
    data = json.loads(ok(user.oo("services", "verbs-y", "-o", "json")).out)
    assert data["policy"] == "round_robin" and len(data["instances"]) == 2 and data["definition"]["id"] == "verbs-y"
    assert user.oo("services", "no-such-svc").code == 1


def test_bulk_removal_lists_then_needs_a_yes(srv: Server, user: User) -> None:
    bad = srv.register(
        {"url": "http://127.0.0.71:80", "slug": "verbs-rm", "healthCheck": NO_CHECK, "status": "Unhealthy"}
    )
    good = srv.register(
        {"url": "http://127.0.0.72:80", "slug": "verbs-rm", "healthCheck": NO_CHECK, "status": "Healthy"}
    )
    bad_id, good_id = bad.json["instance"]["id"], good.json["instance"]["id"]
    refused = user.oo("i", "rm", "--slug", "verbs-rm", "--status", "Unhealthy")  # no terminal to ask on
    assert refused.code == 1 and bad_id in refused.out and "--yes" in refused.err, refused
    assert srv.call("GET", f"/registry-svc/instance/{bad_id}").status == 200  # nothing removed
    done = ok(user.oo("i", "rm", "--slug", "verbs-rm", "--status", "Unhealthy", "--yes"))
    assert f"removed instance {bad_id}" in done.out
    assert srv.call("GET", f"/registry-svc/instance/{bad_id}").status == 404
    assert srv.call("GET", f"/registry-svc/instance/{good_id}").status == 200
    assert user.oo("i", "rm").code == 1 and user.oo("i", "rm", good_id, "--slug", "x").code == 1


def test_ls_watch_prints_the_table_again_when_it_changes(srv: Server, user: User) -> None:
    proc = subprocess.Popen(
        [OO, "i", "ls", "-w", "--slug", "verbs-w"], env=user.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("-- ")  # the first table
        assert proc.stdout.readline().strip() == "no instances match"
        srv.register({"url": "http://127.0.0.81:8080", "slug": "verbs-w", "healthCheck": NO_CHECK})
        assert proc.stdout.readline().startswith("-- ")
        assert proc.stdout.readline().startswith("ID ")
        assert "http://127.0.0.81:8080" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_register_file_format_is_shown_in_the_help(user: User) -> None:
    shown = ok(user.oo("i", "register", "--help")).out
    assert "  url: http://127.0.0.1:8081\n" in shown and "healthCheck: {type: http" in shown, shown


def test_definition_verbs_get_stdin_and_dry_run(tmp_path: Path, srv: Server, user: User) -> None:
    good = "id: dry-svc\nimage:\n  name: nginx:1.27\n  internalPorts: [80]\n"
    checked = ok(user.oo("def", "save", "--dry-run", "-", stdin=good))
    assert checked.out.strip() == "valid definition dry-svc (stdin)"
    assert srv.call("GET", "/registry-svc/definition/dry-svc").status == 404  # nothing saved
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad-svc\nimage:\n  name: nginx\n  internalPorts: [70000]\n")
    run = user.oo("def", "save", "--dry-run", str(bad))
    assert run.code == 1 and re.search(rf"{re.escape(str(bad))}: image\.internalPorts\[0\]: ", run.err), run.err
    # Every problem of every document, each with its field, not just the first one.
    several = tmp_path / "several.yaml"
    several.write_text(
        "id: Bad_Id\nimage:\n  name: nginx\n  internalPorts: [70000, 0]\n---\n"
        "id: fine-svc\nimage:\n  name: nginx\n---\nid: worse-svc\nimage: {}\n"
    )
    run = user.oo("def", "save", "--dry-run", str(several))
    assert run.code == 1, run
    problems = [line for line in run.err.splitlines() if line.startswith(f"{several} (document")]
    assert any("(document 1): id: " in p for p in problems), run.err
    assert any("(document 1): image.internalPorts[0]: " in p for p in problems), run.err
    assert any("(document 1): image.internalPorts[1]: " in p for p in problems), run.err
    assert any("(document 3): image.name: " in p for p in problems), run.err
    assert "valid definition fine-svc" in run.out and "2 definition(s) refused" in run.err
    ok(user.oo("def", "save", "-", stdin=good))
    shown = ok(user.oo("def", "get", "dry-svc")).out
    assert shown.startswith("id: dry-svc") and "nginx:1.27" in shown


def test_token_creation_shows_the_id_and_warns_once(srv: Server, user: User) -> None:
    created = ok(user.oo("tokens", "create", "--role", "proxy"))
    assert re.fullmatch(r"rsv_\S+\n", created.out)  # piped: the secret alone on stdout
    assert re.search(r"token tok_[0-9a-f]+ \(proxy\): the secret above is shown only once", created.err)


def test_versions_of_oo_server_and_api(srv: Server, user: User) -> None:
    info = srv.call("GET", "/version", token=None).json
    assert set(info) == {"version", "commit", "python", "core"} and info["version"] == "0.1.0"
    assert info["core"].startswith("registry-svc-core 0.1.0")
    for args in (["version"], ["--version"]):
        out = ok(user.oo(*args)).out
        assert out.startswith("oo 0.1.0 (commit ") and f"server {srv.url}: registry-svc 0.1.0" in out
    done = subprocess.run([str(Path(OO).parent / "registry-svc"), "--version"], capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    assert done.stdout.startswith("registry-svc 0.1.0 (commit ")


def test_removing_the_node_you_talk_to_needs_force_and_it_returns_with_its_id(srv: Server, user: User) -> None:
    own = srv.call("GET", "/registry-svc/node/self").json["node"]
    run = user.oo("n", "rm", srv.url)
    assert run.code == 1 and "--force" in run.err
    ok(user.oo("n", "rm", srv.url, "--force"))
    back = wait_until(
        lambda: (r := srv.call("GET", "/registry-svc/node/self")).status == 200 and r.json["node"], what="back"
    )
    assert back["id"] == own["id"]


def test_unknown_registry_paths_say_no_such_endpoint(srv: Server) -> None:
    reply = srv.call("GET", "/registry-svc/nope")
    assert reply.status == 404 and reply.json["error"] == "no such endpoint: GET /registry-svc/nope"


# --- clients written for 1Backend -----------------------------------------------------------


def test_a_bare_token_without_bearer_is_accepted(srv: Server) -> None:
    reply = srv.call("GET", "/registry-svc/instances", token=None, headers={"Authorization": srv.admin_token})
    assert reply.status == 200
    assert srv.call("GET", "/registry-svc/instances", token=None, headers={"Authorization": "rsv_nope"}).status == 401


def test_scheme_filter_echo_details_and_an_empty_url_with_parts(srv: Server) -> None:
    secure = srv.register({"url": "https://sch-1:8443", "slug": "sch", "healthCheck": NO_CHECK}).json["instance"]
    srv.register({"url": "http://sch-2:80", "slug": "sch", "healthCheck": NO_CHECK})
    listed = srv.call("GET", "/registry-svc/instances?slug=sch&scheme=https").json["instances"]
    assert [i["id"] for i in listed] == [secure["id"]]
    assert srv.call("GET", "/registry-svc/echo?a=1&b=two", token=None).json == {"a": "1", "b": "two"}
    for method in ("POST", "PUT"):
        assert srv.call(method, "/registry-svc/echo", {"x": [1, 2]}, token=None).json == {"x": [1, 2]}
    assert srv.call("POST", "/registry-svc/echo", raw=b"{nope", token=None).status == 400
    down = srv.register({"url": "http://det:1", "slug": "sch", "status": "Unhealthy", "healthCheck": NO_CHECK})
    assert down.json["instance"]["details"] == down.json["instance"]["statusReason"] == "set at registration"
    parts = srv.register({"url": "", "host": "by-parts", "port": 81, "slug": "sch", "healthCheck": NO_CHECK})
    assert parts.status == 201 and parts.json["instance"]["url"] == "http://by-parts:81"
    assert srv.register({"url": "", "slug": "sch", "healthCheck": NO_CHECK}).status == 400


# --- the server log ----------------------------------------------------------------------


def test_the_log_has_transitions_tokens_and_configuration_and_no_secret(srv: Server) -> None:
    created = srv.call("POST", "/registry-svc/tokens", {"role": "proxy"}).json
    srv.call("DELETE", f"/registry-svc/token/{created['info']['id']}")
    inst = srv.register({"url": "http://logged:1", "slug": "logs", "healthCheck": NO_CHECK}).json["instance"]
    srv.call("PUT", f"/registry-svc/instance/{inst['id']}/heartbeat", {"status": "Stopping"})
    time.sleep(0.5)
    log = srv.log_path.read_text()
    assert "registry-svc configuration: processes=1" in log and "probe_networks=127.0.0.0/8,::1/128" in log
    assert f"token {created['info']['id']} created (role proxy)" in log
    assert f"token {created['info']['id']} revoked" in log
    # A drain says who drained it (by token id, never the secret).
    drained = rf"instance {inst['id']} \(http://logged:1\): Unknown -> Stopping \(drained by token tok_[0-9a-f]{{16}}\)"
    assert re.search(drained, log), log[-2000:]
    assert created["token"] not in log and srv.admin_token not in log


def test_log_level_warning_keeps_info_out(tmp_path: Path) -> None:
    quiet = Server(tmp_path / "data", args=["--log-level", "warning"]).start()
    try:
        quiet.call("POST", "/registry-svc/tokens", {"role": "proxy"})
        time.sleep(0.3)
        log = quiet.log_path.read_text()
        assert "configuration:" not in log and "created (role" not in log
        assert "listening on" not in log  # a start is news, not a warning
    finally:
        quiet.kill9()
