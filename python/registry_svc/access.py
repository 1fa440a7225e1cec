"""Per-request accounting in the workers: the request counters and latency histograms of
`/metrics`, and with `--log-format json` the access log (one JSON line per request: method,
path, route, status, duration, the caller's token id, never its secret)."""

from __future__ import annotations

import logging
import time

import orjson
from robyn import Request, Response

from registry_svc import _core, metrics
from registry_svc.auth import Caller

log = logging.getLogger("registry_svc.access")
CLIENT_ADDR_HEADER = "x-registry-client-addr"  # set by the gate (rust/edge/)
QUERY_HEADER = "x-registry-query"  # a blocking query's id, set by the gate (rust/edge/)


class JsonFormatter(logging.Formatter):
    """Every log line as one JSON object; an access line in the gates' own format
    (`_core.access_line`, rust/edge/access.rs), so that both write the same line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "access", None)
        if isinstance(fields, tuple):
            return _core.access_line(record.created, *fields)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = {"ts": stamp, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def use_json_logs() -> None:
    """Switches this process's log lines to JSON and turns the access log on."""
    global enabled
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    enabled = True


enabled = False


def observe(route: str, request: Request, response: Response, started: float, caller: Caller | None) -> None:
    """Counts one answered request (and logs it when the access log is on)."""
    seconds = time.perf_counter() - started
    method = request.method.upper()
    status = int(response.status_code)
    metrics.request(route, method, status, seconds)
    if enabled:
        token = caller.token_id if caller is not None and caller.token_id else None
        fields = (method, request.url.path, route, status, seconds, token, request.headers.get(CLIENT_ADDR_HEADER))
        log.info("%s %s %d", method, request.url.path, status, extra={"access": fields})
