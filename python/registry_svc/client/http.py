"""The HTTP client under `Registration` and `Resolver`: one keep-alive connection per
thread, the token on every request, JSON in and out, errors as `RegistryError`."""

from __future__ import annotations

import http.client
import threading
from typing import Any
from urllib.parse import urlsplit

import orjson

from registry_svc.client.config import login_hint, resolve_server, resolve_token


class RegistryError(Exception):
    """The registry answered with an error (`status` 4xx/5xx), or could not be reached
    (`status` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class RegistryClient:
    """Calls one registry server. `url` and `token` are found the way `oo` finds them
    (`registry_svc.client.config`): `OB_SERVER_URL`, the last `oo login`, then
    http://127.0.0.1:11337; `OB_TOKEN`, the token `oo login` saved for that server, then
    (for a server on this machine) the local admin token file."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 10.0) -> None:
        server = resolve_server(url)
        parts = urlsplit(server)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"registry url must be http://host:port, got '{url or server}'")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.url = f"http://{parts.netloc}"
        self.token = resolve_token(server, token)
        self.timeout = timeout
        self._local = threading.local()

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, lower-case headers, parsed JSON body). Raises RegistryError for error
        statuses and for a server that cannot be reached."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None if body is None else orjson.dumps(body)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._connection(timeout)
            try:
                conn.request(method, path, payload, headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as e:
                self._local.conn = None
                conn.close()
                # A kept connection the server closed: once more on a fresh one.
                if attempt == 2 or not isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError)):
                    raise RegistryError(0, f"{self.url}: {e or type(e).__name__}") from None
        answer = orjson.loads(raw) if raw else None
        if response.status >= 400:
            message = str(answer.get("error", "") if isinstance(answer, dict) else raw.decode(errors="replace"))
            if response.status == 401:
                message += "; " + login_hint(self.url, self.token, "RegistryClient(token=...)")
            raise RegistryError(response.status, message)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, answer

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        conn.timeout = timeout or self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        return conn
