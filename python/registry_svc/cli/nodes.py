"""`oo nodes` (`oo n`): list, maintenance, remove."""

from __future__ import annotations

from typing import Any

import click

from registry_svc.cli.client import CliError
from registry_svc.cli.commands import OUTPUT, AliasedGroup, Session, cli, delete_each, pass_session, show
from registry_svc.cli.output import ago, percent
from registry_svc.client.config import normalize_server


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
