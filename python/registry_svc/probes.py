"""Health probes: one TCP connect or one HTTP GET, fenced by the probe networks.

A probe never raises: whatever goes wrong (a refused address, a name that does not
resolve, a timeout, a backend that sends garbage or megabytes without a newline, a URL
stored before the canonical form existed) ends as a failed `ProbeResult` with a short
reason, which becomes the instance's `statusReason`.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

from registry_svc import urls
from registry_svc.netguard import NetworkPolicy, Refused
from registry_svc.status import short

# The status line of an HTTP answer must come within this many bytes.
MAX_STATUS_LINE = 1024


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
    policy: NetworkPolicy, endpoint: urls.Endpoint, tls: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first allowed address of the endpoint's host that answers."""
    addresses = await policy.resolve(endpoint.host, endpoint.effective_port)
    last: OSError | None = None
    for address in addresses:
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


async def probe_tcp(policy: NetworkPolicy, endpoint: urls.Endpoint, timeout: float) -> ProbeResult:
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


async def probe_http(policy: NetworkPolicy, endpoint: urls.Endpoint, path: str, timeout: float) -> ProbeResult:
    """Passes on a 2xx answer to `GET endpoint.path + path` within `timeout`."""

    async def exchange() -> int:
        reader, writer = await _connect(policy, endpoint, tls=endpoint.scheme == "https")
        try:
            writer.write(
                f"GET {endpoint.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {endpoint.netloc}\r\n"
                "User-Agent: registry-svc-health\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await _read_status_line(reader)
        finally:
            writer.close()
        fields = status_line.split()
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
            raise ValueError("not an HTTP response")
        return int(fields[1])

    try:
        status = await asyncio.wait_for(exchange(), timeout)
    except Exception as e:
        return ProbeResult(False, _error_reason(e, timeout))
    return ProbeResult(200 <= status < 300, f"HTTP {status}")


async def probe(policy: NetworkPolicy, instance: dict[str, Any]) -> ProbeResult:
    """Runs the instance's configured check once."""
    check = instance.get("healthCheck") or {}
    timeout = float(check.get("timeoutSeconds", 2))
    try:
        endpoint = urls.parse_url(str(instance.get("url")))
    except urls.UrlError as e:
        return ProbeResult(False, short(f"url not probed: {e}"))
    if check.get("type") == "http":
        return await probe_http(policy, endpoint, str(check.get("path", "/health")), timeout)
    return await probe_tcp(policy, endpoint, timeout)
