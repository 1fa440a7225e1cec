"""`oo instances` (`oo i`): list, get, watch, register, heartbeat, drain, maintenance, remove."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import click
import yaml

from registry_svc import urls
from registry_svc.cli.client import EXIT_UNREACHABLE, CliError
from registry_svc.cli.commands import (
    OUTPUT,
    STATUS_CHOICE,
    AliasedGroup,
    Session,
    cli,
    delete_each,
    pass_session,
    read_documents,
    show,
)
from registry_svc.cli.output import ago, shorten, table

# A blocking query waits at most 10 minutes, plus jitter, on the server.
MAX_WATCH_S = 700.0


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
