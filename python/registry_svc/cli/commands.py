"""The `oo` commands: resources (instances, definitions, nodes, tokens), login, and the
generic `get|put|post|delete PATH --key=value` calls from the product page."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
import yaml

from registry_svc import about, urls
from registry_svc.cli.client import EXIT_UNREACHABLE, Client, CliError
from registry_svc.cli.output import ago, percent, print_data, print_json, shorten, table
from registry_svc.client.config import normalize_server, resolve_server, resolve_token, save_token
from registry_svc.status import STATUSES

# A blocking query waits at most 10 minutes, plus jitter, on the server.
MAX_WATCH_S = 700.0

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


# --- instances --------------------------------------------------------------------------


@cli.group(
    cls=AliasedGroup,
    aliases={"ls": "list", "rm": "remove", "reg": "register", "hb": "heartbeat", "maint": "maintenance"},
)
def instances() -> None:
    """Service instances: list, get, register, heartbeat, drain, remove."""


@instances.command("list", epilog="\b\nExamples:\n  oo instances ls\n  oo i ls --slug user-svc --status Healthy\n  oo i ls --zone us-east-1a --tags=prod\n  oo i ls -o json | jq '.instances[].url'")  # fmt: skip
@click.option("--slug", help="only this slug")
@click.option("--status", type=STATUS_CHOICE)
@click.option("--host", help="only this host name; an IP address matches instances registered by ip")
@click.option("--ip", help="only this IP address")
@click.option("--deployment", help="only this deploymentId")
@click.option("--node", help="only instances on this node (its URL)")
@click.option("--zone", help="only this zone")
@click.option("--scheme", type=click.Choice(["http", "https"]), help="only this scheme")
@click.option("--tag", "--tags", "tags", multiple=True, help="only instances with this tag (repeatable, or a,b)")
@click.option("-w", "--watch", "follow", is_flag=True, help="print the table again whenever it changes (until Ctrl-C)")
@OUTPUT
@pass_session
def instances_list(
    session: Session,
    slug: str | None,
    status: str | None,
    host: str | None,
    ip: str | None,
    deployment: str | None,
    node: str | None,
    zone: str | None,
    scheme: str | None,
    tags: tuple[str, ...],
    follow: bool,
    output: str,
) -> None:
    """List service instances."""
    if host and urls.is_ip(host):
        # Instances registered with an IP have no host name: the address is their `ip`.
        host, ip = None, ip or host
    filters = {"slug": slug, "status": status, "host": host, "ip": ip, "deploymentId": deployment,
               "nodeUrl": node, "zone": zone, "scheme": scheme}  # fmt: skip
    query: list[tuple[str, str]] = [(k, v) for k, v in filters.items() if v]
    query += [("tag", t.strip()) for value in tags for t in value.split(",") if t.strip()]
    if follow:
        for data in following(session, query, "5m"):
            if sys.stdout.isatty():
                click.echo("\x1b[H\x1b[2J", nl=False)  # a terminal: redraw in place
            click.echo(f"-- {time.strftime('%H:%M:%S')}, index {data['index']} --")
            instances_table(data, output, query)
            sys.stdout.flush()
        return
    data = session.client.request("GET", "/registry-svc/instances" + (f"?{urlencode(query)}" if query else "")).json()
    instances_table(data, output, query)


def instances_table(data: dict[str, Any], output: str, query: list[tuple[str, str]]) -> None:
    rows = [[i["id"], i["url"], i["status"] + (" (maintenance)" if i.get("maintenance") else ""),
             shorten((i.get("maintenance") or {}).get("reason") or i.get("statusReason"), 40), i.get("slug") or "",
             ",".join(i.get("tags") or []), i.get("nodeUrl") or "", ago(i.get("lastHeartbeat"))]
            for i in data["instances"]]  # fmt: skip
    headers = ["ID", "URL", "STATUS", "REASON", "SLUG", "TAGS", "NODE", "LAST HEARTBEAT"]
    show({"instances": data["instances"]}, output, headers, rows, "no instances" + (" match" if query else ""))


def following(session: Session, query: list[tuple[str, str]], wait: str) -> Iterator[dict[str, Any]]:
    """The instances matching `query`, now and after each change (blocking queries), as
    `{"instances": [...], "index": N}`. If the server goes away (or is starting), it
    retries and resumes from the last index it saw, so no change in between is lost."""
    index: int | None = None
    backoff = 0.5
    while True:
        params = query + ([("index", str(index)), ("wait", wait)] if index is not None else [])
        path = "/registry-svc/instances" + (f"?{urlencode(params)}" if params else "")
        try:
            reply = session.client.request("GET", path, read_timeout=MAX_WATCH_S)
        except CliError as e:
            if e.code != EXIT_UNREACHABLE and e.status not in (502, 503, 504):
                raise
            click.echo(f"oo: {e.message}; retrying, from index {index}", err=True)
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            continue
        backoff = 0.5
        changed = index is None or reply.index != index
        index = reply.index if reply.index is not None else index
        if changed:
            yield {"instances": reply.json()["instances"], "index": index or 0}


@instances.command("get", epilog="\b\nExamples:\n  oo instances get inst_12345\n  oo i get inst_12345 -o json")
@click.argument("instance_id")
@OUTPUT
@pass_session
def instances_get(session: Session, instance_id: str, output: str) -> None:
    """Show one instance."""
    data = session.client.request("GET", f"/registry-svc/instance/{quote(instance_id, safe='')}").json()
    inst = data["instance"]
    rows = [[key, json.dumps(value) if isinstance(value, (dict, list)) else ("" if value is None else value)]
            for key, value in inst.items()]  # fmt: skip
    show(data, output, ["FIELD", "VALUE"], rows)


WATCHED_FIELDS = ("url", "status", "statusReason", "slug", "zone", "tags", "weight", "metadata", "nodeUrl")


def instance_changes(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(event, instance, previous) for each instance added, changed or removed. A heartbeat
    that changed only `lastHeartbeat` is not a change worth a line."""
    events: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    for iid, inst in after.items():
        old = before.get(iid)
        if old is None:
            events.append(("added", inst, None))
        elif any(old.get(f) != inst.get(f) for f in WATCHED_FIELDS):
            events.append(("changed", inst, old))
    events += [("removed", inst, None) for iid, inst in before.items() if iid not in after]
    return events


def print_change(event: str, inst: dict[str, Any], old: dict[str, Any] | None, index: int, output: str) -> None:
    if output == "json":
        click.echo(json.dumps({"event": event, "index": index, "instance": inst}, separators=(",", ":")), nl=True)
        return
    if output == "yaml":  # a YAML document per change
        click.echo(
            "---\n" + yaml.safe_dump({"event": event, "index": index, "instance": inst}, sort_keys=False).rstrip()
        )
        return
    status = (
        f"{old['status']} -> {inst['status']}" if old and old.get("status") != inst.get("status") else inst["status"]
    )
    reason = shorten(inst.get("statusReason"), 60)
    click.echo(
        f"{time.strftime('%H:%M:%S')}  {event.upper():8} {inst['id']}  {inst['url']}  {status}  {reason}".rstrip()
    )


@instances.command("watch", epilog="\b\nExamples:\n  oo instances watch --slug user-svc\n  oo i watch -o json | jq -c 'select(.event == \"changed\")'")  # fmt: skip
@click.option("--slug", help="only this slug")
@click.option("--status", type=STATUS_CHOICE)
@click.option("--tag", "--tags", "tags", multiple=True, help="only instances with this tag (repeatable, or a,b)")
@click.option("--zone", help="only this zone")
@click.option("--wait", default="5m", show_default=True, help="how long one blocking query may wait")
@click.option("--max-events", type=int, default=0, help="exit after this many changes (default: run until stopped)")
@OUTPUT
@pass_session
def instances_watch(
    session: Session,
    slug: str | None,
    status: str | None,
    tags: tuple[str, ...],
    zone: str | None,
    wait: str,
    max_events: int,
    output: str,
) -> None:
    """Print each change to the matching instances as it happens (blocking queries). The
    current ones are printed first as `present`. If the server goes away, it retries and
    resumes from the last index it saw, so no change in between is lost."""
    query: list[tuple[str, str]] = [(k, v) for k, v in (("slug", slug), ("status", status), ("zone", zone)) if v]
    query += [("tag", t.strip()) for value in tags for t in value.split(",") if t.strip()]
    known: dict[str, dict[str, Any]] | None = None
    seen = 0
    for data in following(session, query, wait):
        current = {i["id"]: i for i in data["instances"]}
        index = data["index"]
        if known is None:
            for inst in current.values():
                print_change("present", inst, None, index or 0, output)
        else:
            for event, inst, old in instance_changes(known, current):
                print_change(event, inst, old, index or 0, output)
                seen += 1
                if max_events and seen >= max_events:
                    return
        known = current


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


@instances.command("register", epilog="\b\nExamples:\n  oo instances register -f instance.yaml\n  echo '{\"url\": \"http://127.0.0.1:8081\", \"slug\": \"web\"}' | oo i register -f -")  # fmt: skip
@click.option("-f", "--file", "source", required=True, help="YAML or JSON file of one or many instances; - for stdin")
@pass_session
def instances_register(session: Session, source: str) -> None:
    """Register (or re-register) instances from a file or stdin.

    The file holds one instance, a list of them, or several YAML documents; each is a
    registration body as `PUT /registry-svc/instance` takes it (`{"instance": {...}}`,
    as `oo i get -o json` prints, works too). For example, instance.yaml:

    \b
      url: http://127.0.0.1:8081
      slug: web
      tags: [v2, eu]
      weight: 100
      healthCheck: {type: http, path: /health, intervalSeconds: 5}
    """
    for where, doc in read_documents(source):
        items = doc if isinstance(doc, list) else [doc]
        for body in items:
            if isinstance(body, dict) and set(body) == {"instance"}:
                body = body["instance"]
            if not isinstance(body, dict):
                raise CliError(f"{where}: an instance must be a mapping, not {type(body).__name__}")
            try:
                reply = session.client.request("PUT", "/registry-svc/instance", body)
            except CliError as e:
                raise CliError(f"{where}: {e.message}", e.code) from None
            inst = reply.json()["instance"]
            verb = "registered" if reply.status == 201 else "updated"
            click.echo(f"{verb} instance {inst['id']} {inst['url']} ({inst['status']})")


@instances.command("heartbeat", epilog="\b\nExamples:\n  oo instances heartbeat inst_12345\n  oo i heartbeat inst_12345 --status Starting")  # fmt: skip
@click.argument("instance_id")
@click.option("--status", type=STATUS_CHOICE)
@pass_session
def instances_heartbeat(session: Session, instance_id: str, status: str | None) -> None:
    """Renew an instance's heartbeat (and set its status)."""
    _heartbeat(session, instance_id, status)


@instances.command("drain", epilog="\b\nExamples:\n  oo instances drain inst_12345")
@click.argument("instance_id")
@pass_session
def instances_drain(session: Session, instance_id: str) -> None:
    """Mark an instance Stopping: pick and the proxy stop sending it traffic."""
    _heartbeat(session, instance_id, "Stopping")


@instances.command("maintenance", epilog="\b\nExamples:\n  oo instances maintenance inst_12345 --reason 'kernel upgrade'\n  oo i maint inst_12345 --off")  # fmt: skip
@click.argument("instance_id")
@click.option("--reason", help="why (shown in oo i ls and the dashboard)")
@click.option("--off", is_flag=True, help="end the maintenance: back to what its checks say")
@pass_session
def instances_maintenance(session: Session, instance_id: str, reason: str | None, off: bool) -> None:
    """Take an instance out of routing (pick, the proxy, DNS, Envoy) while its checks go on,
    or put it back with --off."""
    body: dict[str, Any] = {"enable": not off}
    if reason:
        body["reason"] = reason
    path = f"/registry-svc/instance/{quote(instance_id, safe='')}/maintenance"
    inst = session.client.request("PUT", path, body).json()["instance"]
    state = "in maintenance" if inst.get("maintenance") else "out of maintenance"
    click.echo(f"instance {inst['id']}: {state} ({inst['status']})")


def _heartbeat(session: Session, instance_id: str, status: str | None) -> None:
    body = {"status": status} if status else None
    path = f"/registry-svc/instance/{quote(instance_id, safe='')}/heartbeat"
    inst = session.client.request("PUT", path, body).json()["instance"]
    click.echo(f"instance {inst['id']}: {inst['status']}")


@instances.command("remove", epilog="\b\nExamples:\n  oo instances remove inst_12345\n  oo i rm inst_12345\n  oo i rm --slug user-svc --status Unhealthy\n  oo i rm --slug old-svc --yes")  # fmt: skip
@click.argument("ids", nargs=-1)
@click.option("--slug", help="every instance of this slug (with the other filters)")
@click.option("--status", type=STATUS_CHOICE, help="only those with this status")
@click.option("--tag", "tags", multiple=True, help="only those with this tag")
@click.option("--yes", is_flag=True, help="do not ask before removing what the filters match")
@pass_session
def instances_remove(
    session: Session, ids: tuple[str, ...], slug: str | None, status: str | None, tags: tuple[str, ...], yes: bool
) -> None:
    """Remove service instances by id, or every one the filters match (listed, then removed
    once you confirm; --yes to skip the question)."""
    if ids and (slug or status or tags):
        raise CliError("give instance ids or filters (--slug, --status, --tag), not both")
    if not ids:
        if not (slug or status or tags):
            raise CliError("give instance ids, or filters (--slug, --status, --tag) to remove what they match")
        query = [(k, v) for k, v in (("slug", slug), ("status", status)) if v] + [("tag", t) for t in tags]
        found = session.client.request("GET", f"/registry-svc/instances?{urlencode(query)}").json()["instances"]
        if not found:
            click.echo("no instances match")
            return
        click.echo(
            table(
                ["ID", "URL", "STATUS", "SLUG"], [[i["id"], i["url"], i["status"], i.get("slug") or ""] for i in found]
            )
        )
        if not yes:
            if not sys.stdin.isatty():
                raise CliError(f"{len(found)} instance(s) match; add --yes to remove them without a terminal to ask on")
            click.confirm(f"remove these {len(found)} instance(s)?", abort=True)
        ids = tuple(i["id"] for i in found)
    delete_each(session, "/registry-svc/instance", ids, "removed instance")


# --- services and pick --------------------------------------------------------------------

# Healthy and Unhealthy first: what an operator looks for.
STATUS_COLUMNS = ("Healthy", "Unhealthy", "Unknown", "Starting", "Stopping")


@cli.command("tags", epilog="\b\nExamples:\n  oo tags\n  oo tags -o json")
@OUTPUT
@pass_session
def tags_in_use(session: Session, output: str) -> None:
    """The tags in use, with how many instances carry each and of which slugs."""
    found = session.client.request("GET", "/registry-svc/instances").json()["instances"]
    counts: Counter[str] = Counter()
    slugs: dict[str, set[str]] = {}
    for inst in found:
        for tag in inst.get("tags") or []:
            counts[tag] += 1
            slugs.setdefault(tag, set()).add(inst.get("slug") or "(none)")
    ordered = sorted(counts.items())
    summary = [{"tag": t, "instances": n, "slugs": sorted(slugs[t])} for t, n in ordered]
    rows = [[t, n, ",".join(sorted(slugs[t]))] for t, n in ordered]
    show({"tags": summary}, output, ["TAG", "INSTANCES", "SLUGS"], rows, "no tags in use")


@cli.command("services", epilog="\b\nExamples:\n  oo services\n  oo services user-svc\n  oo services -o json | jq '.services[] | select(.Healthy == 0)'")  # fmt: skip
@click.argument("slug", required=False)
@OUTPUT
@pass_session
def services(session: Session, slug: str | None, output: str) -> None:
    """One row per slug with its instance counts by status (like `consul catalog services`);
    with SLUG, that service in detail: instances, checks, maintenance, definition, routing."""
    if slug is not None:
        service_detail(session, slug, output)
        return
    instances_data = session.client.request("GET", "/registry-svc/instances").json()["instances"]
    by_slug: dict[str, Counter[str]] = {}
    for inst in instances_data:
        by_slug.setdefault(inst.get("slug") or "(none)", Counter())[inst["status"]] += 1
    summary = [{"slug": slug, "instances": sum(counts.values()), **{s: counts[s] for s in STATUS_COLUMNS}}
               for slug, counts in sorted(by_slug.items())]  # fmt: skip
    rows = [[row["slug"], row["instances"], *(row[s] for s in STATUS_COLUMNS)] for row in summary]
    headers = ["SLUG", "INSTANCES", *(s.upper() for s in STATUS_COLUMNS)]
    show({"services": summary}, output, headers, rows, "no services")


def describe_routing(routing: dict[str, Any]) -> str:
    """`strip prefix: yes, retries: 3, timeout: 7.5s` (and whose settings they are)."""
    text = (
        f"strip prefix: {'yes' if routing['stripPrefix'] else 'no'}, retries: {routing['retries']}, "
        f"timeout: {routing['timeoutSeconds']:g}s"
    )
    return text + ("" if routing.get("custom") else " (the defaults)")


def service_detail(session: Session, slug: str, output: str) -> None:
    found = session.client.request("GET", f"/registry-svc/instances?{urlencode([('slug', slug)])}").json()["instances"]
    routing = session.client.request("GET", f"/registry-svc/routing/{quote(slug, safe='')}").json()["routing"]
    policy = routing["policy"]
    try:
        path = f"/registry-svc/definition/{quote(slug, safe='')}"
        definition = session.client.request("GET", path).json()["definition"]
    except CliError as e:
        if e.status not in (403, 404):
            raise
        definition = None
    if not found and definition is None:
        raise CliError(f"no instances and no definition for slug '{slug}'")
    detail = {"slug": slug, "policy": policy, "routing": routing, "instances": found, "definition": definition}
    if output in ("json", "yaml"):
        print_data(detail, output)
        return
    click.echo(f"slug:        {slug}")
    click.echo(f"policy:      {policy}" + ("" if routing["ownPolicy"] else " (the default)"))
    click.echo(f"proxy:       {describe_routing(routing)}")
    image = ((definition or {}).get("image") or {}).get("name")
    click.echo(
        "definition:  "
        + (
            f"{definition['id']} (image {image})"
            if definition and image
            else definition["id"]
            if definition
            else "none"
        )
    )
    click.echo(f"instances:   {len(found)}")
    if not found:
        return

    def check(inst: dict[str, Any]) -> str:
        if inst.get("checks"):  # several: each with its verdict
            verdicts = inst.get("checkStatus") or {}
            return ", ".join(f"{c['name']}: {(verdicts.get(c['name']) or {}).get('status', 'pending')}"
                             for c in inst["checks"])  # fmt: skip
        hc = inst.get("healthCheck") or {}
        what = hc.get("type", "tcp") + (f" {hc.get('path')}" if hc.get("type") == "http" else "")
        return f"{what} every {hc.get('intervalSeconds', 10)}s"

    rows = [[i["id"], i["url"], i["status"] + (" (maintenance)" if i.get("maintenance") else ""),
             shorten((i.get("maintenance") or {}).get("reason") or i.get("statusReason"), 40), check(i),
             i.get("zone") or "", i.get("weight", 100), ",".join(i.get("tags") or [])] for i in found]  # fmt: skip
    click.echo(table(["ID", "URL", "STATUS", "REASON", "CHECK", "ZONE", "WEIGHT", "TAGS"], rows))


@cli.command("pick", epilog="\b\nExamples:\n  oo pick user-svc\n  oo pick user-svc --policy consistent_hash --key user-42\n  oo pick user-svc -o json | jq -r .instance.url")  # fmt: skip
@click.argument("slug")
@click.option("--policy", type=click.Choice(["round_robin", "random", "weighted", "least_request", "consistent_hash"]))
@click.option("--zone", help="prefer this zone")
@click.option("--key", help="the key for consistent_hash")
@click.option("--tag", "--tags", "tags", multiple=True, help="only instances with this tag")
@OUTPUT
@pass_session
def pick(
    session: Session,
    slug: str,
    policy: str | None,
    zone: str | None,
    key: str | None,
    tags: tuple[str, ...],
    output: str,
) -> None:
    """Pick one routable instance of SLUG, as the proxy would."""
    query = [("slug", slug)] + [(k, v) for k, v in (("policy", policy), ("zone", zone), ("key", key)) if v]
    query += [("tag", t.strip()) for value in tags for t in value.split(",") if t.strip()]
    data = session.client.request("GET", f"/registry-svc/instance/pick?{urlencode(query)}").json()
    inst = data["instance"]
    show(
        data,
        output,
        ["ID", "URL", "STATUS", "ZONE"],
        [[inst["id"], inst["url"], inst["status"], inst.get("zone") or ""]],
    )


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


# --- definitions ------------------------------------------------------------------------


@cli.group(cls=AliasedGroup, aliases={"ls": "list", "rm": "remove", "s": "save"})
def definitions() -> None:
    """Service definitions: list, get, save from YAML/JSON (or stdin), remove."""


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
    show(data, output, ["ID", "IMAGE OR REPO", "PORTS"], rows, "no definitions")


@definitions.command("get", epilog="\b\nExamples:\n  oo definitions get nginx-svc\n  oo def get nginx-svc -o json")
@click.argument("definition_id")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", help="yaml or JSON")
@pass_session
def definitions_get(session: Session, definition_id: str, output: str) -> None:
    """Show one definition (YAML by default, as it would be saved)."""
    data = session.client.request("GET", f"/registry-svc/definition/{quote(definition_id, safe='')}").json()
    if output == "json":
        print_json(data)
    else:
        click.echo(yaml.safe_dump(data["definition"], sort_keys=False).rstrip())


@definitions.command("save", epilog="\b\nExamples:\n  oo definitions save nginx-service.yaml\n  oo def save api-service.yaml custom-app.yaml\n  cat app.yaml | oo def save -\n  oo def save --dry-run app.yaml")  # fmt: skip
@click.argument("files", nargs=-1, required=True)
@click.option("--dry-run", is_flag=True, help="validate on the server without saving")
@pass_session
def definitions_save(session: Session, files: tuple[str, ...], dry_run: bool) -> None:
    """Save definitions from YAML or JSON files, or stdin (-); several YAML documents per file.
    Every problem of a refused definition is reported, each naming its field; with
    --dry-run every document is checked, and the exit status is 1 if any was refused."""
    refused = 0
    for source in files:
        for where, doc in read_documents(source):
            wrapped = isinstance(doc, dict) and set(doc) == {"definition"}
            definition = doc["definition"] if wrapped else doc
            if not isinstance(definition, dict):
                raise CliError(f"{where}: a definition must be a mapping, not {type(definition).__name__}")
            path = "/registry-svc/definition" + ("?dryRun=true" if dry_run else "")
            try:
                reply = session.client.request("PUT", path, {"definition": definition})
            except CliError as e:
                if e.status != 400:
                    raise CliError(f"{where}: {e.message}", e.code) from None
                # The server names fields from the request's top (`definition.ports[0]...`);
                # say them as the file has them (without `definition.` unless it wraps).
                problems = e.errors or [e.message.removeprefix("HTTP 400: ")]
                problems = [p if wrapped else p.removeprefix("definition.") for p in problems]
                if not dry_run:
                    raise CliError("\n".join(f"{where}: {p}" for p in problems), e.code) from None
                for problem in problems:
                    click.echo(f"{where}: {problem}", err=True)
                refused += 1
                continue
            saved = reply.json()["definition"]["id"]
            verb = "valid" if dry_run else ("created" if reply.status == 201 else "updated")
            click.echo(f"{verb} definition {saved}" + (f" ({where})" if dry_run else ""))
    if refused:
        raise CliError(f"{refused} definition(s) refused")


@definitions.command(
    "remove", epilog="\b\nExamples:\n  oo definitions remove test-service-a\n  oo def rm test-service-a"
)
@click.argument("ids", nargs=-1, required=True)
@pass_session
def definitions_remove(session: Session, ids: tuple[str, ...]) -> None:
    """Remove definitions by id."""
    delete_each(session, "/registry-svc/definition", ids, "removed definition")


# --- nodes ------------------------------------------------------------------------------


@cli.group(cls=AliasedGroup, aliases={"ls": "list", "rm": "remove", "maint": "maintenance"})
def nodes() -> None:
    """Cluster nodes: list and remove."""


@nodes.command("list", epilog="\b\nExamples:\n  oo nodes ls\n  oo n ls -o json | jq '.nodes[] | select(.gpus | length > 0)'")  # fmt: skip
@OUTPUT
@pass_session
def nodes_list(session: Session, output: str) -> None:
    """List cluster nodes with their usage."""
    data = session.client.request("POST", "/registry-svc/nodes").json()
    rows = [[n["id"], n["url"], n.get("status") or "", n.get("region") or "", n.get("availabilityZone") or "",
             percent(n.get("usage"), "cpu"), percent(n.get("usage"), "memory"), len(n.get("gpus") or []),
             ago(n.get("lastHeartbeat"))]
            for n in data["nodes"]]  # fmt: skip
    headers = ["ID", "URL", "STATUS", "REGION", "ZONE", "CPU%", "MEM%", "GPUS", "LAST HEARTBEAT"]
    show(data, output, headers, rows, "no nodes")


@nodes.command("maintenance", epilog="\b\nExamples:\n  oo nodes maintenance node_0a1b2c3d4e5f --reason 'kernel upgrade'\n  oo n maint http://127.0.0.1:11337 --off")  # fmt: skip
@click.argument("node")
@click.option("--reason", help="why (shown with each instance)")
@click.option("--off", is_flag=True, help="end the node's maintenance (an instance's own stays)")
@pass_session
def nodes_maintenance(session: Session, node: str, reason: str | None, off: bool) -> None:
    """Maintenance for every instance on NODE (its id or URL)."""
    body: dict[str, Any] = {"node": node, "enable": not off}
    if reason:
        body["reason"] = reason
    data = session.client.request("PUT", "/registry-svc/node/maintenance", body).json()
    state = "in maintenance" if data["maintenance"] else "out of maintenance"
    click.echo(f"node {data['node']}: {len(data['instances'])} instance(s) {state}")


@nodes.command("remove", epilog="\b\nExamples:\n  oo nodes remove http://node2.example.com:11337\n  oo n rm http://node2.example.com:11337")  # fmt: skip
@click.argument("urls", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="remove the node of the server you are talking to as well")
@pass_session
def nodes_remove(session: Session, urls: tuple[str, ...], force: bool) -> None:
    """Remove nodes by URL."""
    if not force:
        own = session.client.request("GET", "/registry-svc/node/self").json()["node"]["url"]
        for url in urls:
            if normalize_server(url) == normalize_server(own):
                raise CliError(
                    f"{url} is the node of the server you are talking to ({session.server}): it re-registers at its "
                    "next heartbeat (keeping its id). Add --force to remove it anyway."
                )
    delete_each(session, "/registry-svc/node", urls, "removed node")


# --- tokens and login -------------------------------------------------------------------


@cli.group(cls=AliasedGroup, aliases={"ls": "list", "rm": "remove", "new": "create"})
def tokens() -> None:
    """API tokens (admin): create, list, revoke."""


@tokens.command("create", epilog="\b\nExamples:\n  oo tokens create --role service --slug user-svc\n  oo tokens create --role proxy --description sidecars\n  oo tokens create --role admin --ttl 24h")  # fmt: skip
@click.option("--role", type=click.Choice(["admin", "service", "proxy"]), required=True)
@click.option("--slug", help="the service's slug (service tokens)")
@click.option("--description", default="", help="what the token is for")
@click.option("--ttl", help="expire this long after creation: 90s, 30m, 24h, 7d (default: never)")
@OUTPUT
@pass_session
def tokens_create(
    session: Session, role: str, slug: str | None, description: str, ttl: str | None, output: str
) -> None:
    """Create a token; its secret is shown only now."""
    body: dict[str, Any] = {"role": role, "description": description}
    if slug:
        body["slug"] = slug
    if ttl:
        body["ttl"] = ttl
    data = session.client.request("POST", "/registry-svc/tokens", body).json()
    if output in ("json", "yaml"):
        print_data(data, output)
        return
    click.echo(data["token"])  # alone on stdout, for `TOKEN=$(oo tokens create ...)`
    expiry = f", expires {data['info']['expiresAt']}" if data["info"].get("expiresAt") else ""
    warning = f"token {data['info']['id']} ({role}{expiry}): the secret above is shown only once; store it now"
    click.echo(warning, err=not sys.stdout.isatty())


@tokens.command("list", epilog="\b\nExamples:\n  oo tokens ls")
@OUTPUT
@pass_session
def tokens_list(session: Session, output: str) -> None:
    """List tokens (never their secrets)."""
    data = session.client.request("GET", "/registry-svc/tokens").json()
    rows = [
        [
            t["id"],
            t["role"],
            t.get("slug") or "",
            t.get("description") or "",
            t["createdAt"],
            t.get("expiresAt") or "never",
        ]
        for t in data["tokens"]
    ]
    show(data, output, ["ID", "ROLE", "SLUG", "DESCRIPTION", "CREATED", "EXPIRES"], rows, "no tokens")


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
    """Save TOKEN for this server in the user's config (mode 0600); later commands go to
    this server without --url (the current context)."""
    Client(session.server, token).request("GET", "/registry-svc/instances")  # refuse a token that does not work
    path = save_token(session.server, token)
    click.echo(f"logged in to {session.server}; token saved in {path}")


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
