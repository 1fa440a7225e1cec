"""The request rules Python takes from the extension (rust/rules.rs) instead of keeping its
own copies: the slug rule as the models' regex and as the gates' code agree, and the
reserved slugs are what the API refuses and what the gate does not proxy."""

from __future__ import annotations

import random
import re
import typing

import pytest

from conftest import NO_CHECK, Server
from registry_svc import _core, models


def test_the_slug_regex_and_the_gates_slug_rule_agree() -> None:
    rng = random.Random(7)
    alphabet = "az09-_A.~/ é"
    samples = ["", "a", "-", "_", "a" * 63, "a" * 64, *_core.RESERVED_SLUGS]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 66))) for _ in range(20_000)]
    pattern = re.compile(models.SLUG_PATTERN)
    disagree = [s for s in samples if bool(pattern.fullmatch(s)) != _core.is_slug(s)]
    assert not disagree, disagree[:10]


@pytest.mark.parametrize("slug", _core.RESERVED_SLUGS)
def test_a_reserved_slug_is_refused_and_its_path_is_the_registrys(server: Server, slug: str) -> None:
    reply = server.register({"url": f"http://reserved-{slug}:80", "slug": slug, "healthCheck": NO_CHECK})
    assert reply.status == 400 and reply.json["error"] == f"slug: '{slug}' is reserved for built-in routes"
    assert _core.is_registry_route(f"/{slug}/anything")
    assert not _core.is_registry_route(f"/{slug}x/anything")


def test_the_request_models_policies_are_the_selectors() -> None:
    assert typing.get_args(models.Policy) == tuple(_core.POLICIES)
