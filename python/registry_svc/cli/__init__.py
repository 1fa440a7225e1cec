"""`oo`: the registry-svc command line."""

from __future__ import annotations

import sys

import click

from registry_svc.cli.client import EXIT_ERROR, EXIT_OK, CliError
from registry_svc.cli.commands import cli


def main(argv: list[str] | None = None) -> int:
    """Runs `oo` and returns its exit code: 0 ok, 1 HTTP or usage error, 2 cannot connect."""
    try:
        cli.main(args=argv, prog_name="oo", standalone_mode=False)
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
