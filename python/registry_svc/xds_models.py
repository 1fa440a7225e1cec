"""The request models of Envoy's REST xDS (`POST /v3/discovery:endpoints|clusters`),
beside the others in models.py (which re-exports them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

from registry_svc.models import MAX_RESOURCE_NAMES, ShortText, Slug


class EnvoyMetadata(BaseModel):
    """The metadata of an Envoy node: Envoy's REST subscriptions send no headers, so the
    token may come here."""

    model_config = ConfigDict(extra="allow")

    registry_token: Annotated[str, Strict()] | None = Field(default=None, description="an `rsv_...` token")
    registry_cluster: ShortText | None = Field(
        default=None, description="CDS: the name of the Envoy cluster that reaches this registry (default registry)"
    )


class EnvoyNode(BaseModel):
    model_config = ConfigDict(extra="allow")

    metadata: EnvoyMetadata | None = None


class DiscoveryRequest(BaseModel):
    """Envoy's DiscoveryRequest (REST-JSON xDS); its other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    version_info: Annotated[str, Strict()] | None = None
    resource_names: Annotated[list[Slug], Field(max_length=MAX_RESOURCE_NAMES)] | None = Field(
        default=None,
        description=f"EDS: the slugs (cluster names) wanted, at most {MAX_RESOURCE_NAMES}; repeats count once",
    )
    node: EnvoyNode | None = None

    @property
    def metadata(self) -> EnvoyMetadata:
        return (self.node.metadata if self.node else None) or EnvoyMetadata()
