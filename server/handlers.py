"""HTTP handlers: parse the request, call the ledger, shape the response. Nothing else.

JSON field names are camelCase; amounts and balances are integers in minor units; times are
ISO 8601 with a UTC offset.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import ledger, metrics
from .app_keys import BATCHER, DATABASE, DB_POOL, SETTINGS
from .idempotency import IDEMPOTENCY_KEY_HEADER, Outcome, keyed_request, respond
from .openapi import openapi_document
from .problems import (
    DATABASE_UNAVAILABLE_ERRORS,
    DatabaseUnavailable,
    Problem,
    SameAccount,
    TransferNotFound,
    ValidationFailed,
)
from .request_bodies import (
    HISTORY_DEFAULT_LIMIT,
    HISTORY_MAX_LIMIT,
    MAX_BIGINT,
    BalanceChange,
    CreditOrDebit,
    NewUser,
    TransferRequest,
    read_json_body,
)


def _id_from_path(request: web.Request) -> int:
    raw = request.match_info["id"]
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_BIGINT:
        return int(raw)
    raise ValidationFailed([{"field": "id", "reason": f"must be an integer from 1 to {MAX_BIGINT}"}])


def _balance_json(applied: ledger.AppliedChange) -> dict:
    return {"userId": applied.user_id, "balance": applied.balance}


def _account_json(account: ledger.Account) -> dict:
    return {"userId": account.user_id, "balance": account.balance, "updatedAt": account.updated_at.isoformat()}


def _transfer_json(transfer: ledger.Transfer) -> dict:
    return {
        "transferId": transfer.transfer_id, "fromUserId": transfer.from_user_id, "toUserId": transfer.to_user_id,
        "amount": transfer.amount, "description": transfer.description,
        "createdAt": transfer.created_at.isoformat(),
        "fromBalance": transfer.from_balance, "toBalance": transfer.to_balance,
    }


def _entry_json(entry: ledger.LedgerEntry) -> dict:
    return {
        "entryId": entry.entry_id, "amount": entry.amount, "balanceAfter": entry.balance_after,
        "kind": entry.kind, "description": entry.description, "idempotencyKey": entry.idempotency_key,
        "transferId": entry.transfer_id, "createdAt": entry.created_at.isoformat(),
    }


# balance_changes_total{outcome}: the problem code of a refusal, shortened where the issue names it
_REFUSAL_OUTCOMES = {"user_not_found": "not_found"}


def _count(result: ledger.AppliedChange | Problem) -> None:
    """Count a balance change's result in ``balance_changes_total`` by outcome (503s are not results)."""
    if not isinstance(result, Problem):
        metrics.BALANCE_CHANGES.labels("applied").inc()
    elif result.status != 503:
        metrics.BALANCE_CHANGES.labels(_REFUSAL_OUTCOMES.get(result.code, result.code)).inc()


async def _counted(change: Awaitable[ledger.AppliedChange]) -> ledger.AppliedChange:
    """Await ``change`` and count its result (:func:`_count`), refusals re-raised."""
    try:
        applied = await change
    except Problem as refusal:
        _count(refusal)
        raise
    _count(applied)
    return applied


def _count_replay() -> None:
    metrics.BALANCE_CHANGES.labels("idempotent_replay").inc()


async def _apply_unkeyed(request: web.Request, user_id: int, amount: int, kind: str = "adjustment",
                         description: str | None = None) -> ledger.AppliedChange:
    """A change without an Idempotency-Key: through the per-account batcher when ``BATCHING`` is
    on, else one statement of its own; counted in ``balance_changes_total`` either way."""
    batcher = request.app.get(BATCHER)
    if batcher is not None:
        return await _counted(batcher.apply(user_id, amount, kind, description))
    async with request.app[DATABASE].connection() as db:
        return await _counted(ledger.apply_balance_change(db, user_id, amount, kind, description))


async def _apply_keyed(request: web.Request, body, user_id: int, amount: int, kind: str,
                       description: str | None, render: Callable[[ledger.AppliedChange], dict]) -> web.Response:
    """A change sent with an Idempotency-Key. With ``BATCHING`` on it goes through the batcher
    (key claim, change and stored outcome in its batch's transaction); else through
    :func:`server.idempotency.respond`. ``render`` makes the 200 body of an applied change."""
    batcher = request.app.get(BATCHER)
    if batcher is None:
        async def operation(db, key):
            return Outcome.of(200, render(await _counted(
                ledger.apply_balance_change(db, user_id, amount, kind, description, key))))

        return await respond(request, body, operation, on_replay=_count_replay)
    keyed = keyed_request(request, body)

    def outcome_of(result: ledger.AppliedChange | Problem) -> Outcome:
        _count(result)
        if isinstance(result, Problem):
            return Outcome.of_problem(result, keyed.instance)
        return Outcome.of(200, render(result))

    outcome, replayed = await batcher.apply_keyed(user_id, amount, kind, description, keyed, outcome_of)
    if replayed:
        _count_replay()
    return outcome.response(replayed)


async def change_balance(request: web.Request) -> web.Response:
    """``PATCH /api/balance`` ``{"userId", "amount"}`` → 200 ``{"userId", "balance"}``.

    Without an Idempotency-Key this is the proof's hot path: straight to the batcher (or one
    statement), no retry wrapper (a one-row change cannot deadlock) and no outcome to store.
    """
    change = await read_json_body(request, BalanceChange)
    if IDEMPOTENCY_KEY_HEADER not in request.headers:  # the hot path
        return web.json_response(_balance_json(await _apply_unkeyed(request, change.user_id, change.amount)))
    return await _apply_keyed(request, change, change.user_id, change.amount, "adjustment", None, _balance_json)


def _entry_applied_json(applied: ledger.AppliedChange) -> dict:
    return {**_balance_json(applied), "entryId": applied.entry_id}


async def _credit_or_debit(request: web.Request, kind: str, sign: int) -> web.Response:
    user_id = _id_from_path(request)
    body = await read_json_body(request, CreditOrDebit)
    if IDEMPOTENCY_KEY_HEADER not in request.headers:
        applied = await _apply_unkeyed(request, user_id, sign * body.amount, kind, body.description)
        return web.json_response(_entry_applied_json(applied))
    return await _apply_keyed(request, body, user_id, sign * body.amount, kind, body.description,
                              _entry_applied_json)


async def credit(request: web.Request) -> web.Response:
    """``POST /api/users/{id}/credit`` ``{"amount": > 0, "description"?}`` → 200 ``{"userId", "balance", "entryId"}``."""
    return await _credit_or_debit(request, "credit", +1)


async def debit(request: web.Request) -> web.Response:
    """``POST /api/users/{id}/debit`` ``{"amount": > 0, "description"?}`` → 200, or 409 ``insufficient_funds``."""
    return await _credit_or_debit(request, "debit", -1)


async def create_transfer(request: web.Request) -> web.Response:
    """``POST /api/transfers`` ``{"fromUserId", "toUserId", "amount", "description"?}`` → 201 transfer."""
    body = await read_json_body(request, TransferRequest)
    if body.from_user_id == body.to_user_id:
        raise SameAccount(body.from_user_id)

    async def operation(db, key):
        transfer = await ledger.transfer_funds(
            db, body.from_user_id, body.to_user_id, body.amount, body.description, key
        )
        return Outcome.of(201, _transfer_json(transfer), location=f"/api/transfers/{transfer.transfer_id}")

    return await respond(request, body, operation)


async def get_transfer(request: web.Request) -> web.Response:
    """``GET /api/transfers/{id}`` → 200 the transfer with the balances right after it, or 404."""
    transfer_id = _id_from_path(request)
    async with request.app[DATABASE].connection() as db:
        transfer = await ledger.read_transfer(db, transfer_id)
    if transfer is None:
        raise TransferNotFound(transfer_id)
    return web.json_response(_transfer_json(transfer))


async def create_user(request: web.Request) -> web.Response:
    """``POST /api/users`` (no body, or ``{}``) → 201 ``{"userId", "balance": 0, "updatedAt"}`` + Location."""
    if request.body_exists:
        await read_json_body(request, NewUser)
    async with request.app[DATABASE].connection() as db:
        account = await ledger.create_user(db)
    return web.json_response(_account_json(account), status=201,
                             headers={"Location": f"/api/users/{account.user_id}"})


async def get_user(request: web.Request) -> web.Response:
    """``GET /api/users/{id}`` → 200 ``{"userId", "balance", "updatedAt"}``."""
    user_id = _id_from_path(request)
    async with request.app[DATABASE].connection() as db:
        account = await ledger.read_account(db, user_id)
    return web.json_response(_account_json(account))


def encode_cursor(entry_id: int) -> str:
    """An opaque history cursor meaning "continue below entry ``entry_id``": the id as 8 bytes,
    big-endian, in base64url without padding (always 11 characters of [A-Za-z0-9_-])."""
    return base64.urlsafe_b64encode(entry_id.to_bytes(8, "big")).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    """The entry id a cursor points below. Every 11-character base64url string is a position
    (ids past the largest are clamped to it); anything else is refused (422)."""
    if len(cursor) == 11 and cursor.isascii() and all(char.isalnum() or char in "-_" for char in cursor):
        return min(int.from_bytes(base64.urlsafe_b64decode(cursor + "="), "big"), MAX_BIGINT)
    raise ValidationFailed([{"field": "cursor", "reason": "is not a cursor returned by this API"}])


def _history_query(request: web.Request) -> tuple[int, int]:
    errors, query = [], request.query
    errors += [{"field": name, "reason": "is not a query parameter of this route"}
               for name in query if name not in ("limit", "cursor")]
    limit = HISTORY_DEFAULT_LIMIT
    if "limit" in query:
        raw = query["limit"]
        if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= HISTORY_MAX_LIMIT:
            limit = int(raw)
        else:
            errors.append({"field": "limit", "reason": f"must be an integer from 1 to {HISTORY_MAX_LIMIT}"})
    if errors:
        raise ValidationFailed(errors)
    before = _decode_cursor(query["cursor"]) if "cursor" in query else MAX_BIGINT
    return limit, before


async def get_history(request: web.Request) -> web.Response:
    """``GET /api/users/{id}/history?limit=&cursor=`` → 200 ``{"userId", "entries", "nextCursor"}``,
    newest first; ``nextCursor`` is null on the last page."""
    user_id = _id_from_path(request)
    limit, before = _history_query(request)
    async with request.app[DATABASE].connection() as db:
        entries = await ledger.read_history(db, user_id, before, limit + 1)
    page, more = entries[:limit], len(entries) > limit
    return web.json_response({
        "userId": user_id,
        "entries": [_entry_json(entry) for entry in page],
        "nextCursor": encode_cursor(page[-1].entry_id) if more else None,
    })


async def health(request: web.Request) -> web.Response:
    """``GET /api/health`` → 200 ``{"status": "ok", "database": "ok"}``, or 503 problem details
    ``database_unavailable`` when the database does not answer ``SELECT 1`` within ``HEALTH_TIMEOUT``."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].health_timeout):
            await request.app[DB_POOL].fetchval("SELECT 1")
    except DATABASE_UNAVAILABLE_ERRORS:
        raise DatabaseUnavailable("The database did not answer the health check in time.") from None
    return web.json_response({"status": "ok", "database": "ok"})


async def openapi(request: web.Request) -> web.Response:
    """``GET /api/openapi.json`` → the OpenAPI 3.1 document of this API."""
    return web.json_response(openapi_document())


async def prometheus_metrics(request: web.Request) -> web.Response:
    """``GET /metrics`` → the metrics of all workers in Prometheus text format (prometheus-client)."""
    metrics.sample_worker_metrics(request.app[DB_POOL], request.app[DATABASE])
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
