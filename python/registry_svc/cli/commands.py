"""The `oo` root: the command group, its global options (`--url`, `--token`), the session
and output helpers every resource module uses, and `oo version` / `oo openapi`. The
resources live one module each beside it (instances, services, definitions, nodes, tokens,
routing, calls), as the API does under `api/`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import yaml

from registry_svc import about
from registry_svc.cli.client import Client, CliError
from registry_svc.cli.output import print_data, print_json, table
from registry_svc.client.config import resolve_server, resolve_token
from registry_svc.status import STATUSES


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

    def __init__(self, server: str | None, token: str | None) -> None:
        self.server = resolve_server(server)
        self.token_flag = token
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.server, resolve_token(self.server, self.token_flag))
        return self._client


pass_session = click.make_pass_decorator(Session)
STATUS_CHOICE = click.Choice(list(STATUSES))
OUTPUT = click.option(
    "-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", help="table, raw JSON, or YAML"
)


def delete_each(session: Session, resource: str, keys: tuple[str, ...], done: str) -> None:
    """DELETE `resource/<key>` (percent-encoded) for each key, saying `done <key>`."""
    for key in keys:
        session.client.request("DELETE", f"{resource}/{quote(key, safe='')}")
        click.echo(f"{done} {key}")


def show(data: Any, output: str, headers: list[str], rows: list[list[Any]], empty: str = "nothing") -> None:
    """The raw JSON with `-o json` (YAML with `-o yaml`), else the table (or `empty` when
    there are no rows)."""
    if output in ("json", "yaml"):
        print_data(data, output)
    elif not rows:
        click.echo(empty)
    else:
        click.echo(table(headers, rows))


def read_documents(source: str) -> list[tuple[str, Any]]:
    """(where, document) for each YAML/JSON document of a file, or of stdin for '-'."""
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        raise CliError(f"{name}: {e.strerror}") from None
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as e:
        raise CliError(f"{name}: not valid YAML or JSON: {e}") from None
    if not docs:
        raise CliError(f"{name}: no document in it")
    return [(name if len(docs) == 1 else f"{name} (document {n})", doc) for n, doc in enumerate(docs, 1)]


ROOT_EPILOG = """\b
Examples:
  oo instances ls                       # or: oo i ls
  oo get /registry-svc/instances?slug=user-svc
  oo put /registry-svc/instance --url="http://user-service:8080" --slug="user-svc"
  oo definitions save my-service-def.yaml
  oo post /registry-svc/nodes | jq '.nodes[].url'
  oo --url http://node2:11337 nodes ls

Server: --url, $OB_SERVER_URL, or the server of the last `oo login` (default
http://127.0.0.1:11337). Token: --token, $OB_TOKEN, `oo login TOKEN`, or the local admin token
for a server on this machine. --url and --token also work after a resource command
(`oo i ls --url http://node2:11337`). Exit codes: 0 ok, 1 HTTP or usage error, 2 cannot
connect. Shell completion: eval "$(_OO_COMPLETE=bash_source oo)".
"""


def print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    show_version(Session(ctx.params.get("url"), ctx.params.get("token")))
    ctx.exit()


def show_version(session: Session) -> None:
    """This `oo`'s version, and the server's when it answers."""
    click.echo(f"oo {about.describe(about.version_info())}")
    try:
        server = Client(session.server, None).request("GET", "/version").json()
    except CliError as e:
        click.echo(f"server {session.server}: {e.message}")
        return
    click.echo(f"server {session.server}: registry-svc {about.describe(server)}")


@click.group(cls=AliasedGroup, epilog=ROOT_EPILOG, context_settings={"help_option_names": ["-h", "--help"]},
             aliases={"i": "instances", "instance": "instances", "def": "definitions", "definition": "definitions",
                      "n": "nodes", "node": "nodes", "token": "tokens", "svc": "services", "service": "services"})  # fmt: skip
@click.option(
    "--url",
    envvar="OB_SERVER_URL",
    default=None,
    is_eager=True,
    help="registry-svc server URL (default: $OB_SERVER_URL, the last `oo login`, http://127.0.0.1:11337)",
)
@click.option(
    "--token", default=None, is_eager=True, help="bearer token (default: $OB_TOKEN, `oo login`, local admin token)"
)
@click.option("--version", is_flag=True, expose_value=False, callback=print_version, help="show versions and exit")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """oo: the registry-svc command line."""
    ctx.obj = Session(url, token)


@cli.command("version", epilog="\b\nExamples:\n  oo version\n  oo --url http://node2:11337 version")
@pass_session
def version(session: Session) -> None:
    """Show the versions of oo and of the server."""
    show_version(session)


@cli.command(
    "openapi", epilog="\b\nExamples:\n  oo openapi > registry-svc.openapi.json\n  oo openapi | jq '.paths | keys'"
)
@pass_session
def openapi(session: Session) -> None:
    """Print the server's OpenAPI 3.1 document (GET /registry-svc/openapi.json)."""
    print_json(Client(session.server, None).request("GET", "/registry-svc/openapi.json").json())
