"""The request models of the API: every body and query the server accepts, declared once.

pydantic v2 checks them (types are strict: `"80"` is not a port, `true` is not a number),
and the same declarations give the OpenAPI document its schemas (`openapi.py`). A refusal
is one 400 `{"error": "field: problem"}` naming the first bad field as the client wrote it
(`tags[1]`, `healthCheck.intervalSeconds`, `definition.image.internalPorts[0]`); unknown
fields are refused.

What a model cannot say in JSON Schema (a URL in canonical form, a host that is not an IP,
the timeout of a check within its interval) is an after-validator beside the field, so the
rules still live in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from registry_svc import _core, urls
from registry_svc.errors import ApiError

# The API's way in: models.parse(Model, data) and models.parse_query(Model, params).
from registry_svc.validation import PATTERN_PROBLEMS as PATTERN_PROBLEMS
from registry_svc.validation import describe as describe
from registry_svc.validation import parse as parse
from registry_svc.validation import parse_query as parse_query
from registry_svc.validation import type_name as type_name

# -- Strings ---------------------------------------------------------------------------

NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
ID_PATTERN = _core.ID_PATTERN  # the gates' rule (rust/rules.rs)
SLUG_PATTERN = _core.SLUG_PATTERN  # the gates' rule (rust/rules.rs)
DEFINITION_ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
CHECK_PATH = r"^/[^\x00-\x1f\x7f]*$"
# What a pattern means, in words: the error a client sees when a value does not match.
PATTERN_PROBLEMS.update(
    {
        NO_CONTROL: "must not contain control characters",
        ID_PATTERN: "may contain only letters, digits, '_', '.', ':' and '-', and must start with a letter or digit",
        SLUG_PATTERN: "must be lowercase letters, digits, '-' or '_', starting and ending with a letter or digit",
        DEFINITION_ID_PATTERN: "must be lowercase letters, digits and '-', starting and ending with a letter or digit",
        CHECK_PATH: "must start with '/' and contain no control characters",
    }
)

Text = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=256, pattern=NO_CONTROL)]
ShortText = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=128, pattern=NO_CONTROL)]
LongText = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=2048, pattern=NO_CONTROL)]
PathText = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=1024, pattern=NO_CONTROL)]
# May be empty: descriptions, metadata and envar values, filter values.
FreeText = Annotated[str, Strict(), StringConstraints(max_length=256, pattern=NO_CONTROL)]
Value = Annotated[str, Strict(), StringConstraints(max_length=1024, pattern=NO_CONTROL)]
RecordId = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Slug = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=63, pattern=SLUG_PATTERN)]
# The most EDS resource names one request may ask for (Envoy asks for its clusters: a few).
MAX_RESOURCE_NAMES = 1000
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
# Spelled out for the type checker and the OpenAPI enum; tests/test_rules.py holds it to
# the selector's own list (`_core.POLICIES`).
Policy = Literal["round_robin", "random", "weighted", "least_request", "consistent_hash", "least_load", "prefix"]
Status = Literal["Unknown", "Healthy", "Unhealthy", "Starting", "Stopping"]
# Held by tests/test_rules.py to the roles of rust/roles.rs (`_core.ROLES`).
Role = Literal["admin", "service", "proxy"]


def _absolute_url(text: str) -> str:
    """An absolute http(s) URL that `urls.parse_url` takes, kept as sent ("" too: a
    1Backend client registering by parts sends it); the registration composes the
    canonical address from it (the parse is cached)."""
    if text:
        try:
            urls.parse_url(text)
        except urls.UrlError as e:
            raise ValueError(str(e)) from None
    return text


def _canonical_url(text: str) -> str:
    """A non-empty absolute http(s) URL, in the canonical form of `urls.parse_url`."""
    if not text:
        raise ValueError("must not be empty")
    try:
        return urls.parse_url(text).url
    except urls.UrlError as e:
        raise ValueError(str(e)) from None


def _hostname(text: str) -> str:
    if urls.is_ip(text):
        raise ValueError(f"'{text}' is an IP address; give it as ip")
    try:
        return urls.canonical_host(text)
    except urls.UrlError as e:
        raise ValueError(str(e)) from None


def _ip_address(text: str) -> str:
    """The address as `str(ipaddress.ip_address(text))` writes it, by the rule the gates
    apply to `ip` filters too (`rust/url.rs`, `_core.canonical_ip`)."""
    if not text:
        return text  # a filter may ask for an empty value; a body field is at least 1 character
    try:
        return _core.canonical_ip(text)
    except ValueError as e:
        raise ValueError(str(e)) from None


def _url_path(text: str) -> str:
    try:
        return urls.canonical_path(text)
    except urls.UrlError as e:
        raise ValueError(str(e)) from None


def _distinct(items: list[str]) -> list[str]:
    """Repeats removed, first occurrence kept."""
    return list(dict.fromkeys(items))


Url = Annotated[
    str, Strict(), StringConstraints(max_length=urls.MAX_URL_LEN, pattern=NO_CONTROL), AfterValidator(_absolute_url)
]
NodeUrl = Annotated[
    str, Strict(), StringConstraints(max_length=urls.MAX_URL_LEN, pattern=NO_CONTROL), AfterValidator(_canonical_url)
]
Hostname = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=253, pattern=NO_CONTROL), AfterValidator(_hostname)
]
IpAddress = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL), AfterValidator(_ip_address)
]
UrlPath = Annotated[str, Strict(), StringConstraints(max_length=1024, pattern=NO_CONTROL), AfterValidator(_url_path)]
Tags = Annotated[list[ShortText], Field(max_length=64), AfterValidator(_distinct)]
Metadata = Annotated[dict[ShortText, Value], Field(max_length=64)]


def field_problem(field: str, problem: str) -> PydanticCustomError:
    """A refusal that a model validator makes about one of its fields (`field` is
    relative to the model, so a nested model's path is kept)."""
    return PydanticCustomError("field", "{field}: {problem}", {"field": field, "problem": problem})


class Model(BaseModel):
    """A request body: unknown fields refused."""

    model_config = ConfigDict(extra="forbid")


# -- Instances -------------------------------------------------------------------------


class HealthCheck(Model):
    """How the registry checks an instance. Omitted fields take the defaults shown."""

    type: Literal["tcp", "http", "ttl", "none"] = Field(
        default="tcp", description="tcp connect, http GET (2xx/3xx), ttl (the instance heartbeats), or none"
    )
    path: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=1024, pattern=CHECK_PATH)] = Field(
        default="/health", description="request path of an http check"
    )
    intervalSeconds: Annotated[int, Strict(), Field(ge=1, le=3600)] = 10
    timeoutSeconds: Annotated[int, Strict(), Field(ge=1, le=300)] = Field(
        default=2, description="at most intervalSeconds; when omitted, min(2, intervalSeconds)"
    )
    healthyThreshold: Annotated[int, Strict(), Field(ge=1, le=100)] = 2
    unhealthyThreshold: Annotated[int, Strict(), Field(ge=1, le=100)] = 3
    deregisterAfterSeconds: Annotated[int, Strict(), Field(ge=0, le=30 * 86400)] = Field(
        default=0, description="remove the instance after this long Unhealthy; 0 never"
    )

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheck:
        if self.timeoutSeconds > self.intervalSeconds:
            if "timeoutSeconds" not in self.model_fields_set:
                self.timeoutSeconds = self.intervalSeconds  # the default follows a short interval
            elif "intervalSeconds" in self.model_fields_set:
                raise field_problem("timeoutSeconds", "must not exceed intervalSeconds")
            # A timeout sent alone is checked against the stored interval once merged
            # (api/instances.merged_objects).
        return self


HEALTH_CHECK_DEFAULTS: dict[str, Any] = HealthCheck().model_dump()


CHECK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
STATUS_RANGE = r"^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$"
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"
PATTERN_PROBLEMS[CHECK_NAME] = (
    "may contain only letters, digits, '_', '.' and '-' (at most 64), starting with a letter or digit"
)
PATTERN_PROBLEMS[STATUS_RANGE] = "must be a status (200) or a range of them (200-399)"
PATTERN_PROBLEMS[HEADER_NAME] = "must be an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)"
# Only for the types they name.
CHECK_FIELDS_OF = {"path": "http", "method": "http", "headers": "http", "expectedStatus": "http",
                   "bodyContains": "http", "grpcService": "grpc", "port": ("http", "tcp", "grpc")}  # fmt: skip


class Check(Model):
    """One of an instance's `checks` (beside, or instead of, the single `healthCheck`).
    The instance is Healthy when every `critical` check passes; a failing `warning` check
    is named in its statusReason but keeps it routable."""

    name: Annotated[str, Strict(), StringConstraints(pattern=CHECK_NAME)] | None = Field(
        default=None, description="unique among the instance's checks; default the type (http, http-2, ...)"
    )
    type: Literal["http", "tcp", "ttl", "grpc"] = Field(
        description="http request, tcp connect, ttl (the instance heartbeats), or gRPC health (grpc.health.v1)"
    )
    severity: Literal["critical", "warning"] = "critical"
    port: Port | None = Field(default=None, description="probe this port of the instance's host (default its own)")
    path: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=1024, pattern=CHECK_PATH)] = "/health"
    method: Literal["GET", "HEAD", "POST", "PUT", "OPTIONS"] = "GET"
    headers: (
        Annotated[dict[Annotated[str, StringConstraints(pattern=HEADER_NAME)], Value], Field(max_length=32)] | None
    ) = None
    expectedStatus: Annotated[str, Strict(), StringConstraints(pattern=STATUS_RANGE)] = Field(
        default="200-299", description="the statuses that pass"
    )
    bodyContains: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=1024)] | None = Field(
        default=None, description="the answer's body (its first 64 KiB) must contain this text"
    )
    grpcService: Annotated[str, Strict(), StringConstraints(max_length=256, pattern=NO_CONTROL)] = Field(
        default="", description="the service asked about (grpc.health.v1 Check); '' is the whole server"
    )
    intervalSeconds: Annotated[int, Strict(), Field(ge=1, le=3600)] = 10
    timeoutSeconds: Annotated[int, Strict(), Field(ge=1, le=300)] | None = Field(
        default=None, description="at most intervalSeconds; default min(2, intervalSeconds)"
    )
    healthyThreshold: Annotated[int, Strict(), Field(ge=1, le=100)] = 2
    unhealthyThreshold: Annotated[int, Strict(), Field(ge=1, le=100)] = 3

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> Check:
        for name, types in CHECK_FIELDS_OF.items():
            if name in self.model_fields_set and getattr(self, name) is not None and self.type not in types:
                raise field_problem(name, f"is not a field of a {self.type} check")
        if self.timeoutSeconds is None:
            self.timeoutSeconds = min(2, self.intervalSeconds)
        elif self.timeoutSeconds > self.intervalSeconds:
            raise field_problem("timeoutSeconds", "must not exceed intervalSeconds")
        low, _, high = self.expectedStatus.partition("-")
        if high and int(high) < int(low):
            raise field_problem("expectedStatus", "a range goes from the lower status to the higher")
        return self


def named_checks(checks: list[Check]) -> list[dict[str, Any]]:
    """The checks as stored: every field of their type, a name each (the type, then
    `type-2`, ...); a name given twice is refused."""
    out: list[dict[str, Any]] = []
    taken: set[str] = set()
    for i, check in enumerate(checks):
        record = check.model_dump(exclude_none=True)
        for field_name, types in CHECK_FIELDS_OF.items():
            if check.type not in types:
                record.pop(field_name, None)
        if check.name is None:
            n = 1
            while (candidate := check.type if n == 1 else f"{check.type}-{n}") in taken:
                n += 1
            record["name"] = candidate
        elif check.name in taken:
            raise ApiError(400, f"checks[{i}].name: '{check.name}' is given to two checks")
        taken.add(record["name"])
        out.append({"name": record.pop("name"), **record})
    return out


class LoadSource(Model):
    """`load`: where a model server's load comes from. `prometheus`: the server scrapes
    `path` every `intervalMs` and reads vLLM's, SGLang's or `registry_load_*` metrics;
    `push`: the instance sends `PUT /registry-svc/instance/{id}/load` itself. A reading
    older than ten intervals counts as unknown. Lookups add the latest reading's values."""

    type: Literal["prometheus", "push"] = "prometheus"
    path: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=1024, pattern=CHECK_PATH)] = Field(
        default="/metrics", description="the metrics path of a prometheus source"
    )
    intervalMs: Annotated[int, Strict(), Field(ge=_core.LOAD_MIN_INTERVAL_MS, le=_core.LOAD_MAX_INTERVAL_MS)] = Field(
        default=_core.LOAD_DEFAULT_INTERVAL_MS, description="how often it is scraped or pushed"
    )
    queued: Any = Field(default=None, json_schema_extra={"readOnly": True})
    running: Any = Field(default=None, json_schema_extra={"readOnly": True})
    kvCacheUsage: Any = Field(default=None, json_schema_extra={"readOnly": True})


LOAD_READING = ("queued", "running", "kvCacheUsage")


class LoadReport(Model):
    """`PUT /registry-svc/instance/{id}/load`: a model server's load now (what is not sent
    counts as 0)."""

    queued: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = Field(default=0, description="requests waiting")
    running: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = Field(default=0, description="requests in the batch")
    kvCacheUsage: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        default=0.0, description="the share of the KV cache in use, 0 to 1"
    )


class InstanceRegistration(Model):
    """`PUT /registry-svc/instance`: register or re-register (upsert by url, or by id).

    The address is `url`, or parts: `host` or `ip`, with `scheme` (http), `port` (the
    scheme's default) and `path`; parts given beside `url` must agree with it. Read-only
    fields of a fetched instance are accepted and ignored, so it can be sent back as is."""

    id: RecordId | None = Field(default=None, description="kept if given; otherwise the url's instance, or a new id")
    url: Url | None = Field(default=None, description="absolute http(s) URL, no query, fragment or userinfo")
    slug: Slug | None = Field(default=None, description="the service; a service token's own slug by default")
    scheme: Literal["http", "https"] | None = None
    host: Hostname | None = Field(default=None, description="a DNS name; an address goes in ip")
    ip: IpAddress | None = None
    port: Port | None = None
    path: UrlPath | None = None
    deploymentId: ShortText | None = None
    nodeUrl: NodeUrl | None = Field(default=None, description="the node the instance runs on; this server's by default")
    tags: Tags | None = None
    metadata: Metadata | None = None
    weight: Annotated[int, Strict(), Field(ge=1, le=1000)] | None = Field(default=None, description="default 100")
    zone: ShortText | None = None
    status: Status | None = Field(default=None, description="set a status at registration (default Unknown)")
    healthCheck: HealthCheck | None = None
    checks: Annotated[list[Check], Field(max_length=16)] | None = Field(
        default=None, description="several checks (replaced as a whole on re-registration; null removes them)"
    )
    models: Annotated[list[ShortText], Field(max_length=64), AfterValidator(_distinct)] | None = Field(
        default=None, description="the models and adapters it serves (`pick?model=`, the proxy's `model`)"
    )
    load: LoadSource | None = Field(default=None, description="where its load signals come from (null: none)")
    loadAgeMs: Any = Field(default=None, json_schema_extra={"readOnly": True})
    statusReason: Any = Field(default=None, json_schema_extra={"readOnly": True})
    details: Any = Field(default=None, json_schema_extra={"readOnly": True})
    maintenance: Any = Field(default=None, json_schema_extra={"readOnly": True})
    checkStatus: Any = Field(default=None, json_schema_extra={"readOnly": True})
    lastHeartbeat: Any = Field(default=None, json_schema_extra={"readOnly": True})
    registeredAt: Any = Field(default=None, json_schema_extra={"readOnly": True})


class Heartbeat(Model):
    """`PUT /registry-svc/instance/{id}/heartbeat`: renew; optionally set the status."""

    status: Status | None = None


class Maintenance(Model):
    """`PUT /registry-svc/instance/{id}/maintenance`: take an instance out of routing (its
    checks go on), or put it back with `enable: false`."""

    enable: Annotated[bool, Strict()] = True
    reason: FreeText | None = Field(default=None, description="why, shown with the instance")


class NodeMaintenance(Maintenance):
    """`PUT /registry-svc/node/maintenance`: maintenance for every instance on a node."""

    node: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=2048, pattern=NO_CONTROL)] = Field(
        description="the node's id or URL"
    )


# -- Tokens and nodes ------------------------------------------------------------------


TTL_PATTERN = r"^[0-9]{1,9}[smhd]$"
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CreateToken(Model):
    """`POST /registry-svc/tokens`. A service token carries the slug it may act for."""

    role: Role
    slug: Slug | None = Field(default=None, description="required for a service token, refused for the others")
    description: FreeText = ""
    ttl: Annotated[str, Strict(), StringConstraints(pattern=TTL_PATTERN)] | None = Field(
        default=None,
        description="the token expires this long after its creation: seconds, minutes, hours or days "
        "(`90s`, `30m`, `24h`, `7d`; at most 3650d); never by default",
    )

    @property
    def ttl_seconds(self) -> int | None:
        if self.ttl is None:
            return None
        return int(self.ttl[:-1]) * TTL_UNITS[self.ttl[-1]]

    @model_validator(mode="after")
    def _slug_for_services(self) -> CreateToken:
        if self.ttl_seconds is not None and not 1 <= self.ttl_seconds <= 3650 * 86400:
            raise field_problem("ttl", "must be between 1s and 3650d")
        if self.role == "service" and self.slug is None:
            raise field_problem("slug", "required for a service token")
        if self.role != "service" and self.slug is not None:
            raise field_problem("slug", f"only service tokens carry a slug, not {self.role} tokens")
        return self


class NodeFilter(Model):
    """`POST /registry-svc/nodes`: every given filter must match (an empty body lists all)."""

    ids: (
        Annotated[
            list[Annotated[str, Strict(), StringConstraints(min_length=1, max_length=256, pattern=NO_CONTROL)]],
            Field(max_length=10000),
        ]
        | None
    ) = None
    region: ShortText | None = None
    availabilityZone: ShortText | None = None
    hasGpu: Annotated[bool, Strict()] | None = None
    gpuFreeMiB: Annotated[int, Strict(), Field(ge=0, le=1 << 30)] | None = Field(
        default=None, description="GPUs with at least this much free memory (MiB)"
    )
    gpuMaxUtilization: Annotated[int, Strict(), Field(ge=0, le=100)] | None = Field(
        default=None, description="GPUs at most this busy (percent)"
    )
    gpuCount: Annotated[int, Strict(), Field(ge=1, le=1024)] | None = Field(
        default=None, description="how many GPUs must meet gpuFreeMiB and gpuMaxUtilization (default 1)"
    )


# Queries (query_models.py), definitions (definition_models.py) and xDS (xds_models.py),
# re-exported: models.PickQuery, models.SaveDefinition etc.
from registry_svc.definition_models import *  # noqa: E402, F403
from registry_svc.query_models import *  # noqa: E402, F403
from registry_svc.xds_models import *  # noqa: E402, F403
