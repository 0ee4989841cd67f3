"""HTTP handlers: parse the request, call the ledger, shape the response. Nothing else.

JSON field names are camelCase; amounts and balances are integers in minor units; times are
RFC 3339 with a UTC offset.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import ledger, metrics
from .app_keys import ASSETS, BATCHER, DATABASE, DB_POOL, SETTINGS
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
    AccountCreditOrDebit,
    AccountPatch,
    BalanceChange,
    CreditOrDebit,
    EmptyBody,
    NewAccount,
    NewAsset,
    StrictBody,
    TransferRequest,
    read_json_body,
)


def _id_from_path(request: web.Request) -> int:
    raw = request.match_info["id"]
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_BIGINT:
        return int(raw)
    raise ValidationFailed([{"field": "id", "reason": f"must be an integer from 1 to {MAX_BIGINT}"}])


def _time(value: dt.datetime) -> str:
    return value.isoformat()


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------

def _asset_json(asset: ledger.Asset) -> dict:
    return {"code": asset.code, "scale": asset.scale, "name": asset.name, "default": asset.default,
            "systemAccountId": asset.system_account_id, "createdAt": _time(asset.created_at)}


def _account_json(account: ledger.Account) -> dict:
    return {
        "accountId": account.account_id, "asset": account.asset, "userId": account.user_id, "name": account.name,
        "system": account.system, "balance": account.balance, "available": account.available,
        "overdraftLimit": account.overdraft_limit, "maxBalance": account.max_balance, "status": account.status,
        "metadata": account.metadata, "createdAt": _time(account.created_at), "updatedAt": _time(account.updated_at),
    }


def _user_json(user: ledger.User) -> dict:
    default = user.default_account
    return {"userId": user.user_id, "balance": default.balance if default else 0,
            "updatedAt": _time(default.updated_at) if default else None,
            "accounts": [_account_json(account) for account in user.accounts]}


def _transfer_json(transfer: ledger.Transfer) -> dict:
    return {
        "transferId": transfer.transfer_id, "fromAccountId": transfer.from_account_id,
        "toAccountId": transfer.to_account_id, "fromUserId": transfer.from_user_id, "toUserId": transfer.to_user_id,
        "asset": transfer.asset, "amount": transfer.amount, "code": transfer.code,
        "description": transfer.description, "metadata": transfer.metadata, "createdAt": _time(transfer.created_at),
        "fromBalance": transfer.from_balance, "toBalance": transfer.to_balance,
    }


def _entry_json(entry: ledger.LedgerEntry) -> dict:
    return {
        "entryId": entry.entry_id, "transferId": entry.transfer_id, "amount": entry.amount,
        "balanceAfter": entry.balance_after, "counterpartyAccountId": entry.counterparty_account_id,
        "code": entry.code, "description": entry.description, "metadata": entry.metadata,
        "createdAt": _time(entry.created_at),
    }


def _user_entry_json(entry: ledger.LedgerEntry) -> dict:
    """An entry as ``GET /api/users/{id}/history`` has always shown it."""
    return {
        "entryId": entry.entry_id, "amount": entry.amount, "balanceAfter": entry.balance_after, "kind": entry.kind,
        "description": entry.description, "idempotencyKey": entry.idempotency_key,
        "transferId": entry.transfer_id, "createdAt": _time(entry.created_at),
    }


def _change_json(applied: ledger.AppliedChange) -> dict:
    return {"userId": applied.user_id, "balance": applied.balance, "accountId": applied.account_id,
            "transferId": applied.transfer_id}


def _entry_applied_json(applied: ledger.AppliedChange) -> dict:
    return {**_change_json(applied), "entryId": applied.entry_id}


# ---------------------------------------------------------------------------------------------
# Balance changes: PATCH /api/balance, credits and debits (transfers with the system account)
# ---------------------------------------------------------------------------------------------

# balance_changes_total{outcome}: the problem code of a refusal, shortened where the issue names it
_REFUSAL_OUTCOMES = {"user_not_found": "not_found", "account_not_found": "not_found"}


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


async def _apply_unkeyed(request: web.Request, ref: ledger.AccountRef,
                         change: ledger.BalanceChange) -> ledger.AppliedChange:
    """A change without an Idempotency-Key: through the per-account batcher when ``BATCHING`` is
    on, else a batch of its own; counted in ``balance_changes_total`` either way."""
    batcher = request.app.get(BATCHER)
    if batcher is not None:
        return await _counted(batcher.apply(ref, change))
    async with request.app[DATABASE].connection() as db:
        return await _counted(ledger.apply_balance_change(db, ref, change))


async def _apply_keyed(request: web.Request, body: StrictBody, ref: ledger.AccountRef, change: ledger.BalanceChange,
                       render: Callable[[ledger.AppliedChange], dict]) -> web.Response:
    """A change sent with an Idempotency-Key. With ``BATCHING`` on it goes through the batcher
    (key claim, change and stored outcome in its batch's transaction); else through
    :func:`server.idempotency.respond`. ``render`` makes the 200 body of an applied change."""
    batcher = request.app.get(BATCHER)
    if batcher is None:
        async def operation(db, key):
            keyed_change = ledger.BalanceChange(change.amount, change.kind, change.code, change.description,
                                                change.metadata, key)
            return Outcome.of(200, render(await _counted(ledger.apply_balance_change(db, ref, keyed_change))))

        return await respond(request, body, operation, on_replay=_count_replay)
    keyed = keyed_request(request, body)

    def outcome_of(result: ledger.AppliedChange | Problem) -> Outcome:
        _count(result)
        if isinstance(result, Problem):
            return Outcome.of_problem(result, keyed.instance)
        return Outcome.of(200, render(result))

    outcome, replayed = await batcher.apply_keyed(ref, change, keyed, outcome_of)
    if replayed:
        _count_replay()
    return outcome.response(replayed)


async def _apply(request: web.Request, body: StrictBody, ref: ledger.AccountRef, change: ledger.BalanceChange,
                 render: Callable[[ledger.AppliedChange], dict]) -> web.Response:
    if IDEMPOTENCY_KEY_HEADER not in request.headers:
        return web.json_response(render(await _apply_unkeyed(request, ref, change)))
    return await _apply_keyed(request, body, ref, change, render)


async def _asset(request: web.Request, code: str | None) -> ledger.Asset:
    """Asset ``code`` (None: the default asset; known without a query once looked up)."""
    assets = request.app[ASSETS]
    if code is None and assets.default is not None:
        return assets.default
    async with request.app[DATABASE].connection() as db:
        return await assets.get(db, code)


async def _asset_id(request: web.Request, code: str | None) -> int:
    return (await _asset(request, code)).asset_id


async def change_balance(request: web.Request) -> web.Response:
    """``PATCH /api/balance`` ``{"userId", "amount", "asset"?}`` → 200 ``{"userId", "balance",
    "accountId", "transferId"}``: a transfer between the asset's system account and the user's account.

    Without an Idempotency-Key this is the proof's hot path: straight to the batcher (or one
    statement), no retry wrapper (a one-account change cannot deadlock) and no outcome to store.
    """
    body = await read_json_body(request, BalanceChange)
    default = request.app[ASSETS].default
    asset_id = default.asset_id if body.asset is None and default else await _asset_id(request, body.asset)
    ref = ledger.AccountRef(None, body.user_id, asset_id)
    return await _apply(request, body, ref, ledger.BalanceChange(body.amount), _change_json)


async def _user_credit_or_debit(request: web.Request, kind: str, sign: int) -> web.Response:
    user_id = _id_from_path(request)
    body = await read_json_body(request, CreditOrDebit)
    asset = await _asset(request, body.asset)
    if sign > 0 and not asset.default:
        # a credit opens the user's account in that asset if it has none (every user has one in the
        # default asset from the start, so the hot path skips this)
        async with request.app[DATABASE].connection() as db:
            await ledger.open_user_account(db, user_id, asset)
    change = ledger.BalanceChange(sign * body.amount, kind, body.code or kind, body.description)
    return await _apply(request, body, ledger.AccountRef(None, user_id, asset.asset_id), change, _entry_applied_json)


async def credit(request: web.Request) -> web.Response:
    """``POST /api/users/{id}/credit`` ``{"amount": > 0, "asset"?, "code"?, "description"?}`` → 200
    ``{"userId", "balance", "entryId", "accountId", "transferId"}``; opens the account if needed."""
    return await _user_credit_or_debit(request, "credit", +1)


async def debit(request: web.Request) -> web.Response:
    """``POST /api/users/{id}/debit`` (as credit) → 200, or 409 ``insufficient_funds``."""
    return await _user_credit_or_debit(request, "debit", -1)


async def _account_credit_or_debit(request: web.Request, kind: str, sign: int) -> web.Response:
    account_id = _id_from_path(request)
    body = await read_json_body(request, AccountCreditOrDebit)
    change = ledger.BalanceChange(sign * body.amount, kind, body.code or kind, body.description)
    return await _apply(request, body, ledger.AccountRef(account_id), change, _entry_applied_json)


async def account_credit(request: web.Request) -> web.Response:
    """``POST /api/accounts/{id}/credit`` ``{"amount", "code"?, "description"?}`` → 200 as for users."""
    return await _account_credit_or_debit(request, "credit", +1)


async def account_debit(request: web.Request) -> web.Response:
    """``POST /api/accounts/{id}/debit`` ``{"amount", "code"?, "description"?}`` → 200 as for users."""
    return await _account_credit_or_debit(request, "debit", -1)


# ---------------------------------------------------------------------------------------------
# Transfers
# ---------------------------------------------------------------------------------------------

async def create_transfer(request: web.Request) -> web.Response:
    """``POST /api/transfers`` (see :class:`~server.request_bodies.TransferRequest`) → 201 transfer."""
    body = await read_json_body(request, TransferRequest)
    if body.from_user_id is not None and body.from_user_id == body.to_user_id:
        raise SameAccount(user_id=body.from_user_id)
    if body.from_account_id is not None and body.from_account_id == body.to_account_id:
        raise SameAccount(account_id=body.from_account_id)
    asset_id = await _asset_id(request, body.asset)
    order = ledger.TransferOrder(
        ledger.AccountRef(body.from_account_id, body.from_user_id, asset_id),
        ledger.AccountRef(body.to_account_id, body.to_user_id, asset_id),
        body.amount, body.code or "transfer", body.description, body.metadata,
    )

    async def operation(db, key):
        transfer = await ledger.transfer_funds(db, order, key)
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


def encode_cursor(position: int) -> str:
    """An opaque cursor meaning "continue below id ``position``": the id as 8 bytes, big-endian,
    in base64url without padding (always 11 characters of [A-Za-z0-9_-])."""
    return base64.urlsafe_b64encode(position.to_bytes(8, "big")).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    """The id a cursor points below. Every 11-character base64url string is a position (ids past
    the largest are clamped to it); anything else is refused (422)."""
    if len(cursor) == 11 and cursor.isascii() and all(char.isalnum() or char in "-_" for char in cursor):
        return min(int.from_bytes(base64.urlsafe_b64decode(cursor + "="), "big"), MAX_BIGINT)
    raise ValidationFailed([{"field": "cursor", "reason": "is not a cursor returned by this API"}])


def _rfc3339(name: str, raw: str, errors: list) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in raw.upper():
        errors.append({"field": name, "reason": "must be an RFC 3339 date-time with a UTC offset, "
                                                "e.g. 2026-11-01T00:00:00Z"})
        return None
    return moment


_FILTERS = ("limit", "cursor", "from", "to", "code")


def _page_query(request: web.Request, allowed: tuple[str, ...] = ("limit", "cursor")) -> ledger.PageQuery:
    """The page a listing asks for: ``limit`` (1..500, default 50), ``cursor`` and, where
    ``allowed``, ``from``/``to`` (RFC 3339) and ``code``; anything else is refused (422)."""
    errors, query = [], request.query
    errors += [{"field": name, "reason": "is not a query parameter of this route"}
               for name in query if name not in allowed]
    limit = HISTORY_DEFAULT_LIMIT
    if "limit" in query:
        raw = query["limit"]
        if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= HISTORY_MAX_LIMIT:
            limit = int(raw)
        else:
            errors.append({"field": "limit", "reason": f"must be an integer from 1 to {HISTORY_MAX_LIMIT}"})
    created_from = _rfc3339("from", query["from"], errors) if "from" in query else None
    created_to = _rfc3339("to", query["to"], errors) if "to" in query else None
    code = query.get("code")
    if code is not None and not (code.isascii() and 1 <= len(code) <= 32
                                 and all(c.islower() or c.isdigit() or c == "_" for c in code)):
        errors.append({"field": "code", "reason": "must match [a-z0-9_]{1,32}"})
    if errors:
        raise ValidationFailed(errors)
    before = _decode_cursor(query["cursor"]) if "cursor" in query else MAX_BIGINT
    return ledger.PageQuery(before, limit, code, created_from, created_to)


def _page(items: list, position: Callable[[object], int], limit: int) -> tuple[list, str | None]:
    """Split a fetch of ``limit + 1`` rows into the page and the next cursor (None on the last)."""
    page = items[:limit]
    return page, encode_cursor(position(page[-1])) if len(items) > limit else None


async def list_transfers(request: web.Request) -> web.Response:
    """``GET /api/transfers?accountId=&code=&from=&to=&limit=&cursor=`` → 200 ``{"transfers",
    "nextCursor"}``, newest first."""
    page_query = _page_query(request, (*_FILTERS, "accountId"))
    fetch = ledger.PageQuery(page_query.before, page_query.limit + 1, page_query.code, page_query.created_from,
                             page_query.created_to)
    async with request.app[DATABASE].connection() as db:
        if "accountId" in request.query:
            raw = request.query["accountId"]
            if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_BIGINT):
                raise ValidationFailed([{"field": "accountId", "reason": f"must be an integer from 1 to {MAX_BIGINT}"}])
            rows = await ledger.list_account_transfers(db, int(raw), fetch)
            page, cursor = _page(rows, lambda row: row[0], page_query.limit)
            transfers = [transfer for _, transfer in page]
        else:
            transfers, cursor = _page(await ledger.list_transfers(db, fetch), lambda t: t.transfer_id,
                                      page_query.limit)
    return web.json_response({"transfers": [_transfer_json(t) for t in transfers], "nextCursor": cursor})


# ---------------------------------------------------------------------------------------------
# Assets
# ---------------------------------------------------------------------------------------------

async def create_asset(request: web.Request) -> web.Response:
    """``POST /api/assets`` ``{"code", "scale", "name"?}`` → 201 asset with its system account."""
    body = await read_json_body(request, NewAsset)

    async def operation(db, key):
        asset = await ledger.create_asset(db, body.code, body.scale, body.name)
        return Outcome.of(201, _asset_json(asset), location=f"/api/assets/{asset.code}")

    return await respond(request, body, operation)


async def list_assets(request: web.Request) -> web.Response:
    """``GET /api/assets`` → 200 ``{"assets": [...]}``, oldest first."""
    async with request.app[DATABASE].connection() as db:
        assets = await ledger.list_assets(db)
    return web.json_response({"assets": [_asset_json(asset) for asset in assets]})


async def get_asset(request: web.Request) -> web.Response:
    """``GET /api/assets/{code}`` → 200 the asset plus ``supply`` (sum of all non-system balances)."""
    async with request.app[DATABASE].connection() as db:
        asset = await ledger.read_asset(db, request.match_info["code"])
        supply = await ledger.asset_supply(db, asset)
    return web.json_response({**_asset_json(asset), "supply": supply})


# ---------------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------------

async def create_account(request: web.Request) -> web.Response:
    """``POST /api/accounts`` (see :class:`~server.request_bodies.NewAccount`) → 201 account."""
    body = await read_json_body(request, NewAccount)

    async def operation(db, key):
        asset = await request.app[ASSETS].get(db, body.asset)
        account = await ledger.create_account(db, ledger.NewAccount(
            asset, body.user_id, body.name, body.overdraft_limit, body.max_balance, body.metadata))
        return Outcome.of(201, _account_json(account), location=f"/api/accounts/{account.account_id}")

    return await respond(request, body, operation)


async def get_account(request: web.Request) -> web.Response:
    """``GET /api/accounts/{id}`` → 200 the account, or 404 ``account_not_found``."""
    account_id = _id_from_path(request)
    async with request.app[DATABASE].connection() as db:
        account = await ledger.read_account(db, account_id)
    return web.json_response(_account_json(account))


async def update_account(request: web.Request) -> web.Response:
    """``PATCH /api/accounts/{id}`` ``{"name"?, "overdraftLimit"?, "maxBalance"?, "metadata"?}`` → 200."""
    account_id = _id_from_path(request)
    body = await read_json_body(request, AccountPatch)
    update = ledger.AccountUpdate(body.name, body.overdraft_limit, body.max_balance,
                                  "max_balance" in body.model_fields_set, body.metadata)

    async def operation(db, key):
        return Outcome.of(200, _account_json(await ledger.update_account(db, account_id, update)))

    return await respond(request, body, operation)


def _status_change(status: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        account_id = _id_from_path(request)
        body = await read_json_body(request, EmptyBody) if request.body_exists else EmptyBody()

        async def operation(db, key):
            return Outcome.of(200, _account_json(await ledger.set_account_status(db, account_id, status)))

        return await respond(request, body, operation)

    handler.__doc__ = f"``POST /api/accounts/{{id}}/...`` → 200 the account, now ``{status}``."
    return handler


freeze_account = _status_change("frozen")
unfreeze_account = _status_change("open")
close_account = _status_change("closed")


async def get_account_history(request: web.Request) -> web.Response:
    """``GET /api/accounts/{id}/history?limit=&cursor=&from=&to=&code=`` → 200 ``{"accountId",
    "entries", "nextCursor"}``, newest first."""
    account_id = _id_from_path(request)
    query = _page_query(request, _FILTERS)
    fetch = ledger.PageQuery(query.before, query.limit + 1, query.code, query.created_from, query.created_to)
    async with request.app[DATABASE].connection() as db:
        entries = await ledger.read_entries(db, account_id, fetch)
    page, cursor = _page(entries, lambda entry: entry.entry_id, query.limit)
    return web.json_response({"accountId": account_id, "entries": [_entry_json(e) for e in page],
                              "nextCursor": cursor})


async def get_account_balance(request: web.Request) -> web.Response:
    """``GET /api/accounts/{id}/balance?at=<RFC 3339>`` → 200 ``{"accountId", "asset", "at", "balance"}``."""
    account_id = _id_from_path(request)
    errors = [{"field": name, "reason": "is not a query parameter of this route"}
              for name in request.query if name != "at"]
    at = _rfc3339("at", request.query["at"], errors) if "at" in request.query else dt.datetime.now(dt.UTC)
    if errors:
        raise ValidationFailed(errors)
    async with request.app[DATABASE].connection() as db:
        asset, balance = await ledger.balance_at(db, account_id, at)
    return web.json_response({"accountId": account_id, "asset": asset, "at": _time(at), "balance": balance})


# ---------------------------------------------------------------------------------------------
# Users
# ---------------------------------------------------------------------------------------------

async def create_user(request: web.Request) -> web.Response:
    """``POST /api/users`` (no body, or ``{}``) → 201 the user with its default-asset account + Location."""
    if request.body_exists:
        await read_json_body(request, EmptyBody)
    async with request.app[DATABASE].connection() as db:
        user = await ledger.create_user(db, await request.app[ASSETS].get(db, None))
    return web.json_response(_user_json(user), status=201, headers={"Location": f"/api/users/{user.user_id}"})


async def get_user(request: web.Request) -> web.Response:
    """``GET /api/users/{id}`` → 200 ``{"userId", "balance" (default asset), "updatedAt", "accounts"}``."""
    user_id = _id_from_path(request)
    async with request.app[DATABASE].connection() as db:
        user = await ledger.read_user(db, user_id, await request.app[ASSETS].get(db, None))
    return web.json_response(_user_json(user))


async def get_history(request: web.Request) -> web.Response:
    """``GET /api/users/{id}/history?limit=&cursor=`` → 200 ``{"userId", "entries", "nextCursor"}``:
    the user's default-asset account, newest first; ``nextCursor`` is null on the last page."""
    user_id = _id_from_path(request)
    query = _page_query(request)
    async with request.app[DATABASE].connection() as db:
        account_id = await ledger.user_account_id(db, user_id, await request.app[ASSETS].get(db, None))
        entries = await ledger.read_entries(db, account_id, ledger.PageQuery(query.before, query.limit + 1))
    page, cursor = _page(entries, lambda entry: entry.entry_id, query.limit)
    return web.json_response({"userId": user_id, "entries": [_user_entry_json(e) for e in page],
                              "nextCursor": cursor})


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------

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
