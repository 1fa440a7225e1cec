"""`oo`: the registry-svc command line."""

from __future__ import annotations

import sys

import click

# Each module registers its commands on `cli` when imported.
from registry_svc.cli import calls, definitions, instances, nodes, routing, services, tokens  # noqa: F401
from registry_svc.cli.client import EXIT_ERROR, EXIT_OK, CliError
from registry_svc.cli.commands import cli

# Generic calls take `--key=value` body fields: their `--url` is the instance URL.
_GENERIC = frozenset({"get", "put", "post", "delete"})
_GLOBAL = ("--url", "--token")


def hoist_global_options(args: list[str]) -> list[str]:
    """`oo i ls --url X` means `oo --url X i ls`: global options given after a resource
    command move in front of it (not for get/put/post/delete, whose flags are fields)."""
    start = 0
    while start < len(args) and args[start].startswith("-"):
        start += 2 if args[start] in _GLOBAL else 1
    if start >= len(args) or args[start] in _GENERIC:
        return args
    moved: list[str] = []
    kept: list[str] = []
    rest = args[start:]
    i = 0
    while i < len(rest):
        name = rest[i].split("=", 1)[0]
        if name in _GLOBAL and "=" in rest[i]:
            moved.append(rest[i])
        elif name in _GLOBAL and i + 1 < len(rest):
            moved += rest[i : i + 2]
            i += 1
        else:
            kept.append(rest[i])
        i += 1
    return args[:start] + moved + kept


def main(argv: list[str] | None = None) -> int:
    """Runs `oo` and returns its exit code: 0 ok, 1 HTTP or usage error, 2 cannot connect."""
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    try:
        cli.main(args=args, prog_name="oo", standalone_mode=False)
    except CliError as e:
        click.echo(f"oo: {e.message}", err=True)
        return e.code
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.exceptions.Abort:
        click.echo("oo: aborted", err=True)
        return EXIT_ERROR
    except click.ClickException as e:
        e.show()
        return EXIT_ERROR
    return EXIT_OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
