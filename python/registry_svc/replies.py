"""The response models of the API: what the server answers, for the OpenAPI document.

The server does not build its answers from these (stored records are sent as the bytes the
store holds); they describe those bytes. Records may gain fields, so objects here allow
properties they do not name, and fields an older record may lack are optional.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from registry_svc.models import Check, Definition, HealthCheck, Policy, Role, Status


class Reply(BaseModel):
    """An answer's body."""

    model_config = ConfigDict(extra="allow")


class Error(Reply):
    """Every refusal: a message naming the bad field or what is wrong (`port: must be ...`)."""

    error: str
    errors: list[str] | None = Field(
        default=None, description="every problem found, each naming its field, when a body had several"
    )


class CheckResult(Reply):
    status: Literal["passing", "warning", "critical"]
    output: str = Field(description="the result that set the status")


class MaintenanceInfo(Reply):
    """An instance taken out of routing by an operator; its checks go on."""

    reason: str | None = None
    since: str = Field(description="RFC 3339, UTC")
    by: str | None = Field(default=None, description="the id of the token that set it")
    node: str | None = Field(default=None, description="set for the whole node (its id)")


class Instance(Reply):
    """An instance as stored: its address, owner, routing data and health."""

    id: str
    url: str
    slug: str | None = None
    scheme: str | None = None
    host: str | None = None
    ip: str | None = None
    port: int
    path: str | None = None
    deploymentId: str | None = None
    nodeUrl: str | None = None
    tags: list[str] = []
    metadata: dict[str, str] = {}
    weight: int = 100
    zone: str | None = None
    status: Status
    statusReason: str | None = Field(default=None, description="why the status is what it is")
    details: str | None = Field(default=None, description="1Backend's name for statusReason")
    lastHeartbeat: str | None = Field(default=None, description="RFC 3339, UTC")
    registeredAt: str | None = None
    healthCheck: HealthCheck | None = None
    checks: list[Check] | None = Field(default=None, description="several checks, each with its name")
    checkStatus: dict[str, CheckResult] | None = Field(
        default=None, description="each judged check by name (critical and warning are failing severities)"
    )
    maintenance: MaintenanceInfo | None = Field(
        default=None, description="set while in maintenance: never routed, whatever its status"
    )


class NodeMaintenanceReply(Reply):
    node: str = Field(description="the node's id")
    maintenance: bool
    instances: list[str] = Field(description="the instances whose maintenance this changed")


class InstanceReply(Reply):
    instance: Instance


class InstanceList(Reply):
    instances: list[Instance]


class DefinitionReply(Reply):
    definition: Definition


class DryRun(Reply):
    definition: Definition
    dryRun: bool


class DefinitionList(Reply):
    definitions: list[Definition]


class Usage(Reply):
    used: float
    total: float
    percent: float


class NodeUsage(Reply):
    cpu: Usage = Field(description="used and total in cores")
    memory: Usage = Field(description="bytes")
    disk: Usage = Field(description="bytes, of the data directory's file system")


class Gpu(Reply):
    """One GPU as NVML reports it; a field the driver does not give is null."""

    id: str
    intraNodeId: int
    name: str | None = None
    uuid: str | None = None
    busId: str | None = None
    temperature: float | None = None
    performanceState: str | None = None
    powerUsage: float | None = Field(default=None, description="watts")
    powerCap: float | None = None
    memoryUsage: int | None = Field(default=None, description="MiB used (NVML v2: without the driver's reserve)")
    memoryTotal: int | None = Field(default=None, description="MiB")
    memoryReserved: int | None = Field(default=None, description="MiB the driver reserves; null on NVML v1")
    gpuUtilization: float | None = Field(default=None, description="percent")
    computeMode: str | None = None
    cudaVersion: str | None = None


class Node(Reply):
    """A machine running a registry server, with its last telemetry."""

    id: str
    url: str
    region: str | None = None
    availabilityZone: str | None = None
    lastHeartbeat: str | None = None
    status: str = Field(description="Healthy while it heartbeats, Unhealthy after 3 silent intervals")
    heartbeatIntervalSeconds: float | None = None
    usage: NodeUsage | None = None
    gpus: list[Gpu] = []


class NodeReply(Reply):
    node: Node


class NodeList(Reply):
    nodes: list[Node]


class TokenInfo(Reply):
    """A token without its secret (the store keeps only the secret's hash)."""

    id: str
    role: Role
    slug: str | None = None
    description: str = ""
    createdAt: str | None = None
    expiresAt: str | None = Field(default=None, description="RFC 3339 UTC; the token is refused (401) after it")


class CreatedToken(Reply):
    token: str = Field(description="the secret, shown once: `rsv_...`")
    info: TokenInfo


class TokenList(Reply):
    tokens: list[TokenInfo]


class Version(Reply):
    version: str
    commit: str | None = None
    python: str
    core: str


class Health(Reply):
    """`{"status": "ok"}`; a cluster server adds its mode, replica revision and etcd state."""

    status: str


class LoadWeights(BaseModel):
    """`least_load`'s score: each term's weight, 0 to 100 (not all 0)."""

    model_config = ConfigDict(extra="forbid")

    queued: float | None = Field(default=None, ge=0, le=100, description="requests waiting (default 2)")
    running: float | None = Field(default=None, ge=0, le=100, description="requests running (default 2)")
    kvCache: float | None = Field(default=None, ge=0, le=100, description="KV-cache usage (default 1)")


class SlugRouteBody(BaseModel):
    """`PUT /registry-svc/routing/{slug}` (checked by the gates' own rules, `rust/route.rs`)."""

    model_config = ConfigDict(extra="forbid")

    stripPrefix: bool | None = Field(default=None, description="cut /<slug> from the forwarded path (default false)")
    retries: int | None = Field(
        default=None, ge=0, le=5, description="tries on other instances after one cannot be reached (default 1)"
    )
    timeoutSeconds: float | None = Field(
        default=None, gt=0, le=3600, description="how long an upstream may take (default --proxy-timeout-seconds)"
    )
    loadWeights: LoadWeights | None = Field(
        default=None, description="the weights of least_load's score (default queued 2, running 2, kvCache 1)"
    )


class SlugRouting(Reply):
    slug: str
    policy: Policy
    ownPolicy: bool = Field(description="the slug's policy is its own (--slug-policy), not the default")
    stripPrefix: bool
    retries: int
    timeoutSeconds: float
    loadWeights: dict[str, float] = Field(description="least_load's weights: queued, running, kvCache")
    custom: bool = Field(description="the slug has settings of its own (else these are the defaults)")


class SlugRoutingReply(Reply):
    routing: SlugRouting


class Routing(Reply):
    defaultPolicy: Policy
    slugPolicies: dict[str, Policy]
    proxyTimeoutSeconds: float
    slugRoutes: dict[str, SlugRouting]


class TargetGroup(Reply):
    targets: list[str]
    labels: dict[str, str]


class TargetGroups(RootModel[list[TargetGroup]]):
    """Prometheus `http_sd_configs`: one group per routable instance."""


class DiscoveryResponse(Reply):
    """Envoy's DiscoveryResponse (REST-JSON xDS)."""

    version_info: str
    type_url: str
    resources: list[dict[str, Any]]


class Echo(RootModel[Any]):
    """What was sent: the query as a map, or the JSON body."""
