"""``/api/keys``: scoped API keys (server/ledger/api_keys.py), made, listed and revoked over HTTP."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from server.http.app_keys import DATABASE
from server.http.bearer_auth import actor_of
from server.http.handlers.documents import timestamp
from server.http.handlers.paths import id_from_path, refuse_unknown_parameters
from server.http.idempotent_requests import respond
from server.http.request_bodies import EmptyBody, NewApiKey, read_json_body
from server.ledger import api_keys
from server.ledger.idempotency import Outcome
from server.problems import AssetNotFound


def key_json(key: api_keys.ApiKey) -> dict:
    """A key as the API lists it: never its text (``POST``'s answer alone has ``key``)."""
    return {"keyId": key.key_id, "name": key.name, "hint": key.hint, "scopes": key.scopes, "assets": key.assets,
            "expiresAt": timestamp(key.expires_at) if key.expires_at else None,
            "createdAt": timestamp(key.created_at), "revokedAt": timestamp(key.revoked_at) if key.revoked_at else None}


async def create_key(request: web.Request) -> web.Response:
    """``POST /api/keys`` ``{"name", "scopes", "assets"?, "expiresInSeconds"?}`` → 201 the key with
    its text in ``key``, shown this once (an idempotent replay of the request answers ``"key":
    null``: the text is never stored); an unknown asset is 404 ``asset_not_found``."""
    body = await read_json_body(request, NewApiKey)

    async def operation(db, key):
        asset_ids = None
        if body.assets is not None:
            asset_ids = await api_keys.asset_ids_of(db, body.assets)
            if len(asset_ids) < len(body.assets):
                known = set(await api_keys.asset_codes_of(db, asset_ids))
                raise AssetNotFound(next(code for code in body.assets if code not in known))
        made = await api_keys.create_key(db, body.name, list(body.scopes), asset_ids, body.expires_in_seconds,
                                         actor_of(request))
        answered = Outcome.of(201, {**key_json(made), "key": made.key}, location=f"/api/keys/{made.key_id}")
        # a replay (the same Idempotency-Key) answers the key without its text: never stored in clear
        return dataclasses.replace(answered, stored_body=Outcome.of(201, {**key_json(made), "key": None}).body)

    return await respond(request, body, operation)


async def list_keys(request: web.Request) -> web.Response:
    """``GET /api/keys`` → 200 ``{"keys": [...]}``, every key ever made (revoked ones with
    ``revokedAt``), oldest first; never a key's text."""
    refuse_unknown_parameters(request)
    async with request.app[DATABASE].connection() as db:
        keys = await api_keys.list_keys(db)
    return web.json_response({"keys": [key_json(k) for k in keys]})


async def revoke_key(request: web.Request) -> web.Response:
    """``DELETE /api/keys/{id}`` → 204: the key is refused (401) from this answer on, by every
    worker and instance; revoking a revoked key is 204 again. 404 ``api_key_not_found``."""
    key_id = id_from_path(request)
    body = await read_json_body(request, EmptyBody) if request.body_exists else EmptyBody()

    async def operation(db, key):
        await api_keys.revoke_key(db, key_id, actor_of(request))
        return Outcome(204, "", "application/json")

    return await respond(request, body, operation)
