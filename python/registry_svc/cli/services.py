"""`oo services`, `oo tags` and `oo pick`: the registry seen by slug."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import quote, urlencode

import click

from registry_svc import _core
from registry_svc.cli.client import CliError
from registry_svc.cli.commands import OUTPUT, Session, cli, pass_session, show
from registry_svc.cli.output import print_data, shorten, table

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
    weights = routing.get("loadWeights") or {}
    if routing.get("policy") in ("least_load", "prefix") or weights != {"queued": 2, "running": 2, "kvCache": 1}:
        text += (
            f", load weights: {weights.get('queued', 2):g}:{weights.get('running', 2):g}:{weights.get('kvCache', 1):g}"
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


@cli.command("pick", epilog="\b\nExamples:\n  oo pick user-svc\n  oo pick user-svc --policy consistent_hash --key user-42\n  oo pick llama --policy least_load --model llama-3-8b\n  oo pick user-svc -o json | jq -r .instance.url")  # fmt: skip
@click.argument("slug")
@click.option("--policy", type=click.Choice(_core.POLICIES))
@click.option("--zone", help="prefer this zone")
@click.option("--key", help="the key for consistent_hash")
@click.option("--tag", "--tags", "tags", multiple=True, help="only instances with this tag")
@click.option("--model", help="only instances that serve this model")
@OUTPUT
@pass_session
def pick(
    session: Session,
    slug: str,
    policy: str | None,
    zone: str | None,
    key: str | None,
    tags: tuple[str, ...],
    model: str | None,
    output: str,
) -> None:
    """Pick one routable instance of SLUG, as the proxy would."""
    given = (("policy", policy), ("zone", zone), ("key", key), ("model", model))
    query = [("slug", slug)] + [(k, v) for k, v in given if v]
    query += [("tag", t.strip()) for value in tags for t in value.split(",") if t.strip()]
    data = session.client.request("GET", f"/registry-svc/instance/pick?{urlencode(query)}").json()
    inst = data["instance"]
    show(
        data,
        output,
        ["ID", "URL", "STATUS", "ZONE"],
        [[inst["id"], inst["url"], inst["status"], inst.get("zone") or ""]],
    )
