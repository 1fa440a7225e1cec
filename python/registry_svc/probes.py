"""Health probes: a TCP connect, an HTTP request or a gRPC health call, fenced by the probe
networks (`--probe-networks`): the Rust fence (`rust/netguard.rs`, `_core.NetPolicy`), the
same one the proxy applies. A registered URL is an instruction to open a connection, and a
service token may register any URL: without the fence a check would be a port scanner
whose results come back in `statusReason`, and a made-up host name a DNS query leaving the
machine.

A probe never raises: whatever goes wrong (a refused address, a name that does not
resolve, a timeout, a backend that sends garbage or megabytes without a newline, a URL
stored before the canonical form existed) ends as a failed `ProbeResult` with a short
reason, which becomes the instance's `statusReason`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from registry_svc import _core, urls
from registry_svc.status import short

# The status line of an HTTP answer must come within this many bytes.
MAX_STATUS_LINE = 1024
# What a check with `bodyContains` reads of an answer: its head, then this much body.
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024


class Refused(Exception):
    """A connection the probe networks do not allow; the message says why."""


async def addresses(policy: _core.NetPolicy, host: str, port: int) -> list[str]:
    """The addresses of `host` the policy lets a probe connect to, in order; Refused when
    none. A name is resolved only when the policy allows more than loopback, and the
    connection then goes to a checked address, never to the name again (no DNS rebinding)."""
    try:
        known = policy.known(host)
        if known is not None:
            return known
    except ValueError as e:
        raise Refused(str(e)) from None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise Refused(f"cannot resolve host '{host}': {e.strerror or e}") from None
    try:
        return policy.choose(host, [str(info[4][0]) for info in infos])
    except ValueError as e:
        raise Refused(str(e)) from None


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str


def _error_reason(err: BaseException, timeout: float) -> str:
    if isinstance(err, TimeoutError):
        return f"timeout after {timeout:g}s"
    if isinstance(err, ConnectionRefusedError):
        return "connect refused"
    if isinstance(err, (Refused, urls.UrlError)):
        return str(err)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return short(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


def _unverified_tls() -> ssl.SSLContext:
    # A health check asks "does it answer", not "is it who it claims": like Consul's
    # TLSSkipVerify, self-signed upstreams must not read as down.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_TLS = _unverified_tls()


async def _connect(
    policy: _core.NetPolicy, endpoint: urls.Endpoint, tls: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first allowed address of the endpoint's host that answers."""
    last: OSError | None = None
    for address in await addresses(policy, endpoint.host, endpoint.effective_port):
        try:
            return await asyncio.open_connection(
                address,
                endpoint.effective_port,
                ssl=_TLS if tls else None,
                server_hostname=(None if endpoint.is_ip else endpoint.host) if tls else None,
            )
        except OSError as e:
            last = e
    assert last is not None
    raise last


async def probe_tcp(policy: _core.NetPolicy, endpoint: urls.Endpoint, timeout: float) -> ProbeResult:
    """Passes when a TCP connection to the endpoint opens within `timeout`."""
    try:
        _, writer = await asyncio.wait_for(_connect(policy, endpoint, tls=False), timeout)
    except Exception as e:
        return ProbeResult(False, _error_reason(e, timeout))
    writer.close()
    return ProbeResult(True, "tcp connect ok")


async def _read_status_line(reader: asyncio.StreamReader) -> bytes:
    line = b""
    while b"\n" not in line:
        chunk = await reader.read(MAX_STATUS_LINE - len(line))
        if not chunk:
            break
        line += chunk
        if len(line) >= MAX_STATUS_LINE and b"\n" not in line:
            raise ValueError(f"no HTTP status line in the first {MAX_STATUS_LINE} bytes")
    return line.split(b"\n", 1)[0]


async def _read_answer(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The answer as sent (the connection closes after it), at most `limit` bytes."""
    data = b""
    while len(data) < limit:
        chunk = await reader.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def probe_http(
    policy: _core.NetPolicy,
    endpoint: urls.Endpoint,
    path: str,
    timeout: float,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    expected: tuple[int, int] = (200, 299),
    body_contains: str | None = None,
) -> ProbeResult:
    """Passes when `method endpoint.path + path` is answered within `timeout` with a status
    in `expected` (and, with `body_contains`, a body whose first MAX_BODY bytes hold it)."""

    async def exchange() -> tuple[int, bytes]:
        reader, writer = await _connect(policy, endpoint, tls=endpoint.scheme == "https")
        try:
            extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
            # HTTP/1.0 when the body is read: no chunked framing to search through.
            version = "HTTP/1.0" if body_contains else "HTTP/1.1"
            writer.write(
                f"{method} {endpoint.path.rstrip('/')}{path} {version}\r\nHost: {endpoint.netloc}\r\n"
                f"User-Agent: registry-svc-health\r\n{extra}Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            if body_contains:
                answer = await _read_answer(reader, MAX_HEAD + MAX_BODY)
                status_line = answer.split(b"\n", 1)[0]
                body = answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b""
            else:
                status_line, body = await _read_status_line(reader), b""
        finally:
            writer.close()
        fields = status_line.split()
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
            raise ValueError("not an HTTP response")
        return int(fields[1]), body

    try:
        status, body = await asyncio.wait_for(exchange(), timeout)
    except Exception as e:
        return ProbeResult(False, _error_reason(e, timeout))
    if not expected[0] <= status <= expected[1]:
        if expected == (200, 299):  # the usual rule goes without saying
            return ProbeResult(False, f"HTTP {status}")
        wanted = str(expected[0]) if expected[0] == expected[1] else f"{expected[0]}-{expected[1]}"
        return ProbeResult(False, f"HTTP {status} (expected {wanted})")
    if body_contains and body_contains.encode() not in body[:MAX_BODY]:
        return ProbeResult(False, short(f"HTTP {status}, but the body lacks '{body_contains}'"))
    return ProbeResult(True, f"HTTP {status}")


async def probe_grpc(policy: _core.NetPolicy, endpoint: urls.Endpoint, service: str, timeout: float) -> ProbeResult:
    """Passes when grpc.health.v1 `Check(service)` answers SERVING within `timeout`
    (plaintext HTTP/2 to the first allowed address of the host: no name is resolved by
    gRPC, no proxy used)."""
    # Imported on first use: only nodes that run gRPC checks pay for it.
    import grpc  # type: ignore[import-untyped]
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

    async def ask() -> str:
        address = (await addresses(policy, endpoint.host, endpoint.effective_port))[0]
        target = (
            f"ipv6:[{address}]:{endpoint.effective_port}"
            if ":" in address
            else f"ipv4:{address}:{endpoint.effective_port}"
        )
        async with grpc.aio.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    try:
        serving = await asyncio.wait_for(ask(), timeout + 0.5)
    except grpc.aio.AioRpcError as e:
        return ProbeResult(False, short(f"gRPC {e.code().name}: {e.details() or ''}".rstrip(": ")))
    except Exception as e:
        return ProbeResult(False, _error_reason(e, timeout))
    return ProbeResult(serving == "SERVING", f"gRPC health {serving}")


async def probe_check(policy: _core.NetPolicy, instance: dict[str, Any], check: dict[str, Any]) -> ProbeResult:
    """Runs one check of the instance (http, grpc, else tcp) once."""
    timeout = float(check.get("timeoutSeconds") or 2)
    try:
        endpoint = urls.parse_url(str(instance.get("url")))
    except urls.UrlError as e:
        return ProbeResult(False, short(f"url not probed: {e}"))
    if check.get("port"):
        endpoint = dataclasses.replace(endpoint, port=int(check["port"]))
    if check.get("type") == "http":
        low, _, high = str(check.get("expectedStatus", "200-299")).partition("-")
        return await probe_http(
            policy, endpoint, str(check.get("path", "/health")), timeout, method=str(check.get("method", "GET")),
            headers=check.get("headers"), expected=(int(low), int(high or low)), body_contains=check.get("bodyContains"),
        )  # fmt: skip
    if check.get("type") == "grpc":
        return await probe_grpc(policy, endpoint, str(check.get("grpcService", "")), timeout)
    return await probe_tcp(policy, endpoint, timeout)


async def probe(policy: _core.NetPolicy, instance: dict[str, Any]) -> ProbeResult:
    """Runs the instance's configured `healthCheck` once: a check like those of `checks`
    (GET, 2xx for http)."""
    return await probe_check(policy, instance, instance.get("healthCheck") or {})
