"""`python -m registry_svc.cli`, the same as `oo`."""

from registry_svc.cli import run

run()
