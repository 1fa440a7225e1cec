"""The built-in proxy: `/<slug>/rest...` is forwarded to an instance of that slug.

The instance is chosen by the same Rust selection as `pick` (the slug's policy), and the
request goes to `instance.url + original path + query`: the slug stays in the path, as in
1Backend. Method, headers and body pass through; hop-by-hop headers are dropped. The
X-Forwarded-* headers describe this hop: the client's address is appended to
X-Forwarded-For, and X-Forwarded-Proto/-Host come from the connection and its Host header,
never from what the client claims. Response bodies pass as they came (a gzip body stays
gzip). A body over 1 MiB, or of unknown length, is streamed to the client as it arrives
(chunked); a smaller one is read whole. Upstream connections are pooled (urllib3).

One slug holds at most `PER_SLUG` of a process's forwarding threads; its other requests wait
on the event loop, so an upstream that hangs slows its own slug only.

Refused before any upstream is contacted:
- a registry token (`rsv_...`) in Authorization is never forwarded: the header is dropped;
- a path with a dot segment (`..`, `.`, also percent-encoded or behind a backslash) is a
  400: the upstream would resolve it outside `<instance path>/<slug>/`;
- a request that already went through a registry proxy (`X-Registry-Forwarded`) is a 508:
  an instance registered at a registry's own address would otherwise loop until timeout.

Upstreams are fenced by `--proxy-networks` (`netguard.py`): the instance's host is
resolved under that policy and the connection goes to the checked address, with the
canonical host in the Host header. An upstream outside the networks is not contacted: it
counts as a connect failure (502 naming the reason, retried elsewhere when idempotent).

Failures: a connect failure is retried once on another instance for idempotent methods.
Connect failures and 5xx answers feed the selector's passive outlier detection, which
ejects an instance after 5 in a row (without touching its stored status). Unknown slug
404, nothing routable 503, upstream failure 502.

Like 1Backend's proxy, this needs no registry token: the upstream service authorizes its
own requests (the Authorization header is passed through).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Generator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import urllib3
from robyn import Headers, Request, Response, StreamingResponse
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError

from registry_svc import _core, metrics, urls
from registry_svc.api.instances import RESERVED_SLUGS
from registry_svc.auth import SECRET_PREFIX
from registry_svc.http import error_response
from registry_svc.netguard import NetworkPolicy, Refused

log = logging.getLogger("registry_svc")

CLIENT_ADDR_HEADER = "x-registry-client-addr"  # rust/front.rs
TARGET_HEADER = "x-registry-target"  # rust/front.rs
# Set on every forwarded request; a request that carries it is never forwarded again.
FORWARDED_HEADER = "x-registry-forwarded"

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 60.0
# Forwarding threads per process, and how many of them one slug may hold: requests over a
# slug's share wait on the event loop, holding no thread, so a slug whose upstream hangs
# cannot starve the others (it takes MAX_CONCURRENT / PER_SLUG hanging slugs to fill the pool).
MAX_CONCURRENT = 64
PER_SLUG = 8
# Upstream bodies up to this size are read whole; larger or unsized ones are streamed.
BUFFERED_BODY = 1 << 20
STREAM_CHUNK = 64 << 10
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "trailers", "transfer-encoding", "upgrade",
        # Recomputed for the new message:
        "content-length", "host",
        # Set by the gate in front of the workers for them only.
        CLIENT_ADDR_HEADER, TARGET_HEADER,
    }
)  # fmt: skip
_DOT_SEGMENTS = frozenset({".", ".."})


def has_dot_segment(path: str) -> bool:
    """Whether `path` has a `.` or `..` segment once percent-decoded, counting `\\` as a
    separator (some servers do), so `/svc/%2e%2e/x` and `/svc/..%5cx` count."""
    decoded = unquote(unquote(path)).replace("\\", "/")
    return any(segment in _DOT_SEGMENTS for segment in decoded.split("/"))


def _rebuilt_target(request: Request) -> str:
    """The target from Robyn's view, for a request that did not come through the gate."""
    query = "&".join(f"{k}={v}" if v != "" else k for k, v in request.query_params.multi_items())
    return request.url.path + (f"?{query}" if query else "")


def is_registry_token(authorization: str) -> bool:
    """Whether an Authorization value carries a registry token (bare or as a bearer)."""
    value = authorization.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value.startswith(SECRET_PREFIX)


def _hop_by_hop(headers: list[tuple[str, str]]) -> frozenset[str]:
    """The standard hop-by-hop headers plus any the Connection header names."""
    named = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    return HOP_BY_HOP | frozenset(named)


def slug_of(path: str) -> str | None:
    """The first path segment, if it can be a slug (built-in prefixes cannot)."""
    first = path.lstrip("/").split("/", 1)[0]
    return first if first and first not in RESERVED_SLUGS else None


def _chunks(upstream: urllib3.BaseHTTPResponse) -> Generator[str | bytes, None, None]:
    """The upstream's body in chunks as they arrive; its connection goes back to the pool
    only when the body was read to the end."""
    done = False
    try:
        yield from upstream.stream(STREAM_CHUNK, decode_content=False)
        done = True
    finally:
        if done:
            upstream.release_conn()
        else:
            upstream.close()


class Bulkhead:
    """At most `limit` holders per key at once; the others wait on the event loop (one per
    worker process, like the watchers'). A key's semaphore lives while anyone uses it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        semaphore, users = self._keys.get(key) or (asyncio.Semaphore(self.limit), 0)
        self._keys[key] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._keys[key]
            if users == 1:
                del self._keys[key]
            else:
                self._keys[key] = (semaphore, users - 1)


class Proxy:
    """Forwards requests for one worker process; create it after the fork."""

    def __init__(self, store: _core.Store, policy: NetworkPolicy, read_timeout: float = READ_TIMEOUT_S) -> None:
        self.store = store
        self.policy = policy
        self.pool = urllib3.PoolManager(
            num_pools=512,
            maxsize=MAX_CONCURRENT,
            retries=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=read_timeout),
        )
        self.executor = ThreadPoolExecutor(MAX_CONCURRENT, thread_name_prefix="proxy")
        self.bulkhead = Bulkhead(PER_SLUG)

    async def handle(self, request: Request) -> Response | StreamingResponse | None:
        """The upstream's response, or None when the path names no slug."""
        slug = slug_of(request.url.path)
        if slug is None:
            return None
        async with self.bulkhead.slot(slug):
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, slug, request)

    def forward(self, slug: str, request: Request) -> Response | StreamingResponse | None:
        method = request.method.upper()
        if request.headers.get(FORWARDED_HEADER) is not None:
            return error_response(508, f"loop detected: this request to '{slug}' was already forwarded by a registry")
        # The target as the client sent it (the gate's header): path and query go on byte
        # for byte. Robyn's own view of the query is grouped by name.
        target = request.headers.get(TARGET_HEADER) or _rebuilt_target(request)
        if has_dot_segment(target.partition("?")[0]):
            return error_response(400, "path: '.' and '..' segments are not forwarded (they would leave the slug)")
        incoming = request.headers.multi_items()
        drop = _hop_by_hop(incoming)
        headers = urllib3.HTTPHeaderDict()
        for name, value in incoming:
            lower = name.lower()
            if lower in drop or lower.startswith("x-forwarded-"):
                continue
            if lower == "authorization" and is_registry_token(value):
                continue  # a registry token is for the registry, never for an upstream
            headers.add(name, value)
        forwarded_for = request.headers.get("x-forwarded-for")
        # The workers sit behind the gate: the client's address comes from its header.
        client = request.headers.get(CLIENT_ADDR_HEADER) or request.ip_addr or "unknown"
        headers["X-Forwarded-For"] = f"{forwarded_for}, {client}" if forwarded_for else client
        headers["X-Forwarded-Proto"] = "http"  # the gate speaks plain HTTP
        headers["X-Forwarded-Host"] = request.headers.get("host") or ""
        headers[FORWARDED_HEADER] = "1"
        body = request.body.encode() if isinstance(request.body, str) else bytes(request.body or b"")
        suffix = target

        tried: list[str] = []
        last_error = ""
        for _ in range(2 if method in IDEMPOTENT else 1):
            try:
                instance_id, url, _ = self.store.pick(slug, track=True, exclude=tried)
            except _core.NotFoundError:
                return None if not tried else error_response(502, last_error)
            except _core.NoRoutableError:
                return error_response(503, f"no healthy instance of '{slug}'")
            try:
                endpoint = urls.parse_url(url)
                address = self.policy.resolve_blocking(endpoint.host, endpoint.effective_port)[0]
            except (urls.UrlError, Refused) as e:
                self._release(slug, instance_id, "not_contacted")
                tried.append(instance_id)
                last_error = f"upstream {url} of '{slug}' not contacted: {e}"
                continue
            tls_name = {"server_hostname": endpoint.host} if endpoint.scheme == "https" and not endpoint.is_ip else None
            connections = self.pool.connection_from_host(
                address, endpoint.effective_port, endpoint.scheme, pool_kwargs=tls_name
            )
            headers["Host"] = endpoint.netloc
            try:
                upstream = connections.urlopen(
                    method,
                    endpoint.path.rstrip("/") + suffix,
                    body=body or None,
                    headers=headers,
                    redirect=False,
                    assert_same_host=False,
                    retries=False,
                    decode_content=False,  # a gzip body is passed on as gzip, as labelled
                    preload_content=False,  # large bodies are streamed (see `_response`)
                )
            except (NewConnectionError, ConnectTimeoutError, ProtocolError) as e:
                # Nothing reached the upstream (or a pooled connection was dead): safe to
                # retry an idempotent request elsewhere.
                self._release(slug, instance_id, "connect_error")
                tried.append(instance_id)
                last_error = f"upstream {url} of '{slug}' failed to connect: {e}"
                continue
            except HTTPError as e:
                self._release(slug, instance_id, "error")
                return error_response(502, f"upstream {url} of '{slug}' failed: {e}")
            self._release(slug, instance_id, "5xx" if upstream.status >= 500 else "success")
            return self._response(upstream, method)
        return error_response(502, last_error)

    def _release(self, slug: str, instance_id: str, outcome: str) -> None:
        """Ends a tracked pick (anything but success feeds outlier ejection) and counts it."""
        if self.store.release(slug, instance_id, "success" if outcome == "success" else "failure"):
            metrics.ejection()
        metrics.upstream(outcome)

    @staticmethod
    def _response(upstream: urllib3.BaseHTTPResponse, method: str) -> Response | StreamingResponse:
        """The upstream's answer: read whole when it is small (up to `BUFFERED_BODY`),
        streamed in chunks otherwise, so a large body is never held in memory."""
        pairs = list(upstream.headers.iteritems())
        drop = _hop_by_hop(pairs)
        headers = Headers({})
        for name, value in pairs:
            if name.lower() not in drop:
                headers.append(name, value)
        length = upstream.headers.get("content-length")
        if (
            method == "HEAD"
            or upstream.status in (204, 304)
            or (length is not None and length.isdigit() and int(length) <= BUFFERED_BODY)
        ):
            body = upstream.data
            upstream.release_conn()
            return Response(status_code=upstream.status, headers=headers, description=body)
        return StreamingResponse(content=_chunks(upstream), status_code=upstream.status, headers=headers, media_type="")
