"""``/api/accounts``: open, read, change limits, freeze/unfreeze/close, history, balance at a moment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.http.app_keys import ASSETS
from server.http.asset_limits import check_assets
from server.http.bearer_auth import actor_of
from server.http.handlers.documents import account_json, entry_json, timestamp
from server.http.handlers.paths import FILTERS, id_from_path, page_query, rfc3339, split_page, unknown_parameters
from server.http.idempotent_requests import respond
from server.http.reads import read_only, reading
from server.http.request_bodies import AccountPatch, EmptyBody, NewAccount, read_json_body
from server.ledger import accounts, history
from server.ledger.idempotency import Outcome
from server.ledger.records import PageQuery
from server.problems import ValidationFailed


async def create_account(request: web.Request) -> web.Response:
    """``POST /api/accounts`` (see :class:`~server.http.request_bodies.NewAccount`) → 201 account."""
    body = await read_json_body(request, NewAccount)

    async def operation(db, key):
        asset = await request.app[ASSETS].get(db, body.asset)
        await check_assets(request, assets=[asset.asset_id])
        account = await accounts.create_account(db, accounts.NewAccount(
            asset, body.user_id, body.name, body.overdraft_limit, body.max_balance, body.metadata), actor_of(request))
        return Outcome.of(201, account_json(account), location=f"/api/accounts/{account.account_id}")

    return await respond(request, body, operation)


@read_only
async def get_account(request: web.Request) -> web.Response:
    """``GET /api/accounts/{id}`` → 200 the account, or 404 ``account_not_found``."""
    account_id = id_from_path(request)
    await check_assets(request, accounts=[account_id])
    async with reading(request).connection() as db:
        account = await accounts.read_account(db, account_id)
    return web.json_response(account_json(account))


async def update_account(request: web.Request) -> web.Response:
    """``PATCH /api/accounts/{id}`` ``{"name"?, "overdraftLimit"?, "maxBalance"?, "metadata"?}`` → 200."""
    account_id = id_from_path(request)
    body = await read_json_body(request, AccountPatch)
    await check_assets(request, accounts=[account_id])
    update = accounts.AccountUpdate(body.name, body.overdraft_limit, body.max_balance,
                                  "max_balance" in body.model_fields_set, body.metadata)

    async def operation(db, key):
        return Outcome.of(200, account_json(await accounts.update_account(db, account_id, update, actor_of(request))))

    return await respond(request, body, operation)


def _status_change(status: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        account_id = id_from_path(request)
        body = await read_json_body(request, EmptyBody) if request.body_exists else EmptyBody()
        await check_assets(request, accounts=[account_id])

        async def operation(db, key):
            return Outcome.of(200, account_json(await accounts.set_account_status(db, account_id, status,
                                                                                  actor_of(request))))

        return await respond(request, body, operation)

    handler.__doc__ = f"``POST /api/accounts/{{id}}/...`` → 200 the account, now ``{status}``."
    return handler


freeze_account = _status_change("frozen")
unfreeze_account = _status_change("open")
close_account = _status_change("closed")


@read_only
async def get_account_history(request: web.Request) -> web.Response:
    """``GET /api/accounts/{id}/history?limit=&cursor=&from=&to=&code=`` → 200 ``{"accountId",
    "entries", "nextCursor"}``, newest first."""
    account_id = id_from_path(request)
    query = page_query(request, FILTERS)
    fetch = PageQuery(query.before, query.limit + 1, query.code, query.created_from, query.created_to)
    await check_assets(request, accounts=[account_id])
    async with reading(request).connection() as db:
        entries = await history.read_entries(db, account_id, fetch)
    page, cursor = split_page(entries, lambda entry: entry.entry_id, query.limit)
    return web.json_response({"accountId": account_id, "entries": [entry_json(e) for e in page],
                              "nextCursor": cursor})


@read_only
async def get_account_balance(request: web.Request) -> web.Response:
    """``GET /api/accounts/{id}/balance?at=<RFC 3339>`` → 200 ``{"accountId", "asset", "at", "balance"}``."""
    account_id = id_from_path(request)
    errors = unknown_parameters(request, ("at",))
    at = rfc3339("at", request.query["at"], errors) if "at" in request.query else dt.datetime.now(dt.UTC)
    if errors:
        raise ValidationFailed(errors)
    await check_assets(request, accounts=[account_id])
    async with reading(request).connection() as db:
        asset, balance = await history.balance_at(db, account_id, at)
    return web.json_response({"accountId": account_id, "asset": asset, "at": timestamp(at), "balance": balance})
