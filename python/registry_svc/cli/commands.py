"""The `oo` commands: resources (instances, definitions, nodes, tokens), login, and the
generic `get|put|post|delete PATH --key=value` calls from the product page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
import yaml

from registry_svc.cli.client import DEFAULT_SERVER, Client, CliError, resolve_token, save_token
from registry_svc.cli.output import ago, percent, print_json, table

_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?\d+\.\d+$")


class AliasedGroup(click.Group):
    """A group whose commands answer to short aliases too (`i`, `ls`, `rm`, ...)."""

    def __init__(self, *args: Any, aliases: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases = aliases or {}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        _, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else None), cmd, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            short = [a for a, target in self.aliases.items() if target == name]
            label = name + (f" ({', '.join(short)})" if short else "")
            rows.append((label, cmd.get_short_help_str(70)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class Session:
    """The server and token chosen by the global options, and a client made on first use."""

    def __init__(self, server: str, token: str | None) -> None:
        self.server = server.rstrip("/")
        self.token_flag = token
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.server, resolve_token(self.server, self.token_flag))
        return self._client


pass_session = click.make_pass_decorator(Session)
OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", help="table or raw JSON")


def delete_each(session: Session, resource: str, keys: tuple[str, ...], done: str) -> None:
    """DELETE `resource/<key>` (percent-encoded) for each key, saying `done <key>`."""
    for key in keys:
        session.client.request("DELETE", f"{resource}/{quote(key, safe='')}")
        click.echo(f"{done} {key}")


def show(data: Any, output: str, headers: list[str], rows: list[list[Any]]) -> None:
    """The raw JSON with `-o json`, else the table."""
    if output == "json":
        print_json(data)
    else:
        click.echo(table(headers, rows))


ROOT_EPILOG = """\b
Examples:
  oo instances ls                       # or: oo i ls
  oo get /registry-svc/instances?slug=user-svc
  oo put /registry-svc/instance --url="http://user-service:8080" --slug="user-svc"
  oo definitions save my-service-def.yaml
  oo post /registry-svc/nodes | jq '.nodes[].url'
  oo --url http://node2:11337 nodes ls

Token: --token, $OB_TOKEN, `oo login TOKEN`, or the local admin token for a server on this
machine. Server: --url or $OB_SERVER_URL. Exit codes: 0 ok, 1 HTTP or usage error,
2 cannot connect. Shell completion: eval "$(_OO_COMPLETE=bash_source oo)".
"""


@click.group(cls=AliasedGroup, epilog=ROOT_EPILOG, context_settings={"help_option_names": ["-h", "--help"]},
             aliases={"i": "instances", "instance": "instances", "def": "definitions", "definition": "definitions",
                      "n": "nodes", "node": "nodes", "token": "tokens"})  # fmt: skip
@click.option(
    "--url", envvar="OB_SERVER_URL", default=DEFAULT_SERVER, show_default=True, help="registry-svc server URL"
)
@click.option("--token", default=None, help="bearer token (default: $OB_TOKEN, `oo login`, local admin token)")
@click.pass_context
def cli(ctx: click.Context, url: str, token: str | None) -> None:
    """oo: the registry-svc command line."""
    ctx.obj = Session(url, token)


# --- instances --------------------------------------------------------------------------


@cli.group(cls=AliasedGroup, aliases={"ls": "list", "rm": "remove"})
def instances() -> None:
    """Service instances: list and remove."""


@instances.command("list", epilog="\b\nExamples:\n  oo instances ls\n  oo i ls --slug user-svc --status Healthy\n  oo i ls -o json | jq '.instances[].url'")  # fmt: skip
@click.option("--slug", help="only this slug")
@click.option("--status", type=click.Choice(["Unknown", "Healthy", "Unhealthy", "Starting", "Stopping"]))
@click.option("--host", help="only this host")
@click.option("--tag", "tags", multiple=True, help="only instances with this tag (repeatable)")
@OUTPUT
@pass_session
def instances_list(
    session: Session, slug: str | None, status: str | None, host: str | None, tags: tuple[str, ...], output: str
) -> None:
    """List service instances."""
    query: list[tuple[str, str]] = [(k, v) for k, v in (("slug", slug), ("status", status), ("host", host)) if v]
    query += [("tag", t) for t in tags]
    data = session.client.request("GET", "/registry-svc/instances" + (f"?{urlencode(query)}" if query else "")).json()
    rows = [[i["id"], i["url"], i["status"], i.get("slug") or "", i.get("nodeUrl") or "", ago(i.get("lastHeartbeat"))]
            for i in data["instances"]]  # fmt: skip
    show(data, output, ["ID", "URL", "STATUS", "SLUG", "NODE", "LAST HEARTBEAT"], rows)


@instances.command("remove", epilog="\b\nExamples:\n  oo instances remove inst_12345\n  oo i rm inst_12345")
@click.argument("ids", nargs=-1, required=True)
@pass_session
def instances_remove(session: Session, ids: tuple[str, ...]) -> None:
    """Remove service instances by id."""
    delete_each(session, "/registry-svc/instance", ids, "removed instance")


# --- definitions ------------------------------------------------------------------------


@cli.group(cls=AliasedGroup, aliases={"ls": "list", "rm": "remove", "s": "save"})
def definitions() -> None:
    """Service definitions: list, save from YAML/JSON, remove."""


def _ports(d: dict[str, Any]) -> str:
    if d.get("ports"):
        return ",".join(f"{p['host']}:{p['internal']}" for p in d["ports"])
    source = d.get("image") or d.get("repository") or {}
    return ",".join(str(p) for p in source.get("internalPorts") or [])


@definitions.command("list", epilog="\b\nExamples:\n  oo definitions ls\n  oo def ls -o json")
@OUTPUT
@pass_session
def definitions_list(session: Session, output: str) -> None:
    """List service definitions."""
    data = session.client.request("GET", "/registry-svc/definitions").json()
    rows = []
    for d in data["definitions"]:
        source = d["image"]["name"] if d.get("image") else d.get("repository", {}).get("url", "")
        rows.append([d["id"], source, _ports(d)])
    show(data, output, ["ID", "IMAGE OR REPO", "PORTS"], rows)


def read_definitions(path: Path) -> list[dict[str, Any]]:
    """The definitions in a YAML or JSON file: one, or several YAML documents."""
    try:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except OSError as e:
        raise CliError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise CliError(f"{path}: not valid YAML or JSON: {e}") from None
    if not docs:
        raise CliError(f"{path}: no definition in the file")
    out = []
    for doc in docs:
        if isinstance(doc, dict) and set(doc) == {"definition"}:
            doc = doc["definition"]
        if not isinstance(doc, dict):
            raise CliError(f"{path}: a definition must be a mapping, not {type(doc).__name__}")
        out.append(doc)
    return out


@definitions.command("save", epilog="\b\nExamples:\n  oo definitions save nginx-service.yaml\n  oo def save api-service.yaml custom-app.yaml")  # fmt: skip
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_session
def definitions_save(session: Session, files: tuple[Path, ...]) -> None:
    """Save definitions from YAML or JSON files (several YAML documents per file allowed)."""
    for path in files:
        for definition in read_definitions(path):
            reply = session.client.request("PUT", "/registry-svc/definition", {"definition": definition})
            verb = "created" if reply.status == 201 else "updated"
            click.echo(f"{verb} definition {reply.json()['definition']['id']}")


@definitions.command(
    "remove", epilog="\b\nExamples:\n  oo definitions remove test-service-a\n  oo def rm test-service-a"
)
@click.argument("ids", nargs=-1, required=True)
@pass_session
def definitions_remove(session: Session, ids: tuple[str, ...]) -> None:
    """Remove definitions by id."""
    delete_each(session, "/registry-svc/definition", ids, "removed definition")


# --- nodes ------------------------------------------------------------------------------


@cli.group(cls=AliasedGroup, aliases={"ls": "list", "rm": "remove"})
def nodes() -> None:
    """Cluster nodes: list and remove."""


@nodes.command("list", epilog="\b\nExamples:\n  oo nodes ls\n  oo n ls -o json | jq '.nodes[] | select(.gpus | length > 0)'")  # fmt: skip
@OUTPUT
@pass_session
def nodes_list(session: Session, output: str) -> None:
    """List cluster nodes with their usage."""
    data = session.client.request("POST", "/registry-svc/nodes").json()
    rows = [[n["id"], n["url"], n.get("region") or "", n.get("availabilityZone") or "", percent(n.get("usage"), "cpu"),
             percent(n.get("usage"), "memory"), len(n.get("gpus") or []), ago(n.get("lastHeartbeat"))]
            for n in data["nodes"]]  # fmt: skip
    show(data, output, ["ID", "URL", "REGION", "ZONE", "CPU%", "MEM%", "GPUS", "LAST HEARTBEAT"], rows)


@nodes.command("remove", epilog="\b\nExamples:\n  oo nodes remove http://node2.example.com:11337\n  oo n rm http://node2.example.com:11337")  # fmt: skip
@click.argument("urls", nargs=-1, required=True)
@pass_session
def nodes_remove(session: Session, urls: tuple[str, ...]) -> None:
    """Remove nodes by URL."""
    delete_each(session, "/registry-svc/node", urls, "removed node")


# --- tokens and login -------------------------------------------------------------------


@cli.group(cls=AliasedGroup, aliases={"ls": "list", "rm": "remove", "new": "create"})
def tokens() -> None:
    """API tokens (admin): create, list, revoke."""


@tokens.command("create", epilog="\b\nExamples:\n  oo tokens create --role service --slug user-svc\n  oo tokens create --role proxy --description sidecars")  # fmt: skip
@click.option("--role", type=click.Choice(["admin", "service", "proxy"]), required=True)
@click.option("--slug", help="the service's slug (service tokens)")
@click.option("--description", default="", help="what the token is for")
@OUTPUT
@pass_session
def tokens_create(session: Session, role: str, slug: str | None, description: str, output: str) -> None:
    """Create a token; its secret is shown only now."""
    body: dict[str, Any] = {"role": role, "description": description}
    if slug:
        body["slug"] = slug
    data = session.client.request("POST", "/registry-svc/tokens", body).json()
    if output == "json":
        print_json(data)
    else:
        click.echo(data["token"])


@tokens.command("list", epilog="\b\nExamples:\n  oo tokens ls")
@OUTPUT
@pass_session
def tokens_list(session: Session, output: str) -> None:
    """List tokens (never their secrets)."""
    data = session.client.request("GET", "/registry-svc/tokens").json()
    rows = [
        [t["id"], t["role"], t.get("slug") or "", t.get("description") or "", t["createdAt"]] for t in data["tokens"]
    ]
    show(data, output, ["ID", "ROLE", "SLUG", "DESCRIPTION", "CREATED"], rows)


@tokens.command("remove", epilog="\b\nExamples:\n  oo tokens rm tok_0123456789abcdef")
@click.argument("ids", nargs=-1, required=True)
@pass_session
def tokens_remove(session: Session, ids: tuple[str, ...]) -> None:
    """Revoke tokens by id."""
    delete_each(session, "/registry-svc/token", ids, "revoked token")


@cli.command(epilog="\b\nExamples:\n  oo login rsv_...\n  oo --url http://node2:11337 login rsv_...")
@click.argument("token")
@pass_session
def login(session: Session, token: str) -> None:
    """Save TOKEN for this server in the user's config (mode 0600)."""
    Client(session.server, token).request("GET", "/registry-svc/definitions")  # refuse a token that does not work
    path = save_token(session.server, token)
    click.echo(f"saved token for {session.server} in {path}")


# --- generic calls ----------------------------------------------------------------------


def parse_value(key: str, raw: str) -> Any:
    """Flag values are typed: JSON for [..], {..} and "..", then true/false/null, numbers, text."""
    if raw[:1] in ("[", "{", '"'):
        try:
            return json.loads(raw)
        except ValueError as e:
            raise CliError(f"--{key}: not valid JSON: {e}") from None
    if raw in ("true", "false"):
        return raw == "true"
    if raw == "null":
        return None
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    return raw


def parse_call(args: tuple[str, ...]) -> tuple[str, list[tuple[str, str]]]:
    """PATH (parts before the first flag, joined by '/') and the `--key=value` flags."""
    parts: list[str] = []
    flags: list[tuple[str, str]] = []
    for arg in args:
        if arg == "--":
            continue
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not key:
                raise CliError(f"bad flag '{arg}': use --key=value")
            flags.append((key, value if eq else "true"))
        elif flags:
            raise CliError(f"unexpected '{arg}' after flags: use --key=value")
        else:
            parts.append(arg.strip("/"))
    if not parts:
        raise CliError("missing PATH, e.g. /registry-svc/instances")
    return "/" + "/".join(parts), flags


def build_body(flags: list[tuple[str, str]]) -> dict[str, Any]:
    """Flags as a JSON body: dotted keys nest, a repeated key becomes an array."""
    body: dict[str, Any] = {}
    for key, raw in flags:
        node = body
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CliError(f"--{key}: '{part}' is already a value, not an object")
            node = child
        value = parse_value(key, raw)
        if leaf in node:
            node[leaf] = (node[leaf] if isinstance(node[leaf], list) else [node[leaf]]) + [value]
        else:
            node[leaf] = value
    return body


def generic(method: str) -> click.Command:
    @click.command(
        method,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        epilog=GENERIC_EPILOG[method],
        help=f"{method.upper()} PATH on the server; --key=value flags become "
        + ("query parameters." if method in ("get", "delete") else "JSON body fields."),
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @pass_session
    def call(session: Session, args: tuple[str, ...]) -> None:
        path, flags = parse_call(args)
        body = None
        if method in ("get", "delete"):
            if flags:
                path += ("&" if "?" in path else "?") + urlencode(flags)
        elif flags:
            body = build_body(flags)
        reply = session.client.request(method.upper(), path, body)
        if not reply.body:
            return
        try:
            print_json(reply.json())
        except ValueError:
            click.echo(reply.body.decode(errors="replace"))

    return call


GENERIC_EPILOG = {
    "get": "\b\nExamples:\n  oo get /registry-svc/instances\n  oo get /registry-svc/instances?slug=user-svc\n  oo get /registry-svc/instances --host=api-server-1\n  oo get /registry-svc/node/self",
    "put": "\b\nExamples:\n  oo put /registry-svc/instance --url=\"http://user-service:8080\" --slug=\"user-svc\"\n  oo put /registry-svc/instance --scheme=https --host=api.example.com --port=443 --path=/v1\n  oo put /registry-svc/instance --url=http://localhost:3001 --tags='[\"dev\", \"user-service\"]'\n  oo put /registry-svc/definition --definition='{\"id\": \"my-svc\", \"image\": {\"name\": \"nginx:latest\"}}'",
    "post": "\b\nExamples:\n  oo post /registry-svc/nodes\n  oo post /registry-svc/nodes --region=us-east-1\n  oo post /registry-svc/tokens --role=service --slug=user-svc",
    "delete": "\b\nExamples:\n  oo delete /registry-svc/instance/inst_12345\n  oo delete /registry-svc/definition/test-service-a",
}  # fmt: skip

for _method in ("get", "put", "post", "delete"):
    cli.add_command(generic(_method))
