"""`oo routing SLUG`: a slug's proxy settings (`PUT /registry-svc/routing/{slug}`), shown
by `oo services SLUG`."""

from __future__ import annotations

from urllib.parse import quote

import click

from registry_svc.cli.client import CliError
from registry_svc.cli.commands import OUTPUT, Session, cli, pass_session
from registry_svc.cli.output import print_data
from registry_svc.cli.services import describe_routing


def weights_of(text: str | None) -> dict[str, float] | None:
    """`2:2:1` as `least_load`'s weights (the server checks their range)."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        queued, running, kv_cache = (float(p) for p in parts)
    except ValueError:
        raise CliError(f"--load-weights '{text}': give QUEUED:RUNNING:KVCACHE, e.g. 2:2:1") from None
    return {"queued": queued, "running": running, "kvCache": kv_cache}


@cli.command("routing", epilog="\b\nExamples:\n  oo routing user-svc\n  oo routing user-svc --strip-prefix --retries 2 --timeout 5\n  oo routing llama --load-weights 1:3:1\n  oo routing user-svc --reset")  # fmt: skip
@click.argument("slug")
@click.option("--strip-prefix/--keep-prefix", default=None, help="cut /SLUG from the forwarded path (default: keep)")
@click.option(
    "--retries", type=click.IntRange(0, 5), help="tries on other instances after one cannot be reached (default 1)"
)
@click.option("--timeout", type=float, help="seconds an upstream may take to answer (default: the server's)")
@click.option("--load-weights", help="least_load's weights, QUEUED:RUNNING:KVCACHE (default 2:2:1)")
@click.option("--reset", is_flag=True, help="back to the defaults")
@OUTPUT
@pass_session
def routing(
    session: Session,
    slug: str,
    strip_prefix: bool | None,
    retries: int | None,
    timeout: float | None,
    load_weights: str | None,
    reset: bool,
    output: str,
) -> None:
    """Show SLUG's proxy settings, or change them (admin). Settings not given keep their
    current values."""
    path = f"/registry-svc/routing/{quote(slug, safe='')}"
    given = (("stripPrefix", strip_prefix), ("retries", retries), ("timeoutSeconds", timeout),
             ("loadWeights", weights_of(load_weights)))  # fmt: skip
    changes = {k: v for k, v in given if v is not None}
    if reset and changes:
        raise CliError("--reset takes no other setting")
    if reset:
        try:
            session.client.request("DELETE", path)
        except CliError as e:
            if e.status != 404:  # none of its own: already the defaults
                raise
    elif changes:
        current = session.client.request("GET", path).json()["routing"]
        body = {
            "stripPrefix": current["stripPrefix"],
            "retries": current["retries"],
            "loadWeights": current["loadWeights"],
        }
        if current["custom"] and "timeoutSeconds" in current:
            body["timeoutSeconds"] = current["timeoutSeconds"]
        session.client.request("PUT", path, {**body, **changes})
    shown = session.client.request("GET", path).json()
    if output in ("json", "yaml"):
        print_data(shown, output)
        return
    click.echo(f"{slug}: {describe_routing(shown['routing'])}")
