"""The `oo` command's connection: which server, which token, and HTTP with clear failures.

Server order: `--url`, `OB_SERVER_URL`, the server of the last `oo login` (the current
context), then http://127.0.0.1:11337. Token order: `--token`, `OB_TOKEN`, the token saved
by `oo login` for this server, and, for a server on this machine, the local admin token
file (`~/.registry-svc/admin.token`, or `$REGISTRY_SVC_DATA_DIR/admin.token`). Server URLs
are normalised (`http://` added, `localhost` is 127.0.0.1, no trailing '/'), so every
spelling of one server finds its saved token.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3

# Library warnings (TLS, deprecations) are not for an `oo` user's terminal.
urllib3.disable_warnings()

DEFAULT_SERVER = "http://127.0.0.1:11337"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}

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


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "registry-svc" / "cli.json"


def load_config() -> dict[str, Any]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def normalize_server(url: str) -> str:
    """`localhost:11337`, `http://LOCALHOST:11337/` and `http://127.0.0.1:11337` are one server."""
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    if host == "localhost":
        host = "127.0.0.1"
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path}"


def current_server() -> str | None:
    """The server of the last `oo login`."""
    server = load_config().get("current")
    return str(server) if server else None


def save_token(server: str, token: str) -> Path:
    """Saves `token` for `server` in the user's config (readable by the user only) and makes
    that server the current context."""
    config = load_config()
    config.setdefault("tokens", {})[server] = token
    config["current"] = server
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    path.chmod(0o600)
    return path


def local_admin_token() -> str | None:
    try:
        return admin_token_path().read_text().strip() or None
    except OSError:
        return None


def admin_token_path() -> Path:
    return (
        Path(os.environ.get("REGISTRY_SVC_DATA_DIR") or str(Path.home() / ".registry-svc")).expanduser() / "admin.token"
    )


def resolve_token(server: str, flag: str | None) -> str | None:
    if flag:
        return flag
    if os.environ.get("OB_TOKEN"):
        return os.environ["OB_TOKEN"]
    saved = load_config().get("tokens", {}).get(server)
    if saved:
        return str(saved)
    if (urlsplit(server).hostname or "") in LOCAL_HOSTS:
        return local_admin_token()
    return None


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
            raise CliError(f"HTTP 401: {_error_message(reply)}\n{login_hint(self.server, self.token)}")
        if resp.status >= 400:
            raise CliError(f"HTTP {resp.status}: {_error_message(reply)}", status=resp.status, errors=_errors(reply))
        return reply


def login_hint(server: str, token: str | None) -> str:
    """How to get past a 401."""
    sent = "the token sent was refused" if token else "no token was sent"
    return (
        f"  ({sent}) give a token with `oo login TOKEN` (saved for {server}), the OB_TOKEN variable, "
        f"or --token TOKEN; on the server's machine the admin token is in {admin_token_path()}"
    )


def _reason(err: Exception) -> str:
    """The OS-level reason inside urllib3's wrapping (e.g. "Connection refused")."""
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
    return reply.body.decode(errors="replace")
