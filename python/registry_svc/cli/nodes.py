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


SIZE_UNITS = {"mib": 1, "gib": 1024, "tib": 1024 * 1024}


def mebibytes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """`20GiB`, `512MiB` or `1TiB` in MiB."""
    if value is None:
        return None
    text = value.strip().lower()
    for unit, factor in SIZE_UNITS.items():
        number = text.removesuffix(unit)
        if number != text:
            try:
                return round(float(number) * factor)
            except ValueError:
                break
    raise click.BadParameter(f"'{value}': give a size with its unit, e.g. 20GiB or 512MiB")


@nodes.command("list", epilog="\b\nExamples:\n  oo nodes ls\n  oo n ls --gpu-free 20GiB --gpu-util-max 50\n  oo n ls --gpu-free 40GiB --gpus 2 -o json | jq -r '.nodes[].url'")  # fmt: skip
@click.option("--gpu-free", callback=mebibytes, help="only nodes with a GPU with this much free memory (20GiB)")
@click.option("--gpu-util-max", type=click.IntRange(0, 100), help="... and at most this busy (percent)")
@click.option("--gpus", type=click.IntRange(1, 1024), help="how many such GPUs a node needs (default 1)")
@OUTPUT
@pass_session
def nodes_list(session: Session, gpu_free: int | None, gpu_util_max: int | None, gpus: int | None, output: str) -> None:
    """List cluster nodes with their usage (optionally only those with free GPUs)."""
    wanted = {"gpuFreeMiB": gpu_free, "gpuMaxUtilization": gpu_util_max, "gpuCount": gpus}
    body = {k: v for k, v in wanted.items() if v is not None}
    data = session.client.request("POST", "/registry-svc/nodes", body or None).json()
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
