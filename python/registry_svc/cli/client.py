"""The `oo` command's connection: HTTP with clear failures. Which server and which token
it calls is `registry_svc.client.config`'s answer, the one the Python client gives too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import urllib3

from registry_svc.client.config import login_hint

# Library warnings (TLS, deprecations) are not for an `oo` user's terminal.
urllib3.disable_warnings()

# Exit codes scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2


class CliError(Exception):
    """A failure to report on stderr, with the exit code to leave with."""

    def __init__(
        self, message: str, code: int = EXIT_ERROR, status: int | None = None, errors: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status  # the HTTP status, for an HTTP error
        # Every problem the server found (its `errors`), when it found several.
        self.errors = errors or []


@dataclass
class Reply:
    status: int
    body: bytes
    index: int | None = None  # X-Registry-Index

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Client:
    server: str
    token: str | None

    def __post_init__(self) -> None:
        self.server = self.server.rstrip("/")
        self._pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=60))

    def request(self, method: str, path: str, body: Any = None, read_timeout: float = 60.0) -> Reply:
        """Sends the request; raises CliError for an HTTP error (exit 1) or no connection (exit 2).
        `read_timeout`: how long the answer may take (a blocking query's wait, and more)."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = self.server + (path if path.startswith("/") else "/" + path)
        try:
            resp = self._pool.request(
                method, url, body=payload, headers=headers, timeout=urllib3.Timeout(connect=5, read=read_timeout)
            )
        except urllib3.exceptions.HTTPError as e:
            raise CliError(f"cannot connect to {self.server}: {_reason(e)}", EXIT_UNREACHABLE) from None
        index = resp.headers.get("x-registry-index")
        reply = Reply(resp.status, resp.data, int(index) if index and index.isdigit() else None)
        if resp.status == 401:
            raise CliError(f"HTTP 401: {_error_message(reply)}\n  {login_hint(self.server, self.token)}")
        if resp.status >= 400:
            raise CliError(f"HTTP {resp.status}: {_error_message(reply)}", status=resp.status, errors=_errors(reply))
        return reply


def _reason(err: Exception) -> str:
    """The OS-level reason inside urllib3's wrapping (e.g. "Connection refused")."""
    if "RemoteDisconnected" in str(err):
        return "the server closed the connection without an answer (stopping or restarting?)"
    match = re.search(r"\[Errno -?\d+\] ([^'\)]+)", str(err))
    return match.group(1).strip() if match else str(err)


def _errors(reply: Reply) -> list[str]:
    """The server's list of every problem in a refused body (none when it found one)."""
    try:
        data = reply.json()
    except ValueError:
        return []
    found = data.get("errors") if isinstance(data, dict) else None
    return [str(e) for e in found] if isinstance(found, list) else []


def _error_message(reply: Reply) -> str:
    try:
        data = reply.json()
    except ValueError:
        return reply.body.decode(errors="replace").strip() or "(no body)"
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    if isinstance(data, dict) and data.get("status") == "starting":  # /health before the workers answer
        return "the server is starting; retry shortly"
    return reply.body.decode(errors="replace")
