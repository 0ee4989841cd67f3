"""``/api/users``: a user, its accounts, and its default-asset history."""

from __future__ import annotations

from aiohttp import web

from server.http.app_keys import ASSETS
from server.http.asset_limits import check_assets
from server.http.bearer_auth import actor_of
from server.http.handlers.documents import user_entry_json, user_json
from server.http.handlers.lookups import asset_of
from server.http.handlers.paths import id_from_path, page_query, split_page
from server.http.idempotent_requests import respond
from server.http.reads import read_only, reading
from server.http.request_bodies import EmptyBody, read_json_body
from server.ledger import accounts, history
from server.ledger.idempotency import Outcome
from server.ledger.records import PageQuery


async def create_user(request: web.Request) -> web.Response:
    """``POST /api/users`` (no body, or ``{}``) → 201 the user with its default-asset account +
    Location; with an ``Idempotency-Key`` a repeat answers the same user (one user made)."""
    body = await read_json_body(request, EmptyBody) if request.body_exists else EmptyBody()
    await check_assets(request, assets=[(await asset_of(request, None)).asset_id])

    async def operation(db, key):
        user = await accounts.create_user(db, await request.app[ASSETS].get(db, None), actor_of(request))
        return Outcome.of(201, user_json(user), location=f"/api/users/{user.user_id}")

    return await respond(request, body, operation)


@read_only
async def get_user(request: web.Request) -> web.Response:
    """``GET /api/users/{id}`` → 200 ``{"userId", "balance" (default asset), "updatedAt", "accounts"}``."""
    user_id = id_from_path(request)
    await check_assets(request, assets=[(await asset_of(request, None)).asset_id])  # its balance is the default's
    async with reading(request).connection() as db:
        user = await accounts.read_user(db, user_id, await request.app[ASSETS].get(db, None))
    return web.json_response(user_json(user))


@read_only
async def get_history(request: web.Request) -> web.Response:
    """``GET /api/users/{id}/history?limit=&cursor=`` → 200 ``{"userId", "entries", "nextCursor"}``:
    the user's default-asset account, newest first; ``nextCursor`` is null on the last page."""
    user_id = id_from_path(request)
    query = page_query(request)
    await check_assets(request, assets=[(await asset_of(request, None)).asset_id])
    async with reading(request).connection() as db:
        account_id = await accounts.user_account_id(db, user_id, await request.app[ASSETS].get(db, None))
        entries = await history.read_entries(db, account_id, PageQuery(query.before, query.limit + 1))
    page, cursor = split_page(entries, lambda entry: entry.entry_id, query.limit)
    return web.json_response({"userId": user_id, "entries": [user_entry_json(e) for e in page],
                              "nextCursor": cursor})
