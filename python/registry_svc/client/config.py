"""Which server and which token: one answer for `oo` and for `registry_svc.client`.

Server order: the URL given (`--url`, or the `registry` argument), `OB_SERVER_URL`
(`OB_REGISTRY_URL`, its old name, still read), the server of the last `oo login` (the
current context), then http://127.0.0.1:11337. Token order: the token given (`--token`, or
the `token` argument), `OB_TOKEN`, the token `oo login` saved for this server, and, for a
server on this machine, the local admin token file (`~/.registry-svc/admin.token`, or
`$REGISTRY_SVC_DATA_DIR/admin.token`). Server URLs are normalised (`http://` added,
`localhost` is 127.0.0.1, no trailing '/'), so every spelling of one server finds its
saved token.

Standard library only: a service importing the client needs nothing more.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_SERVER = "http://127.0.0.1:11337"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
SERVER_VARIABLES = ("OB_SERVER_URL", "OB_REGISTRY_URL")


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


def resolve_server(given: str | None) -> str:
    """The server to call (normalised), by the order above."""
    from_env = next((os.environ[v] for v in SERVER_VARIABLES if os.environ.get(v)), None)
    return normalize_server(given or from_env or current_server() or DEFAULT_SERVER)


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


def admin_token_path() -> Path:
    return (
        Path(os.environ.get("REGISTRY_SVC_DATA_DIR") or str(Path.home() / ".registry-svc")).expanduser() / "admin.token"
    )


def local_admin_token() -> str | None:
    try:
        return admin_token_path().read_text().strip() or None
    except OSError:
        return None


def resolve_token(server: str, given: str | None) -> str | None:
    """The token to send to `server` (normalised), by the order above; None if there is none."""
    if given:
        return given
    if os.environ.get("OB_TOKEN"):
        return os.environ["OB_TOKEN"]
    saved = load_config().get("tokens", {}).get(server)
    if saved:
        return str(saved)
    if (urlsplit(server).hostname or "") in LOCAL_HOSTS:
        return local_admin_token()
    return None


def login_hint(server: str, token: str | None, option: str = "--token TOKEN") -> str:
    """How to get past a 401; `option` is the caller's own way to pass a token."""
    sent = "the token sent was refused" if token else "no token was sent"
    return (
        f"({sent}) give a token with `oo login TOKEN` (saved for {server}), the OB_TOKEN variable, "
        f"or {option}; on the server's machine the admin token is in {admin_token_path()}"
    )
