"""`oo tokens` and `oo login`."""

from __future__ import annotations

import sys
from typing import Any

import click

from registry_svc.cli.client import Client
from registry_svc.cli.commands import OUTPUT, AliasedGroup, Session, cli, delete_each, pass_session, show
from registry_svc.cli.output import print_data
from registry_svc.client.config import save_token


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
