"""Discovery for other software: Envoy's REST-JSON xDS (EDS and CDS) and Prometheus's
`http_sd_configs`.

Envoy polls `POST /v3/discovery:endpoints` with a DiscoveryRequest naming clusters (our
slugs); the answer maps each slug's instances to endpoints with their weight, zone and
health. Routing follows the registry's own rule (never Starting, Unhealthy or Stopping;
Unknown only when nothing is Healthy; never an instance in maintenance): Healthy is
HEALTHY, Unknown is DEGRADED (Envoy uses degraded hosts only when healthy ones are
lacking), Stopping and maintenance are DRAINING, the rest is UNHEALTHY. `version_info` is the largest partition index of the requested slugs; a request
that already has it is held (long poll) until a slug changes or `XDS_HOLD_S` passes, then
answered 304 Not Modified. `POST /v3/discovery:clusters` gives one EDS cluster per slug,
fed from the registry cluster the Envoy names in its node metadata.

Envoy's REST subscriptions cannot send headers, so besides `Authorization` a token may come
as `node.metadata.registry_token` in the DiscoveryRequest.

Prometheus gets `GET /registry-svc/discovery/prometheus[?slug=]`: one target group per
routable instance, labelled with slug, instance id, node, zone, tags and status.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
from robyn import Request, Response

from registry_svc import auth, models, replies, watch
from registry_svc.api import Call, Context, Doc, Route, holder_of
from registry_svc.errors import ApiError
from registry_svc.http import error_response, json_response, query_params, raw_json, read_json_object

INSTANCES = "instances"
EDS_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
CDS_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
XDS_HOLD_S = 3.0  # below Envoy's request_timeout (set it to 5s or more)
ENVOY_HEALTH = {"Healthy": "HEALTHY", "Unknown": "DEGRADED", "Stopping": "DRAINING"}
XDS_PATHS = ("/v3/discovery:endpoints", "/v3/discovery:clusters")


def routable(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The instances the registry routes to: Healthy ones, else Unknown ones; never one in
    maintenance."""
    candidates = [i for i in instances if not i.get("maintenance")]
    healthy = [i for i in candidates if i.get("status") == "Healthy"]
    return healthy or [i for i in candidates if i.get("status") == "Unknown"]


def slug_instances(ctx: Context, slug: str) -> list[dict[str, Any]]:
    _, raws = ctx.store.list(INSTANCES, [("slug", slug)])
    return [orjson.loads(raw) for raw in raws]


def address(instance: dict[str, Any]) -> str:
    return str(instance.get("ip") or instance.get("host") or "")


# -- Envoy ----------------------------------------------------------------------------


def load_assignment(slug: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
    by_zone: dict[str, list[dict[str, Any]]] = {}
    for instance in instances:
        # An instance in maintenance drains, whatever its checks say.
        health = (
            "DRAINING" if instance.get("maintenance") else ENVOY_HEALTH.get(str(instance.get("status")), "UNHEALTHY")
        )
        by_zone.setdefault(str(instance.get("zone") or ""), []).append(
            {
                "endpoint": {
                    "address": {"socket_address": {"address": address(instance), "port_value": instance["port"]}}
                },
                "health_status": health,
                "load_balancing_weight": max(1, int(instance.get("weight") or 1)),
                "metadata": {
                    "filter_metadata": {"registry": {"id": instance["id"], "nodeUrl": instance.get("nodeUrl")}}
                },
            }
        )
    return {
        "@type": EDS_TYPE,
        "cluster_name": slug,
        "endpoints": [
            {"locality": {"zone": zone} if zone else {}, "lb_endpoints": endpoints}
            for zone, endpoints in sorted(by_zone.items())
        ],
    }


def xds_caller(ctx: Context, request: Request, body: models.DiscoveryRequest) -> auth.Caller:
    """The caller: the Authorization header, else `node.metadata.registry_token`."""
    if request.headers.get("authorization"):
        return ctx.auth.authenticate(request)
    token = body.metadata.registry_token
    if not token:
        raise ApiError(401, "missing token: send Authorization, or node.metadata.registry_token in the request")
    return ctx.auth.caller_for_secret(token)


async def xds(ctx: Context, request: Request) -> Response:
    """`POST /v3/discovery:endpoints` and `/v3/discovery:clusters`."""
    try:
        body = models.parse(models.DiscoveryRequest, read_json_object(request, allow_empty=True))
        caller = xds_caller(ctx, request, body)
        caller.require(auth.INSTANCE_VIEW)
        holder = holder_of(caller, request)
        if request.url.path.endswith(":clusters"):
            return await clusters(ctx, caller, body, holder)
        return await endpoints(ctx, caller, body, holder)
    except ApiError as e:
        return error_response(e.status, e.message)


async def endpoints(ctx: Context, caller: auth.Caller, body: models.DiscoveryRequest, holder: watch.Holder) -> Response:
    # Repeats count once: each slug's assignment is built, and sent, once.
    names = dict.fromkeys(body.resource_names or [])
    slugs = [n for n in names if caller.sees_every_slug or n == caller.slug]

    def version() -> int:
        return max((ctx.store.partition_index(INSTANCES, s) for s in slugs), default=0)

    known = watch.parse_index(body.version_info)
    if known is not None and known >= version():
        await ctx.watch.wait_past(version, known, XDS_HOLD_S, holder)
        if version() <= known:
            return Response(status_code=304, headers={}, description=b"")
    current = version()
    resources = [load_assignment(slug, slug_instances(ctx, slug)) for slug in slugs]
    return json_response(200, {"version_info": str(current), "type_url": EDS_TYPE, "resources": resources})


def visible_slugs(ctx: Context, caller: auth.Caller) -> list[str]:
    _, raws = ctx.store.list(INSTANCES)
    slugs = sorted({s for s in (orjson.loads(r).get("slug") for r in raws) if isinstance(s, str)})
    return slugs if caller.sees_every_slug else [s for s in slugs if s == caller.slug]


def clusters_version(slugs: list[str], registry: str) -> str:
    """CDS changes only when the set of slugs does (not at every instance write)."""
    return hashlib.sha256(orjson.dumps([registry, slugs])).hexdigest()[:16]


async def clusters(ctx: Context, caller: auth.Caller, body: models.DiscoveryRequest, holder: watch.Holder) -> Response:
    registry = body.metadata.registry_cluster or "registry"
    stamp = watch.collection_stamp(ctx.store, INSTANCES)
    known = body.version_info or ""
    deadline = time.monotonic() + XDS_HOLD_S
    while True:
        seen = stamp()
        slugs = visible_slugs(ctx, caller)
        version = clusters_version(slugs, registry)
        left = deadline - time.monotonic()
        if version != known:
            break
        if left <= 0:
            return Response(status_code=304, headers={}, description=b"")
        await ctx.watch.wait_past(stamp, seen, left, holder)
    resources = [
        {
            "@type": CDS_TYPE,
            "name": slug,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {
                "service_name": slug,
                "eds_config": {
                    "resource_api_version": "V3",
                    "api_config_source": {
                        "api_type": "REST",
                        "transport_api_version": "V3",
                        "cluster_names": [registry],
                        "refresh_delay": "1s",
                        "request_timeout": "5s",
                    },
                },
            },
        }
        for slug in slugs
    ]
    return json_response(200, {"version_info": version, "type_url": CDS_TYPE, "resources": resources})


# -- Prometheus -----------------------------------------------------------------------


def prometheus_targets(call: Call) -> Response:
    query = models.parse_query(models.SlugQuery, query_params(call.request))
    filters: list[tuple[str, str]] = []
    if query.slug is not None:
        filters.append(("slug", query.slug))
    if not call.caller.sees_every_slug:
        filters.append(("slug", call.caller.slug or ""))
    index, raws = call.ctx.store.list(INSTANCES, filters)
    by_slug: dict[str, list[dict[str, Any]]] = {}
    for raw in raws:
        instance = orjson.loads(raw)
        by_slug.setdefault(str(instance.get("slug")), []).append(instance)
    groups = []
    for slug, instances in sorted(by_slug.items()):
        for instance in routable(instances):
            host = address(instance)
            target = f"[{host}]:{instance['port']}" if ":" in host else f"{host}:{instance['port']}"
            metadata = instance.get("metadata") or {}
            labels = {
                "__meta_registry_slug": slug,
                "__meta_registry_instance_id": instance["id"],
                "__meta_registry_status": instance.get("status") or "",
                "__meta_registry_node": instance.get("nodeUrl") or "",
                "__meta_registry_zone": instance.get("zone") or "",
                "__meta_registry_tags": "," + ",".join(instance.get("tags") or []) + ",",
                "__scheme__": instance.get("scheme") or "http",
                "__metrics_path__": str(metadata.get("metricsPath") or "/metrics"),
            }
            groups.append({"targets": [target], "labels": labels})
    return raw_json(200, orjson.dumps(groups), index)


ROUTES = [
    Route("get", "/registry-svc/discovery/prometheus", prometheus_targets, auth.INSTANCE_VIEW, Doc(
        "Prometheus http_sd targets: one group per routable instance", {200: replies.TargetGroups},
        query=models.SlugQuery, index=True,
    )),
]  # fmt: skip


def is_xds(path: str) -> bool:
    return path in XDS_PATHS
