"""The generic `oo get|put|post|delete PATH --key=value` calls of the product page."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

import click

from registry_svc.cli.client import CliError
from registry_svc.cli.commands import Session, cli, pass_session
from registry_svc.cli.output import print_json

_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?\d+\.\d+$")


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
