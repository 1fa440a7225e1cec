"""The request models of service definitions (`PUT /registry-svc/definition`), beside the
others in models.py (which re-exports them)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict, StringConstraints, model_validator

from registry_svc.models import (
    DEFINITION_ID_PATTERN,
    NO_CONTROL,
    LongText,
    Metadata,
    Model,
    PathText,
    Port,
    Text,
    field_problem,
)

Ports = Annotated[list[Port], Field(max_length=64)]


def _envar_text(value: Any) -> Any:
    """YAML turns `value: 32` into a number; an env var is text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class Image(Model):
    name: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=512, pattern=NO_CONTROL)]
    internalPorts: Ports | None = None


class Repository(Model):
    url: LongText
    version: PathText | None = None
    buildContext: PathText | None = None
    containerFile: PathText | None = None
    internalPorts: Ports | None = None


class PortMapping(Model):
    internal: Port
    host: Port


class Envar(Model):
    key: Text
    value: Annotated[
        str, Strict(), StringConstraints(max_length=8192, pattern=NO_CONTROL), BeforeValidator(_envar_text)
    ] = ""


class ApiSpec(Model):
    url: LongText
    protocolType: Text | None = None
    version: Text | None = None
    metadata: Metadata | None = None


class Client(Model):
    language: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL)]
    url: LongText


class Definition(Model):
    """A service definition: a template for running a service (image or repository)."""

    id: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=63, pattern=DEFINITION_ID_PATTERN)]
    image: Image | None = None
    repository: Repository | None = None
    ports: Annotated[list[PortMapping], Field(max_length=256)] | None = None
    envars: Annotated[list[Envar], Field(max_length=256)] | None = None
    apiSpecs: Annotated[list[ApiSpec], Field(max_length=256)] | None = None
    clients: Annotated[list[Client], Field(max_length=256)] | None = None

    @model_validator(mode="after")
    def _image_or_repository(self) -> Definition:
        if (self.image is None) == (self.repository is None):
            raise field_problem("image", "exactly one of 'image' or 'repository' is required")
        return self


class SaveDefinition(Model):
    """`PUT /registry-svc/definition`."""

    definition: Definition
