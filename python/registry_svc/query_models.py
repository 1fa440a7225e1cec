"""The models of query strings (values are strings; a model of a query describes it for the
OpenAPI document and checks it like a body, repeatable parameters being lists), beside the
others in models.py (which re-exports them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from registry_svc.models import (
    FreeText,
    Model,
    NodeUrl,
    Policy,
    ShortText,
    Slug,
    Text,
    _ip_address,
    field_problem,
)


class Query(Model):
    """A query string's parameters."""


def _at_most_16_distinct(tags: list[str]) -> list[str]:
    """Repeats are one tag; each distinct set of tags is a cache entry, so few are allowed."""
    distinct = sorted(set(tags))
    if len(distinct) > 16:
        raise ValueError("at most 16 distinct tags per query")
    return distinct


PickTags = Annotated[
    list[ShortText],
    AfterValidator(_at_most_16_distinct),
    Field(json_schema_extra={"maxItems": 16, "uniqueItems": True}),
]


class PickQuery(Query):
    """`GET /registry-svc/instance/pick`."""

    slug: Slug
    policy: Policy | None = Field(default=None, description="default: the slug's policy, else the server's")
    zone: ShortText | None = Field(default=None, description="prefer instances in this zone")
    key: Text | None = Field(default=None, description="the hash key of consistent_hash (required with it)")
    tag: PickTags | None = Field(default=None, description="every tag must be present (repeatable)")
    model: Text | None = Field(default=None, description="only instances that list this model")

    @model_validator(mode="after")
    def _key_for_consistent_hash(self) -> PickQuery:
        if self.policy == "consistent_hash" and not self.key:
            raise field_problem("key", "required with policy=consistent_hash")
        return self


FilterValues = Annotated[list[FreeText], Field(min_length=1)]


class InstanceFilters(Query):
    """`GET /registry-svc/instances`: each filter is repeatable; all must match."""

    id: FilterValues | None = None
    slug: FilterValues | None = None
    host: FilterValues | None = None
    ip: Annotated[list[Annotated[FreeText, AfterValidator(_ip_address)]], Field(min_length=1)] | None = None
    deploymentId: FilterValues | None = None
    nodeUrl: Annotated[list[NodeUrl], Field(min_length=1)] | None = None
    status: FilterValues | None = None
    tag: FilterValues | None = None
    zone: FilterValues | None = None
    scheme: FilterValues | None = None


class SlugQuery(Query):
    """`GET /registry-svc/discovery/prometheus`."""

    slug: Slug | None = None


class DryRunQuery(Query):
    """`PUT /registry-svc/definition`."""

    dryRun: Literal["true", "false"] = Field(default="false", description="true: validate only, write nothing")


class BlockingQuery(Query):
    """A blocking query: answer once the result's index passes `index`, or after `wait`."""

    index: Annotated[str, Field(pattern=r"^[0-9]{1,19}$")] | None = Field(
        default=None, description="the X-Registry-Index of the previous answer"
    )
    wait: Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$")] | None = Field(
        default=None, description="how long to hold the request (default 5m, at most 10m); only with index"
    )
