"""``PATCH /api/balance``, credits and debits: transfers between an account and its asset's system
account, through the batcher (the hot path)."""


from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from server.http.app_keys import ASSETS, BATCHER, DATABASE, GRANT
from server.http.asset_limits import check_assets, limited
from server.http.bearer_auth import actor_of, confirm_key
from server.http.handlers.documents import change_json, entry_applied_json
from server.http.handlers.lookups import asset_id_of, asset_of
from server.http.handlers.paths import id_from_path
from server.http.idempotent_requests import IDEMPOTENCY_KEY_HEADER, keyed_request, outcome_response
from server.http.request_bodies import AccountCreditOrDebit, BalanceChange, CreditOrDebit, StrictBody, read_json_body
from server.ledger import accounts
from server.ledger.idempotency import Outcome
from server.ledger.records import AccountRef, AppliedChange, BalanceChangeOrder
from server.problems import Problem
from server.running import metrics

# balance_changes_total{outcome}: the problem code of a refusal, shortened where the issue names it
_REFUSAL_OUTCOMES = {"user_not_found": "not_found", "account_not_found": "not_found"}
_outcomes = metrics.LabelledChildren(metrics.BALANCE_CHANGES)


def _count(result: AppliedChange | Problem) -> None:
    """Count a balance change's result in ``balance_changes_total`` by outcome (503s are not results)."""
    if not isinstance(result, Problem):
        _outcomes.of("applied")[0].inc()
    elif result.status != 503:
        _outcomes.of(_REFUSAL_OUTCOMES.get(result.code, result.code))[0].inc()


async def _counted(change: Awaitable[AppliedChange]) -> AppliedChange:
    """Await ``change`` and count its result (:func:`_count`), refusals re-raised."""
    try:
        applied = await change
    except Problem as refusal:
        _count(refusal)
        raise
    _count(applied)
    return applied


def _count_replay() -> None:
    _outcomes.of("idempotent_replay")[0].inc()


async def _apply_unkeyed(request: web.Request, ref: AccountRef,
                         change: BalanceChangeOrder) -> AppliedChange:
    """A change without an Idempotency-Key, through the batcher (``BATCHING=false``: a batch of
    one); counted in ``balance_changes_total``."""
    return await _counted(request.app[BATCHER].apply_change(ref, change))


async def _apply_keyed(request: web.Request, body: StrictBody, ref: AccountRef, change: BalanceChangeOrder,
                       render: Callable[[AppliedChange], dict]) -> web.Response:
    """A change sent with an Idempotency-Key, through the batcher: key claim, change and stored
    outcome in its batch's transaction. ``render`` makes the 200 body of an applied change."""
    keyed = keyed_request(request, body)

    def outcome_of(result: AppliedChange | Problem) -> Outcome:
        _count(result)
        if isinstance(result, Problem):
            return Outcome.of_problem(result, keyed.instance)
        return Outcome.of(200, render(result))

    outcome, replayed = await request.app[BATCHER].apply_change_keyed(ref, change, keyed, outcome_of)
    if replayed:
        _count_replay()
    return outcome_response(outcome, replayed)


async def _apply(request: web.Request, body: StrictBody, ref: AccountRef, change: BalanceChangeOrder,
                 render: Callable[[AppliedChange], dict]) -> web.Response:
    if IDEMPOTENCY_KEY_HEADER not in request.headers:
        return web.Response(body=orjson.dumps(render(await _apply_unkeyed(request, ref, change))),
                            content_type="application/json")
    return await _apply_keyed(request, body, ref, change, render)


async def change_balance(request: web.Request) -> web.Response:
    """``PATCH /api/balance`` ``{"userId", "amount", "asset"?}`` → 200 ``{"userId", "balance",
    "accountId", "transferId"}``: a transfer between the asset's system account and the user's account.

    Without an Idempotency-Key this is the proof's hot path: straight to the batcher, no retry
    wrapper (a one-account change cannot deadlock) and no outcome to store.
    """
    body = await read_json_body(request, BalanceChange)
    default = request.app[ASSETS].default
    asset_id = default.asset_id if body.asset is None and default else await asset_id_of(request, body.asset)
    if limited(request):  # a key limited to assets: the account's asset must be one of them
        await check_assets(request, assets=[asset_id])
    ref = AccountRef(None, body.user_id, asset_id)
    return await _apply(request, body, ref, BalanceChangeOrder(body.amount, key_id=request[GRANT].actor.key_id),
                        change_json)


async def _user_credit_or_debit(request: web.Request, kind: str, sign: int) -> web.Response:
    user_id = id_from_path(request)
    body = await read_json_body(request, CreditOrDebit)
    asset = await asset_of(request, body.asset)
    if limited(request):
        await check_assets(request, assets=[asset.asset_id])
    if sign > 0 and not asset.default:
        # a credit opens the user's account in that asset if it has none (every user has one in the
        # default asset from the start, so the hot path skips this)
        await confirm_key(request)  # opening writes outside the statement that refuses revoked keys
        async with request.app[DATABASE].connection() as db:
            await accounts.open_user_account(db, user_id, asset, actor_of(request))
    change = BalanceChangeOrder(sign * body.amount, kind, body.code or kind, body.description,
                                key_id=request[GRANT].actor.key_id)
    return await _apply(request, body, AccountRef(None, user_id, asset.asset_id), change, entry_applied_json)


async def credit(request: web.Request) -> web.Response:
    """``POST /api/users/{id}/credit`` ``{"amount": > 0, "asset"?, "code"?, "description"?}`` → 200
    ``{"userId", "balance", "entryId", "accountId", "transferId"}``; opens the account if needed."""
    return await _user_credit_or_debit(request, "credit", +1)


async def debit(request: web.Request) -> web.Response:
    """``POST /api/users/{id}/debit`` (as credit) → 200, or 409 ``insufficient_funds``."""
    return await _user_credit_or_debit(request, "debit", -1)


async def _account_credit_or_debit(request: web.Request, kind: str, sign: int) -> web.Response:
    account_id = id_from_path(request)
    body = await read_json_body(request, AccountCreditOrDebit)
    if limited(request):
        await check_assets(request, accounts=[account_id])
    change = BalanceChangeOrder(sign * body.amount, kind, body.code or kind, body.description,
                                key_id=request[GRANT].actor.key_id)
    return await _apply(request, body, AccountRef(account_id), change, entry_applied_json)


async def account_credit(request: web.Request) -> web.Response:
    """``POST /api/accounts/{id}/credit`` ``{"amount", "code"?, "description"?}`` → 200 as for users."""
    return await _account_credit_or_debit(request, "credit", +1)


async def account_debit(request: web.Request) -> web.Response:
    """``POST /api/accounts/{id}/debit`` ``{"amount", "code"?, "description"?}`` → 200 as for users."""
    return await _account_credit_or_debit(request, "debit", -1)
