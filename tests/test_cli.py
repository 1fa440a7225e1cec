"""The real `oo` binary in a subprocess against a real server: every command and alias,
the product page's examples, tables, `-o json`, errors and exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Server, free_port, is_loopback_target

OO = str(Path(sys.executable).parent / "oo")
SEED_DEFINITIONS = Path(__file__).parent / "data" / "definitions"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> object:
        return json.loads(self.out)


def with_no_check_for_made_up_hosts(args: tuple[str, ...]) -> tuple[str, ...]:
    """The product page registers made-up hosts; tests never probe them (conftest.register
    does the same for HTTP calls)."""
    if args[:2] != ("put", "/registry-svc/instance") or any(a.startswith("--healthCheck") for a in args):
        return args
    fields = {a.split("=", 1)[0][2:]: a.split("=", 1)[1] for a in args[2:] if a.startswith("--") and "=" in a}
    return args if is_loopback_target(fields) else (*args, "--healthCheck.type=none")


@dataclass
class OoEnv:
    server: Server
    home: Path

    def __call__(self, *args: str, token: str | None = "admin", env: dict[str, str] | None = None) -> Run:
        args = with_no_check_for_made_up_hosts(args)
        environ = {
            "PATH": os.environ["PATH"], "HOME": str(self.home), "OB_SERVER_URL": self.server.url,
            "XDG_CONFIG_HOME": str(self.home / ".config"),
        }  # fmt: skip
        if token == "admin":
            environ["OB_TOKEN"] = self.server.admin_token
        elif token is not None:
            environ["OB_TOKEN"] = token
        environ.update(env or {})
        done = subprocess.run([OO, *args], env=environ, capture_output=True, text=True, timeout=60, check=False)
        return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def oo(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Iterator[OoEnv]:
    yield OoEnv(server, tmp_path_factory.mktemp("home"))


def ok(run: Run) -> Run:
    assert run.code == 0, (run.code, run.out, run.err)
    return run


# --- the product page's "HTTP API Usage" and registration examples ------------------------


def test_http_api_usage_examples(oo: OoEnv) -> None:
    reg = ok(oo("put", "/registry-svc/instance", "--url=http://user-service:8080", "--slug=user-svc"))
    assert reg.json["instance"]["slug"] == "user-svc"  # type: ignore[index]
    ok(oo("put", "/registry-svc/instance", "--url=http://api-server-1:8080", "--slug=api-svc"))
    assert len(ok(oo("get", "/registry-svc/instances")).json["instances"]) >= 2  # type: ignore[index]
    by_slug = ok(oo("get", "/registry-svc/instances?slug=user-svc")).json["instances"]  # type: ignore[index]
    assert [i["url"] for i in by_slug] == ["http://user-service:8080"]
    by_host = ok(oo("get", "/registry-svc/instances?host=api-server-1")).json["instances"]  # type: ignore[index]
    assert [i["url"] for i in by_host] == ["http://api-server-1:8080"]
    by_flag = ok(oo("get", "/registry-svc/instances", "--host=api-server-1")).json["instances"]  # type: ignore[index]
    assert [i["id"] for i in by_flag] == [i["id"] for i in by_host]  # status may move: health checks run
    definition = '{"id": "my-svc", "image": {"name": "nginx:latest", "internalPorts": [80]}}'
    saved = ok(oo("put", "/registry-svc/definition", f"--definition={definition}")).json
    assert saved == {"definition": json.loads(definition)}
    assert "my-svc" in ok(oo("get", "/registry-svc/definitions")).out
    assert ok(oo("post", "/registry-svc/nodes")).json["nodes"]  # type: ignore[index]
    assert ok(oo("get", "/registry-svc/node/self")).json["node"]["url"] == oo.server.url  # type: ignore[index]


def test_manual_instance_registration_examples(oo: OoEnv) -> None:
    custom = ok(oo("put", "/registry-svc/instance", "--id=inst_custom_123", "--url=http://api-service:8080",
                   "--deploymentId=depl_abc123")).json["instance"]  # type: ignore[index]  # fmt: skip
    assert (custom["id"], custom["deploymentId"]) == ("inst_custom_123", "depl_abc123")
    parts = ok(oo("put", "/registry-svc/instance", "--scheme=https", "--host=api.example.com", "--port=443",
                  "--path=/v1")).json["instance"]  # type: ignore[index]  # fmt: skip
    assert parts["url"] == "https://api.example.com/v1" and parts["port"] == 443
    by_ip = ok(oo("put", "/registry-svc/instance", "--scheme=http", "--ip=192.168.1.100", "--port=8080",
                 "--healthCheck.type=none")).json  # fmt: skip
    assert by_ip["instance"]["url"] == "http://192.168.1.100:8080"  # type: ignore[index]
    deployed = ok(oo("get", "/registry-svc/instances?deploymentId=depl_abc123")).json["instances"]  # type: ignore[index]
    assert [i["id"] for i in deployed] == ["inst_custom_123"]
    on_node = ok(oo("get", f"/registry-svc/instances?nodeUrl={oo.server.url}")).json["instances"]  # type: ignore[index]
    assert "inst_custom_123" in {i["id"] for i in on_node}


def test_multi_environment_examples_send_tags_as_arrays(oo: OoEnv) -> None:
    for port, tags in ((3001, '["dev", "user-service"]'), (3002, '["dev", "product-service"]')):
        inst = ok(oo("put", "/registry-svc/instance", f"--url=http://localhost:{port}", f"--tags={tags}")).json
        assert inst["instance"]["tags"] == json.loads(tags)  # type: ignore[index]
    staging = ok(oo("put", "/registry-svc/instance", "--url=http://staging-user-svc:8080",
                    '--tags=["staging", "user-service"]')).json  # fmt: skip
    assert staging["instance"]["tags"] == ["staging", "user-service"]  # type: ignore[index]
    dev = ok(oo("get", "/registry-svc/instances?tag=dev")).json["instances"]  # type: ignore[index]
    assert {i["url"] for i in dev} >= {"http://localhost:3001", "http://localhost:3002"}


def test_nested_keys_types_and_repeats(oo: OoEnv) -> None:
    inst = ok(oo("put", "/registry-svc/instance", "--url=http://127.0.0.1:1", "--slug=nested", "--weight=7",
                 "--healthCheck.type=http", "--healthCheck.path=/healthz", "--healthCheck.intervalSeconds=5",
                 "--tags=a", "--tags=b", "--metadata.version=\"2\"")).json["instance"]  # type: ignore[index]  # fmt: skip
    assert inst["weight"] == 7 and inst["tags"] == ["a", "b"] and inst["metadata"] == {"version": "2"}
    assert inst["healthCheck"]["type"] == "http" and inst["healthCheck"]["intervalSeconds"] == 5


# --- resource commands and their aliases --------------------------------------------------


@pytest.mark.parametrize("words", [["instances", "list"], ["instances", "ls"], ["i", "ls"], ["instance", "list"]])
def test_instance_list_aliases_print_a_table(oo: OoEnv, words: list[str]) -> None:
    ok(oo("put", "/registry-svc/instance", "--url=http://table-svc:80", "--slug=table-svc"))
    out = ok(oo(*words)).out.splitlines()
    assert out[0].split() == ["ID", "URL", "STATUS", "REASON", "SLUG", "TAGS", "NODE", "LAST", "HEARTBEAT"]
    row = next(line for line in out if "http://table-svc " in line + " ")
    assert "table-svc" in row and row.rstrip().endswith("ago")


def test_instance_list_filters_and_json_output(oo: OoEnv) -> None:
    ok(oo("put", "/registry-svc/instance", "--url=http://flt-1:80", "--slug=flt", "--status=Stopping",
          '--healthCheck={"type": "none"}'))  # fmt: skip
    ok(oo("put", "/registry-svc/instance", "--url=http://flt-2:80", "--slug=flt", '--healthCheck={"type": "none"}'))
    data = ok(oo("i", "ls", "--slug", "flt", "--status", "Stopping", "-o", "json")).json
    assert [i["url"] for i in data["instances"]] == ["http://flt-1"]  # type: ignore[index]
    table = ok(oo("i", "ls", "--slug", "flt")).out
    assert "http://flt-1 " in table and "http://flt-2 " in table


@pytest.mark.parametrize("words", [["instances", "remove"], ["instances", "rm"], ["i", "rm"]])
def test_instance_remove_aliases(oo: OoEnv, words: list[str]) -> None:
    inst = ok(oo("put", "/registry-svc/instance", f"--url=http://rm-{words[-1]}-{words[0]}:80")).json["instance"]  # type: ignore[index]
    assert "removed" in ok(oo(*words, inst["id"])).out
    missing = oo(*words, inst["id"])
    assert missing.code == 1 and "not found" in missing.err


def test_definitions_save_list_remove_with_aliases(oo: OoEnv, tmp_path: Path) -> None:
    for name in ("nginx-service.yaml", "api-service.yaml", "source-based-service.yaml"):
        assert "definition" in ok(oo("definitions", "save", str(SEED_DEFINITIONS / name))).out
    ok(oo("def", "save", str(SEED_DEFINITIONS / "user-service-def.yaml")))
    ok(oo("def", "s", str(SEED_DEFINITIONS / "model-inference-def.yaml")))
    both = tmp_path / "two.yaml"
    both.write_text("id: two-a\nimage:\n  name: a\n---\nid: two-b\nrepository:\n  url: https://git/x.git\n")
    assert ok(oo("definitions", "save", str(both))).out.count("definition") == 2
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps({"id": "from-json", "image": {"name": "x", "internalPorts": [8080]}}))
    ok(oo("def", "save", str(as_json)))
    for words in (["definitions", "list"], ["definitions", "ls"], ["def", "ls"], ["definition", "list"]):
        table = ok(oo(*words)).out.splitlines()
        assert table[0].split() == ["ID", "IMAGE", "OR", "REPO", "PORTS"]
        assert any(line.startswith("nginx-svc ") and "nginx:alpine" in line and "8080:80" in line for line in table)
        assert any(line.startswith("custom-app ") and "custom-service.git" in line for line in table)
    listed = ok(oo("def", "ls", "-o", "json")).json["definitions"]  # type: ignore[index]
    assert {"two-a", "two-b", "from-json", "api-svc"} <= {d["id"] for d in listed}
    ok(oo("definitions", "remove", "two-a"))
    ok(oo("def", "rm", "two-b"))
    assert oo("def", "rm", "two-b").code == 1


def test_bad_definition_files_fail_clearly(oo: OoEnv, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n")
    run = oo("def", "save", str(broken))
    assert run.code == 1 and "not valid YAML" in run.err
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("id: no-source\n")
    run = oo("def", "save", str(invalid))
    # The field as the file has it (no `definition:` wrapper there), after the file name.
    assert run.code == 1 and f"{invalid}: image: exactly one of 'image' or 'repository'" in run.err
    run = oo("def", "save", str(tmp_path / "missing.yaml"))
    assert run.code == 1 and "missing.yaml" in run.err


def test_nodes_list_and_remove_with_aliases(oo: OoEnv, tmp_path: Path) -> None:
    for words in (["nodes", "list"], ["nodes", "ls"], ["n", "ls"], ["node", "list"]):
        table = ok(oo(*words)).out.splitlines()
        assert table[0].split() == [
            "ID",
            "URL",
            "STATUS",
            "REGION",
            "ZONE",
            "CPU%",
            "MEM%",
            "GPUS",
            "LAST",
            "HEARTBEAT",
        ]
        assert any(oo.server.url in line for line in table[1:])
    other = Server(oo.server.data_dir, env={"OB_SELF_URL": "http://node2.example.com:11337"}).start()
    other.kill9()
    assert "node2.example.com" in ok(oo("n", "ls")).out
    ok(oo("nodes", "remove", "http://node2.example.com:11337"))
    assert "node2.example.com" not in ok(oo("n", "ls")).out
    assert oo("n", "rm", "http://node2.example.com:11337").code == 1


def test_tokens_and_login(oo: OoEnv) -> None:
    secret = ok(
        oo("tokens", "create", "--role", "service", "--slug", "cli-svc", "--description", "from cli")
    ).out.strip()
    assert secret.startswith("rsv_")
    listed = ok(oo("tokens", "ls", "-o", "json")).json["tokens"]  # type: ignore[index]
    mine = next(t for t in listed if t.get("slug") == "cli-svc")
    assert "cli-svc" in ok(oo("token", "ls")).out
    # `oo login` stores the token (0600) and later calls use it.
    assert "logged in to" in ok(oo("login", secret, token=None)).out
    config = oo.home / ".config" / "registry-svc" / "cli.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    reg = ok(oo("put", "/registry-svc/instance", "--url=http://cli-svc-1:80", token=None)).json
    assert reg["instance"]["slug"] == "cli-svc"  # type: ignore[index]
    assert oo("nodes", "ls", token=None).code == 1  # a service token cannot list nodes
    assert oo("login", "rsv_wrong", token=None).code == 1
    ok(oo("tokens", "rm", mine["id"]))
    run = oo("i", "ls", token=None)
    assert run.code == 1 and "401" in run.err


def test_local_admin_token_is_used_for_a_server_on_this_machine(tmp_path: Path) -> None:
    home = tmp_path / "home"
    srv = Server(home / ".registry-svc").start()
    try:
        env = OoEnv(srv, home)
        assert ok(env("i", "ls", token=None)).out == "no instances\n"  # the admin token was found
        remote = env("--url", f"http://localhost:{srv.port}", "n", "ls", token=None)
        assert remote.code == 0  # localhost counts as this machine
    finally:
        srv.kill9()


# --- output, errors, exit codes, help ------------------------------------------------------


def test_json_is_compact_when_piped_so_jq_works(oo: OoEnv) -> None:
    out = ok(oo("get", "/registry-svc/instances")).out
    assert out.count("\n") == 1
    done = subprocess.run(
        f"{OO} get /registry-svc/instances | jq -r '.instances[] | \"\\(.slug // \"N/A\") \\(.url) \\(.status)\"'",
        shell=True, capture_output=True, text=True, check=True,
        env={**os.environ, "OB_SERVER_URL": oo.server.url, "OB_TOKEN": oo.server.admin_token},
    )  # fmt: skip
    assert any(line.startswith("N/A http://") for line in done.stdout.splitlines())


def test_exit_codes_and_messages(oo: OoEnv) -> None:
    unreachable = oo("--url", f"http://127.0.0.1:{free_port()}", "i", "ls")
    assert unreachable.code == 2 and "cannot connect to http://127.0.0.1:" in unreachable.err
    bad_token = oo("i", "ls", token="rsv_bad")
    assert bad_token.code == 1 and "HTTP 401" in bad_token.err
    http_error = oo("get", "/registry-svc/instance/nope")
    assert http_error.code == 1 and "not found" in http_error.err
    usage = oo("instances", "frobnicate")
    assert usage.code == 1 and "frobnicate" in usage.err
    bad_json = oo("put", "/registry-svc/instance", "--tags=[unclosed")
    assert bad_json.code == 1 and "--tags" in bad_json.err
    assert oo("get").code == 1


@pytest.mark.parametrize(
    "words",
    [[], ["instances"], ["i", "ls"], ["definitions", "save"], ["nodes", "rm"], ["tokens", "create"], ["get"], ["put"],
     ["post"], ["delete"], ["login"]],
)  # fmt: skip
def test_every_command_has_help_with_examples(oo: OoEnv, words: list[str]) -> None:
    run = ok(oo(*words, "--help"))
    assert "Usage: oo" in run.out
    if words and words[0] not in ("instances",):
        assert "Examples:" in run.out or "Commands:" in run.out
