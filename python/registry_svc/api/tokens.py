"""Token administration: create, list, revoke. Admin only."""

from __future__ import annotations

import logging

import orjson
from robyn import Response

from registry_svc import _core, auth, models, records, replies, watch
from registry_svc.api import Call, Doc, Route
from registry_svc.errors import ApiError
from registry_svc.http import json_response, no_content, path_param, query_params, read_json_object

log = logging.getLogger("registry_svc")


def create_token(call: Call) -> Response:
    body = models.parse(models.CreateToken, read_json_object(call.request))
    role, slug = body.role, body.slug
    secret, record = auth.new_token_record(role, slug, body.description, body.ttl_seconds)
    index = call.ctx.store.put(auth.TOKENS, record["id"], orjson.dumps(record), 0)
    expiry = f", expires {record['expiresAt']}" if record["expiresAt"] else ""
    log.info("token %s created (role %s%s%s)", record["id"], role, f", slug {slug}" if slug else "", expiry)
    return json_response(201, {"token": secret, "info": auth.public_info(record)}, index)


async def list_tokens(call: Call) -> Response:
    stamp = watch.collection_stamp(call.ctx.store, auth.TOKENS)
    await watch.wait_if_asked(call.ctx.watch, query_params(call.request), stamp, call.holder)
    index = call.ctx.store.collection_index(auth.TOKENS)  # read first: never older than the list
    _, records = call.ctx.store.list(auth.TOKENS)
    tokens = [auth.public_info(orjson.loads(r)) for r in records]
    return json_response(200, {"tokens": tokens}, index)


def revoke_token(call: Call) -> Response:
    """Revokes a token. The last admin token cannot be revoked: the count of admins is
    taken at a tokens collection index, and the delete applies only if no token was
    written since (a guard checked at commit), so two admins revoking each other at the
    same moment cannot both succeed."""
    token_id = path_param(call.request, "id")
    store = call.ctx.store

    def attempt() -> int:
        seen = store.collection_index(auth.TOKENS)
        found = store.get(auth.TOKENS, token_id)
        if found is None:
            raise ApiError(404, f"token '{token_id}' not found")
        revoked = orjson.loads(found[1])
        if revoked["role"] == "admin" and not auth.expired(revoked):
            # Expired admin tokens open nothing: they do not count.
            admins = [
                r for r in map(orjson.loads, store.list(auth.TOKENS)[1]) if r["role"] == "admin" and not auth.expired(r)
            ]
            if len(admins) <= 1:
                raise ApiError(409, "cannot revoke the last admin token; create another admin token first")
        try:
            return store.delete(auth.TOKENS, token_id, found[0], expect_collection_index=seen)
        except _core.NotFoundError:
            raise ApiError(404, f"token '{token_id}' not found") from None

    index = records.retrying(attempt, "the tokens")
    log.info("token %s revoked", token_id)
    return no_content(index)


ROUTES = [
    Route("post", "/registry-svc/tokens", create_token, auth.ADMIN, Doc(
        "Create a token; its secret is in this answer only", {201: replies.CreatedToken}, body=models.CreateToken,
    )),
    Route("get", "/registry-svc/tokens", list_tokens, auth.ADMIN, Doc(
        "List tokens (without secrets)", {200: replies.TokenList}, blocking=True,
    )),
    Route("delete", "/registry-svc/token/:id", revoke_token, auth.ADMIN, Doc(
        "Revoke a token; refused (409) for the last admin token", {204: None}, errors=(404,),
    )),
]  # fmt: skip
