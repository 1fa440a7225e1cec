"""`oo definitions` (`oo def`): list, get, save (with --dry-run), remove."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click
import yaml

from registry_svc.cli.client import CliError
from registry_svc.cli.commands import (
    OUTPUT,
    AliasedGroup,
    Session,
    cli,
    delete_each,
    pass_session,
    read_documents,
    show,
)
from registry_svc.cli.output import print_json


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
