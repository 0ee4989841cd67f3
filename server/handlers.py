"""HTTP handlers: parse the request, call the ledger, shape the response. Nothing else."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .app_keys import DB_POOL, SETTINGS
from .ledger import apply_balance_change, read_account
from .problems import DATABASE_UNAVAILABLE_ERRORS, DatabaseUnavailable, ValidationFailed
from .request_bodies import MAX_BIGINT, BalanceChange, read_json_body


def _user_id_from_path(request: web.Request) -> int:
    raw = request.match_info["user_id"]
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_BIGINT:
        return int(raw)
    raise ValidationFailed([{"field": "userId", "reason": f"must be an integer from 1 to {MAX_BIGINT}"}])


async def change_balance(request: web.Request) -> web.Response:
    """``PATCH /api/balance`` ``{"userId", "amount"}`` → 200 ``{"userId", "balance"}`` (minor units)."""
    change = await read_json_body(request, BalanceChange)
    balance = await apply_balance_change(request.app[DB_POOL], change.user_id, change.amount)
    return web.json_response({"userId": change.user_id, "balance": balance})


async def get_user(request: web.Request) -> web.Response:
    """``GET /api/users/{id}`` → 200 ``{"userId", "balance", "updatedAt"}`` (ISO 8601, UTC)."""
    account = await read_account(request.app[DB_POOL], _user_id_from_path(request))
    return web.json_response(
        {"userId": account.user_id, "balance": account.balance, "updatedAt": account.updated_at.isoformat()}
    )


async def health(request: web.Request) -> web.Response:
    """``GET /api/health`` → 200 ``{"status": "ok", "database": "ok"}``, or 503 problem details
    ``database_unavailable`` when the database does not answer ``SELECT 1`` within ``HEALTH_TIMEOUT``."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].health_timeout):
            await request.app[DB_POOL].fetchval("SELECT 1")
    except DATABASE_UNAVAILABLE_ERRORS:
        raise DatabaseUnavailable("The database did not answer the health check in time.") from None
    return web.json_response({"status": "ok", "database": "ok"})
