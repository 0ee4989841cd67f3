"""``POST /api/transfers`` (plain, or a hold), ``POST /api/transfers/{id}/post|void``,
``GET /api/transfers`` and ``GET /api/transfers/{id}``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from server.http.app_keys import BATCHER, GRANT, SETTINGS, TRANSFER_BATCHES
from server.http.asset_limits import check_assets, limited
from server.http.handlers.documents import transfer_json
from server.http.handlers.lookups import asset_id_of, asset_of
from server.http.handlers.paths import FILTERS, bounded_int, id_from_path, page_query, split_page
from server.http.idempotent_requests import keyed_request, outcome_response, respond
from server.http.reads import read_only, reading
from server.http.request_bodies import (
    MAX_BIGINT,
    EmptyBody,
    PostItem,
    PostPendingTransfer,
    ReverseTransfer,
    TransferBatch,
    TransferRequest,
    read_json_body,
)
from server.ledger import moving_money, transfer_reads
from server.ledger.idempotency import Outcome
from server.ledger.records import AccountRef, PageQuery, ResolvePending, Transfer, TransferOrder
from server.problems import Problem, SameAccount, TransferNotFound, ValidationFailed


async def create_transfer(request: web.Request) -> web.Response:
    """``POST /api/transfers`` (see :class:`~server.http.request_bodies.TransferRequest`) → 201 transfer."""
    body = await read_json_body(request, TransferRequest)
    if body.from_user_id is not None and body.from_user_id == body.to_user_id:
        raise SameAccount(user_id=body.from_user_id)
    if body.from_account_id is not None and body.from_account_id == body.to_account_id:
        raise SameAccount(account_id=body.from_account_id)
    asset_id = await asset_id_of(request, body.asset)
    await check_assets(request, accounts=[body.from_account_id, body.to_account_id],
                       assets=[asset_id if body.from_user_id or body.to_user_id else None])
    order = TransferOrder(
        AccountRef(body.from_account_id, body.from_user_id, asset_id),
        AccountRef(body.to_account_id, body.to_user_id, asset_id),
        body.amount, body.code or "transfer", body.description, body.metadata, body.pending, body.timeout_seconds,
        body.reference, request[GRANT].actor.key_id,
    )
    return await _batched(request, body, order, _made)


async def _batched(request: web.Request, body, order: TransferOrder | ResolvePending,
                   made: Callable[[Transfer], Outcome]) -> web.Response:
    """Apply ``order`` through the batcher (with its Idempotency-Key, if sent: claimed,
    applied and stored in its batch's transaction) and answer ``made(transfer)`` or the refusal."""
    batcher = request.app[BATCHER]
    keyed = keyed_request(request, body)
    if keyed is None:
        return outcome_response(made(await batcher.apply_transfer(order)))

    def outcome_of(result: Transfer | Problem) -> Outcome:
        return Outcome.of_problem(result, keyed.instance) if isinstance(result, Problem) else made(result)

    return outcome_response(*await batcher.apply_transfer_keyed(order, keyed, outcome_of))


def _resolved(transfer: Transfer) -> Outcome:
    return Outcome.of(200, transfer_json(transfer))


def _made(transfer: Transfer) -> Outcome:
    """201 with Location for a transfer made now; 200 with ``Idempotent-Replayed`` for one found by
    its reference (made before)."""
    if transfer.replayed:
        return Outcome.of(200, transfer_json(transfer), replayed=True)
    return Outcome.of(201, transfer_json(transfer), location=f"/api/transfers/{transfer.transfer_id}")


BATCH_PATH = "/api/transfers/batch"


async def create_transfer_batch(request: web.Request) -> web.Response:
    """``POST /api/transfers/batch`` ``{"atomic", "transfers": [item, ...]}`` → 200 ``{"committed",
    "results"}``: the items applied in order in one transaction (see
    :func:`server.ledger.moving_money.apply_transfer_batch`), one result per item: ``{"status", "transfer"}``
    (``"replayed": true`` when found by its reference) or ``{"status", "problem"}``."""
    settings = request.app[SETTINGS]
    # the body may be larger than MAX_BODY_BYTES: TRANSFER_BATCH_MAX_BYTES is this route's bound
    body = await read_json_body(request.clone(client_max_size=settings.transfer_batch_max_bytes), TransferBatch)
    if len(body.transfers) > settings.transfer_batch_max_items:
        raise ValidationFailed([{"field": "transfers", "reason": f"at most {settings.transfer_batch_max_items} items"}])
    orders = [await _batch_order(request, item) for item in body.transfers]
    if limited(request):  # a key limited to assets: every item's, or the whole batch is refused
        await check_assets(request, **_batch_subjects(orders))
    timeout = settings.transfer_batch_timeout or None

    async def operation(db, key):
        committed, results = await moving_money.apply_transfer_batch(db, orders, body.atomic,
                                                                     statement_timeout=timeout)
        return Outcome.of(200, {"committed": committed,
                                "results": [_batch_result(order, result) for order, result in zip(orders, results)]})

    # its turn first, holding nothing: a batch waits here, not on row locks (docs/concurrency.md)
    async with request.app[TRANSFER_BATCHES].turn():
        return await respond(request, body, operation)


async def _batch_order(request: web.Request, item) -> TransferOrder | ResolvePending | Problem:
    if isinstance(item, TransferRequest):
        try:
            asset = await asset_of(request, item.asset)
        except Problem as unknown:  # this item fails; the batch goes on (or, atomic, fails for it)
            return unknown
        return TransferOrder(
            AccountRef(item.from_account_id, item.from_user_id, asset.asset_id),
            AccountRef(item.to_account_id, item.to_user_id, asset.asset_id),
            item.amount, item.code or "transfer", item.description, item.metadata, item.pending, item.timeout_seconds,
            item.reference, request[GRANT].actor.key_id,
        )
    if isinstance(item, PostItem):
        return ResolvePending(item.post, True, item.amount)
    return ResolvePending(item.void, False)


def _batch_subjects(orders: list[TransferOrder | ResolvePending | Problem]) -> dict[str, list]:
    """The accounts, transfers and assets the items of a batch name (for :func:`check_assets`)."""
    accounts, transfers, assets = [], [], []
    for order in orders:
        if isinstance(order, TransferOrder):
            for ref in (order.source, order.destination):
                accounts.append(ref.account_id)
                assets.append(None if ref.account_id else ref.asset_id)
        elif isinstance(order, ResolvePending):
            transfers.append(order.transfer_id)
    return {"accounts": accounts, "transfers": transfers, "assets": assets}


def _batch_result(order, result: Transfer | Problem) -> dict:
    if isinstance(result, Problem):
        return {"status": result.status, "problem": result.body(BATCH_PATH)}
    if result.replayed:
        return {"status": 200, "transfer": transfer_json(result), "replayed": True}
    return {"status": 201 if isinstance(order, TransferOrder) else 200, "transfer": transfer_json(result)}


async def reverse_transfer(request: web.Request) -> web.Response:
    """``POST /api/transfers/{id}/reverse`` ``{"amount"?, "code"?, "description"?, "reference"?}`` →
    201 a transfer the opposite way with ``"reverses": id``; the original's ``reversedAmount`` grows."""
    transfer_id = id_from_path(request)
    body = await read_json_body(request, ReverseTransfer) if request.body_exists else ReverseTransfer()
    await check_assets(request, transfers=[transfer_id])

    async def operation(db, key):
        return _made(await moving_money.reverse_transfer(db, transfer_id, body.amount, body.code, body.description,
                                                   body.reference, request[GRANT].actor.key_id))

    return await respond(request, body, operation)


async def post_pending_transfer(request: web.Request) -> web.Response:
    """``POST /api/transfers/{id}/post`` ``{"amount"?}`` → 200 the transfer, ``"status": "posted"``,
    with ``postedAmount``; the rest of the hold is released."""
    transfer_id = id_from_path(request)
    body = await read_json_body(request, PostPendingTransfer) if request.body_exists else PostPendingTransfer()
    await check_assets(request, transfers=[transfer_id])
    return await _batched(request, body, ResolvePending(transfer_id, True, body.amount), _resolved)


async def void_pending_transfer(request: web.Request) -> web.Response:
    """``POST /api/transfers/{id}/void`` → 200 the transfer, ``"status": "voided"``: the hold released."""
    transfer_id = id_from_path(request)
    body = await read_json_body(request, EmptyBody) if request.body_exists else EmptyBody()
    await check_assets(request, transfers=[transfer_id])
    return await _batched(request, body, ResolvePending(transfer_id, False), _resolved)


@read_only
async def get_transfer(request: web.Request) -> web.Response:
    """``GET /api/transfers/{id}`` → 200 the transfer with the balances right after it, or 404."""
    transfer_id = id_from_path(request)
    await check_assets(request, transfers=[transfer_id])
    async with reading(request).connection() as db:
        transfer = await transfer_reads.read_transfer(db, transfer_id)
    if transfer is None:
        raise TransferNotFound(transfer_id)
    return web.json_response(transfer_json(transfer))


async def _by_reference(db, reference: str) -> Transfer | None:
    if not 1 <= len(reference) <= 128 or not all(" " <= char <= "~" for char in reference):
        raise ValidationFailed([{"field": "reference", "reason": "must be 1 to 128 printable ASCII characters"}])
    return await transfer_reads.find_transfer_by_reference(db, reference)


def _passes(transfer: Transfer, account_id: int | None, page: PageQuery) -> bool:
    """Whether ``transfer`` is in the listing ``account_id`` and ``page`` ask for."""
    return ((account_id is None or account_id in (transfer.from_account_id, transfer.to_account_id))
            and (page.code is None or transfer.code == page.code) and transfer.transfer_id < page.before
            and (page.created_from is None or transfer.created_at >= page.created_from)
            and (page.created_to is None or transfer.created_at < page.created_to))


@read_only
async def list_transfers(request: web.Request) -> web.Response:
    """``GET /api/transfers?accountId=&reference=&code=&from=&to=&limit=&cursor=`` → 200
    ``{"transfers", "nextCursor"}``, newest first; ``reference`` finds the one transfer carrying it."""
    query = page_query(request, (*FILTERS, "accountId", "reference"))
    account_id = None
    if "accountId" in request.query:
        account_id = bounded_int(request.query["accountId"], MAX_BIGINT)
        if account_id is None:
            raise ValidationFailed([{"field": "accountId", "reason": f"must be an integer from 1 to {MAX_BIGINT}"}])
    await check_assets(request, accounts=[account_id])
    fetch = PageQuery(query.before, query.limit + 1, query.code, query.created_from, query.created_to)
    async with reading(request).connection() as db:
        if "reference" in request.query:  # at most one transfer, then narrowed by the other filters
            transfers, cursor = [t for t in [await _by_reference(db, request.query["reference"])]
                                 if t is not None and _passes(t, account_id, fetch)], None
        elif account_id is not None:
            rows = await transfer_reads.list_account_transfers(db, account_id, fetch)
            page, cursor = split_page(rows, lambda row: row[0], query.limit)
            transfers = [transfer for _, transfer in page]
        else:
            transfers, cursor = split_page(await transfer_reads.list_transfers(db, fetch), lambda t: t.transfer_id,
                                           query.limit)
    if limited(request):  # a key limited to assets sees theirs only (a page may then be shorter)
        transfers = [t for t in transfers if t.asset in request[GRANT].assets]
    return web.json_response({"transfers": [transfer_json(t) for t in transfers], "nextCursor": cursor})
