"""The request rules Python takes from the extension (rust/rules.rs) instead of keeping its
own copies: the slug rule as the models' regex and as the gates' code agree, and the
reserved slugs are what the API refuses and what the gate does not proxy."""

from __future__ import annotations

import ipaddress
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


def test_the_id_regex_and_the_gates_id_rule_agree() -> None:
    rng = random.Random(8)
    alphabet = "aZ09_.:-~/ é%"
    samples = ["", "a", "-a", "_", "a" * 128, "a" * 129, "inst_0123abcd"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 131))) for _ in range(20_000)]
    pattern = re.compile(models.ID_PATTERN)
    disagree = [s for s in samples if bool(pattern.fullmatch(s)) != _core.is_record_id(s)]
    assert not disagree, disagree[:10]


@pytest.mark.parametrize("slug", _core.RESERVED_SLUGS)
def test_a_reserved_slug_is_refused_and_its_path_is_the_registrys(server: Server, slug: str) -> None:
    reply = server.register({"url": f"http://reserved-{slug}:80", "slug": slug, "healthCheck": NO_CHECK})
    assert reply.status == 400 and reply.json["error"] == f"slug: '{slug}' is reserved for built-in routes"
    assert _core.is_registry_route(f"/{slug}/anything")
    assert not _core.is_registry_route(f"/{slug}x/anything")


def test_the_request_models_policies_are_the_selectors() -> None:
    assert typing.get_args(models.Policy) == tuple(_core.POLICIES)


def test_the_request_models_roles_are_the_gates() -> None:
    assert typing.get_args(models.Role) == tuple(role for role, _ in _core.ROLES)


def generated_urls(count: int, seed: int) -> list[str]:
    """Endpoint URLs, valid and not, from hostile pieces."""
    rng = random.Random(seed)
    schemes = ["http", "https", "HTTP", "HtTpS", "ftp", "h2", "1http", ""]
    hosts = ["api.example", "API.Example", "a-b.c", "-a.b", "a..b", "1.2.3", "2130706433", "10.0.0.1", "010.0.0.1",
             "256.1.1.1", "[::1]", "[0:0::1]", "[::FFFF:1.2.3.4]", "[::1.2.3.4]", "[fe80::1%eth0]", "[fe80::1%]",
             "[1.2.3.4]", "[zz::1]", "[1:0:0:1:0:0:0:1]", "localhost", "é.example", "x" * 64, "a." * 130 + "b",
             "user@h", "h]", "[::1", "", "a_b.c", "h:1:2"]  # fmt: skip
    ports = ["", ":80", ":443", ":8080", ":0", ":65535", ":65536", ":", ":0080", ":99999999999", ":x"]
    paths = ["", "/", "/a/b", "/a b", "/%41", "/%4", "/?q", "/#f", "/a;b=c", "/é", "/\t", "//x", "/a:b@c"]
    out = []
    for _ in range(count):
        url = f"{rng.choice(schemes)}://{rng.choice(hosts)}{rng.choice(ports)}{rng.choice(paths)}"
        if rng.random() < 0.05:
            url = url.replace("://", rng.choice([":/", "//", ":///"]))
        out.append(url)
    return out


def test_the_rust_url_rule_answers_as_the_python_one_did() -> None:
    """rust/url.rs against the Python implementation it replaced (tests/url_oracle.py):
    the same canonical URL, or the same message, for 20,000 generated URLs."""
    import url_oracle

    from registry_svc import urls

    def outcome(parse: typing.Callable[[str], typing.Any], url: str) -> str:
        try:
            return "ok " + parse(url).url
        except ValueError as e:
            return f"error {e}"

    differences = [
        (url, old, new)
        for url in generated_urls(20_000, seed=11)
        if (old := outcome(url_oracle.parse_url, url)) != (new := outcome(urls.parse_url, url))
    ]
    assert not differences, differences[:10]


def python_ip_rule(text: str) -> str:
    """What `models._ip_address` was before the rule moved to Rust (`rust/url.rs`)."""
    if not text:
        return text
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError("an IPv6 zone (%...) is not allowed")
    return str(address)


def generated_ips(count: int, seed: int) -> list[str]:
    """Addresses valid and not: dotted quads (leading zeros, out of range, too few), IPv6 in
    every spelling (compressed, full, upper case, embedded IPv4, zones), and junk."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            octets = [rng.choice(["0", "1", "9", "10", "01", "255", "256", "127", "00", "1000", ""]) for _ in range(4)]
            out.append(".".join(octets[: rng.choice([3, 4, 4, 4, 5])]))
        elif kind < 0.8:
            hextets = [
                rng.choice(["0", "0", "0000", "1", "ffff", "FFFF", "abc", "12345", "g", "00ab"]) for _ in range(8)
            ]
            text = ":".join(hextets[: rng.choice([6, 7, 8, 8, 9])])
            if rng.random() < 0.4:
                start = rng.randrange(0, max(1, len(text) - 1))
                text = (
                    re.sub(r"(:0)+:", "::", text, count=1) if rng.random() < 0.5 else text[:start] + "::" + text[start:]
                )
            if rng.random() < 0.15:
                text = text.rsplit(":", 2)[0] + ":" + rng.choice(["1.2.3.4", "01.2.3.4", "255.255.255.255"])
            if rng.random() < 0.1:
                text += rng.choice(["%eth0", "%", "%1%2"])
            out.append(text)
        else:
            out.append(
                rng.choice(
                    ["::", "::1", "::ffff:1.2.3.4", "::1.2.3.4", ":::", "1::2::3", " 1.2.3.4", "x", "fe80::1%lo"]
                )
            )
    return out


def test_the_rust_ip_rule_answers_as_the_python_one_did() -> None:
    """`_core.canonical_ip` (the API's `ip` fields and filters, and the gates' `ip`
    filters) against the Python rule it replaced: the same address, or the same message,
    for 20,000 generated addresses."""
    from registry_svc import models

    def outcome(rule: typing.Callable[[str], str], text: str) -> str:
        try:
            return "ok " + rule(text)
        except ValueError as e:
            return f"error {e}"

    ips = generated_ips(20_000, seed=5)
    assert sum(outcome(python_ip_rule, ip).startswith("ok") for ip in ips) > 2_000, "too few valid ones to mean much"
    differences = [
        (ip, old, new) for ip in ips if (old := outcome(python_ip_rule, ip)) != (new := outcome(models._ip_address, ip))
    ]
    assert not differences, differences[:10]


def test_the_lookup_models_fields_are_the_rules_filters() -> None:
    """`models.InstanceFilters` describes the lookup in the OpenAPI document; the rule that
    checks it is `rust/query.rs` (`_core.lookup_filters`): the same names, in its order."""
    assert list(models.InstanceFilters.model_fields) == _core.LOOKUP_FILTERS


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (
            {"colour": ["red"]},
            "colour: unknown parameter; use id, slug, host, ip, deploymentId, nodeUrl, status, tag, zone, scheme",
        ),
        ({"ip": ["x"]}, "ip: 'x' is not an IPv4 or IPv6 address"),
        ({"zone": ["z" * 257]}, "zone: must be at most 256 characters"),
        ({"nodeUrl": ["ftp://n"]}, "nodeUrl: must be an http:// or https:// URL, got 'ftp://n'"),
    ],
)
def test_refused_lookups_name_the_field(query: dict[str, list[str]], error: str) -> None:
    with pytest.raises(ValueError) as refused:
        _core.lookup_filters(list(query.items()))
    assert refused.value.args[0] == error


def generated_pick_queries(count: int, seed: int) -> list[dict[str, list[str]]]:
    rng = random.Random(seed)
    names = ["slug", "slug", "policy", "zone", "key", "tag", "tag", "model", "colour"]
    values = ["shop", "", "Bad_Slug", "a" * 64, "a" * 300, "random", "consistent_hash", "fastest", "z1", "x\x01", "é",
              "prefix", "least_load"]  # fmt: skip
    out = []
    for _ in range(count):
        query: dict[str, list[str]] = {}
        for _ in range(rng.randint(0, 5)):
            query.setdefault(rng.choice(names), []).append(rng.choice(values))
        if rng.random() < 0.3:
            query["tag"] = [f"t{i}" for i in range(rng.choice([3, 16, 17, 20]))]
        out.append(dict(sorted(query.items())))
    return out


def test_the_pick_rule_answers_as_the_documented_model() -> None:
    """`_core.pick_query` (rust/query.rs, the workers' and the gates' rule) against the
    model that documents it (`models.PickQuery`, pydantic): the same query, or the same
    first problem, for 3,000 generated queries."""

    def by_model(query: dict[str, list[str]]) -> str:
        try:
            q = models.parse_query(models.PickQuery, query, repeatable=frozenset({"tag"}))
        except Exception as e:  # ApiError
            return f"error {e}"
        return f"ok {(q.slug, q.policy, q.zone, q.key, q.tag or [], q.model)}"

    def by_rule(query: dict[str, list[str]]) -> str:
        try:
            return f"ok {_core.pick_query(list(query.items()))}"
        except ValueError as e:
            return f"error {e.args[0]}"

    differences = [(q, a, b) for q in generated_pick_queries(3000, seed=3) if (a := by_model(q)) != (b := by_rule(q))]
    assert not differences, differences[:5]
