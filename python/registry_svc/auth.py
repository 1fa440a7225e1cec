"""Tokens, roles and permission checks.

Tokens are opaque `rsv_...` secrets; the store keeps only their SHA-256. A request's token
is resolved through a per-process cache that is dropped whenever the tokens collection
changes (its registry index moves), so a revoked token is refused at once by every process.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from registry_svc import _core
from registry_svc.clock import format_time, parse_time
from registry_svc.errors import ApiError

if TYPE_CHECKING:
    from robyn import Request

TOKENS = "tokens"
SECRET_PREFIX = "rsv_"

# Permissions and roles are the gates' too: kept once in rust/roles.rs.
INSTANCE_VIEW = _core.PERMISSIONS["INSTANCE_VIEW"]
INSTANCE_EDIT = _core.PERMISSIONS["INSTANCE_EDIT"]
INSTANCE_DELETE = _core.PERMISSIONS["INSTANCE_DELETE"]
DEFINITION_VIEW = _core.PERMISSIONS["DEFINITION_VIEW"]
DEFINITION_EDIT = _core.PERMISSIONS["DEFINITION_EDIT"]
DEFINITION_DELETE = _core.PERMISSIONS["DEFINITION_DELETE"]
NODE_VIEW = _core.PERMISSIONS["NODE_VIEW"]
NODE_DELETE = _core.PERMISSIONS["NODE_DELETE"]
ADMIN = _core.PERMISSIONS["ADMIN"]
# Routes anyone may call, without a token: /health, /version, echo, and this node's own
# record (node/self carries only what the node says about itself; see README).
PUBLIC = "public"

# What each role grants, for the OpenAPI document (a check asks `_core.role_allows`).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {role: frozenset(granted) for role, granted in _core.ROLES}
ROLES = tuple(ROLE_PERMISSIONS)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's id, role and (for service tokens) slug."""

    token_id: str
    role: str
    slug: str | None
    # Unix seconds after which the token is refused; None: it does not expire.
    expires: float | None = None

    def require(self, permission: str) -> None:
        """Raises 403 naming `permission` unless the caller's role grants it."""
        if permission == PUBLIC:
            return
        if not _core.role_allows(self.role, permission):
            if permission == ADMIN:
                raise ApiError(403, "this endpoint requires an admin token")
            raise ApiError(403, f"token lacks permission {permission}")

    @property
    def sees_every_slug(self) -> bool:
        """Admins and proxies see all instances; services only their own slug's."""
        return _core.sees_every_slug(self.role)


ANONYMOUS = Caller(token_id="", role="anonymous", slug=None)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token_record(
    role: str, slug: str | None, description: str, ttl_seconds: int | None = None
) -> tuple[str, dict[str, Any]]:
    """A fresh secret and the record to store for it (which holds only its hash); with
    `ttl_seconds`, an `expiresAt` that long after its creation."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    record = {
        "id": "tok_" + secrets.token_hex(8),
        "role": role,
        "slug": slug,
        "description": description,
        "createdAt": format_time(now),
        "expiresAt": None if ttl_seconds is None else format_time(now + timedelta(seconds=ttl_seconds)),
        "secretHash": hash_secret(secret),
    }
    return secret, record


def expired(record: dict[str, Any], now: float | None = None) -> bool:
    """Whether a token record's `expiresAt` has passed (never for one without)."""
    at = record.get("expiresAt")
    return at is not None and parse_time(at).timestamp() <= (time.time() if now is None else now)


def public_info(record: dict[str, Any]) -> dict[str, Any]:
    """A token record without its hash, as the API shows it."""
    return {k: v for k, v in record.items() if k != "secretHash"}


class Authenticator:
    """Resolves Authorization headers to callers with the gates' own authentication
    (`rust/tokens.rs` through `_core.authenticate`: the secret's SHA-256, the expiry, and a
    cache dropped whenever the tokens collection moves, so a revocation holds at once)."""

    def __init__(self, store: _core.Store) -> None:
        self._store = store

    def authenticate(self, request: Request) -> Caller:
        """The caller behind the request's bearer token, or a 401."""
        header = request.headers.get("authorization")
        if not header:
            raise ApiError(401, "missing Authorization header (expected 'Bearer <token>')")
        return self._caller(header)

    def authenticate_optional(self, request: Request) -> Caller:
        """The caller when a token is sent, else ANONYMOUS (for public routes)."""
        return self.authenticate(request) if request.headers.get("authorization") else ANONYMOUS

    def caller_for_secret(self, secret: str) -> Caller:
        """The caller behind a bare secret that came without a header (xDS node metadata)."""
        if not secret.strip():
            raise ApiError(401, "unknown or revoked token")
        return self._caller(f"Bearer {secret.strip()}")

    def _caller(self, header: str) -> Caller:
        try:
            token_id, role, slug, expires = _core.authenticate(self._store, header)
        except ValueError as e:
            raise ApiError(401, str(e)) from None
        return Caller(token_id=token_id, role=role, slug=slug, expires=expires)


# An expired token is kept this long (or as long as it lived, if shorter), so that its
# holder is told "expired" rather than "unknown", then removed by the node agent.
EXPIRED_KEPT_S = 3600.0


def sweep_expired(store: _core.Store, now: float | None = None) -> list[str]:
    """Deletes the tokens whose expiry passed more than their keeping time ago; returns
    their ids. A token changed or deleted meanwhile is left to the next sweep."""
    now = time.time() if now is None else now
    removed = []
    for raw in store.list(TOKENS)[1]:
        record = orjson.loads(raw)
        if record.get("expiresAt") is None:
            continue
        expires = parse_time(record["expiresAt"]).timestamp()
        lived = expires - parse_time(record["createdAt"]).timestamp()
        if now < expires + min(EXPIRED_KEPT_S, max(lived, 0.0)):
            continue
        found = store.get(TOKENS, record["id"])
        if found is None:
            continue
        try:
            store.delete(TOKENS, record["id"], found[0])
        except (_core.NotFoundError, _core.VersionMismatchError):
            continue
        removed.append(record["id"])
    return removed


def holds_valid_token(store: _core.Store, path: os.PathLike[str] | str) -> bool:
    """Whether the file at `path` holds the secret of a token the store knows."""
    from pathlib import Path

    token_file = Path(path)
    if not token_file.exists():
        return False
    secret = token_file.read_text().strip()
    if not secret:
        return False
    for token_id in store.ids_by(TOKENS, "secretHash", hash_secret(secret)):
        found = store.get(TOKENS, token_id)
        if found is not None and not expired(orjson.loads(found[1])):
            return True
    return False


def write_secret_file(path: os.PathLike[str] | str, secret: str) -> None:
    """Writes `secret` to `path` (mode 0600), atomically."""
    from pathlib import Path

    token_file = Path(path)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = token_file.with_suffix(".tmp")
    # A leftover (or planted) tmp file is removed, not followed: a symlink there would
    # send the secret wherever it points.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.replace(tmp, token_file)


def ensure_admin_token(store: _core.Store, path: os.PathLike[str] | str) -> bool:
    """Makes sure `path` holds a valid admin token, minting one if the file is missing or
    its token is not in the store. Returns True when a new token was written."""
    if holds_valid_token(store, path):
        return False
    secret, record = new_token_record("admin", None, "bootstrap admin token (admin.token)")
    store.put(TOKENS, record["id"], orjson.dumps(record), 0)
    write_secret_file(path, secret)
    return True
