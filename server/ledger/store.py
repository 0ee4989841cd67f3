"""The SQL that reads and moves money, in one place.

Balances and amounts are integers in minor units, stored as PostgreSQL ``bigint``. Money moves only
by transfers between two accounts of one asset, through SQL functions whose comments say why each
is safe under concurrency: ``apply_balance_changes()`` (migration 0006: changes between accounts
and their asset's system account: PATCH, credits, debits; batched across accounts, or a batch of
one), ``transfer_funds()`` (migration 0007: between any two accounts, plain or a hold),
``resolve_pending_transfer()`` (0006: post or void a hold), ``reverse_transfer()`` (0008),
``apply_transfer_batch()`` (0008: the items of ``POST /api/transfers/batch`` in one call) and
``apply_ledger_batch()`` (0010: a batcher's batch mixing balance changes with transfers). Every
function here takes ``db``: an asyncpg pool, or a connection (inside a caller's transaction).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

import asyncpg

from server.problems import (
    AccountClosed,
    AccountExists,
    AccountFrozen,
    AccountNotEmpty,
    AccountNotFound,
    AssetExists,
    AssetMismatch,
    AssetNotFound,
    BalanceOverflow,
    ExceedsPendingAmount,
    ExceedsReversibleAmount,
    InsufficientFunds,
    LinkedTransferFailed,
    LimitViolated,
    MaxBalanceExceeded,
    Problem,
    PendingTransferAlreadyPosted,
    PendingTransferAlreadyVoided,
    PendingTransferExpired,
    ReferenceReused,
    SameAccount,
    SystemAccount,
    TransferNotFound,
    TransferNotPending,
    TransferNotPosted,
    UserNotFound,
)

Db = asyncpg.Pool | asyncpg.Connection

# ---------------------------------------------------------------------------------------------
# Moving money
# ---------------------------------------------------------------------------------------------

# One call applies a batch of changes to any accounts (see migration 0005 for the function and why it
# is safe): per change its account id, or user id and asset id, then its fields; one array each.
APPLY_BALANCE_CHANGES = """
SELECT account_id, user_id, balance_after, transfer_id, entry_id, outcome
  FROM apply_balance_changes($1, $2, $3, $4, $5, $6, $7, $8)
"""

TRANSFER_FUNDS = "SELECT * FROM transfer_funds($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"

# Reverse $2 (NULL: all that is left) of transfer $1, with code $3, description $4, reference $5
# (migration 0007).
REVERSE_TRANSFER = "SELECT * FROM reverse_transfer($1, $2, $3, $4, $5)"

# Post ($2 true; $3 the amount, NULL for all) or void a pending transfer (migration 0006).
RESOLVE_PENDING_TRANSFER = "SELECT * FROM resolve_pending_transfer($1, $2, $3)"


# The three types below are made for every balance change on the hot path: NamedTuples, whose
# construction and hashing run in C (a frozen dataclass's run Python code per field; measured).
class AccountRef(NamedTuple):
    """An account named by its id, or as user ``user_id``'s account in asset ``asset_id``."""

    account_id: int | None = None
    user_id: int | None = None
    asset_id: int | None = None


class BalanceChange(NamedTuple):
    """A signed change (minor units, not 0) between an account and its asset's system account.

    ``kind`` is the account's ledger entry kind (``adjustment``, ``credit`` or ``debit``), ``code``
    the transfer's code.
    """

    amount: int
    kind: str = "adjustment"
    code: str = "adjustment"
    description: str | None = None
    idempotency_key: str | None = None


class AppliedChange(NamedTuple):
    """An accepted change: the account (and its user), its new balance, the transfer and the
    account's ledger entry."""

    account_id: int
    user_id: int | None
    balance: int
    transfer_id: int
    entry_id: int


def _metadata_json(metadata: dict[str, str] | None) -> str | None:
    return None if metadata is None else json.dumps(metadata)


def balance_change_refusal(outcome: str, ref: AccountRef, account_id: int | None, amount: int) -> Problem:
    """The problem for a refused change (``outcome`` from ``apply_balance_changes()``)."""
    if outcome == "user_not_found":
        return UserNotFound(ref.user_id)
    if outcome == "account_not_found":
        return AccountNotFound(ref.account_id, user_id=ref.user_id)
    if outcome == "same_account":
        return SystemAccount(account_id, "is the counter-party of credits and debits; it cannot be credited "
                                         "or debited against itself")
    return REFUSALS[outcome](account_id=account_id, user_id=ref.user_id, amount=amount)


REFUSALS: dict[str, type[Problem]] = {
    "insufficient_funds": InsufficientFunds,
    "balance_overflow": BalanceOverflow,
    "max_balance_exceeded": MaxBalanceExceeded,
    "account_frozen": AccountFrozen,
    "account_closed": AccountClosed,
}


async def apply_balance_changes(db: Db, changes: Sequence[tuple[AccountRef, BalanceChange]]
                                ) -> list[AppliedChange | Problem]:
    """Apply ``changes``, each ``(account, change)``, to any accounts, in order, in ONE statement;
    return each one's :class:`AppliedChange` or its refusal (a :class:`Problem`, not raised), in order.

    The outcome is exactly that of applying them one at a time (migration 0005,
    ``apply_balance_changes()``); refusals write nothing.
    """
    if not changes:
        return []
    rows = await db.fetch(
        APPLY_BALANCE_CHANGES, *zip(*(ref for ref, _ in changes)), *zip(*(change for _, change in changes)),
    )
    return [AppliedChange(account_id, user_id, balance_after, transfer_id, entry_id) if outcome == "applied"
            else balance_change_refusal(outcome, ref, account_id, change.amount)
            for (ref, change), (account_id, user_id, balance_after, transfer_id, entry_id, outcome)
            in zip(changes, rows, strict=True)]


async def apply_balance_change(db: Db, ref: AccountRef, change: BalanceChange) -> AppliedChange:
    """Apply one change (a batch of one); return it or raise its refusal: :class:`UserNotFound`,
    :class:`AccountNotFound` (404), :class:`InsufficientFunds`, :class:`MaxBalanceExceeded`,
    :class:`BalanceOverflow`, :class:`AccountFrozen`, :class:`AccountClosed` (409),
    :class:`SystemAccount` (422). Nothing is written on a refusal."""
    (result,) = await apply_balance_changes(db, [(ref, change)])
    if isinstance(result, Problem):
        raise result
    return result


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer (amount > 0, minor units) and the balances of its two sides right after it
    (None for a system account, whose entries carry no running balance)."""

    transfer_id: int
    asset: str
    from_account_id: int
    to_account_id: int
    from_user_id: int | None
    to_user_id: int | None
    amount: int
    code: str
    description: str | None
    metadata: dict[str, str]
    created_at: dt.datetime
    from_balance: int | None
    to_balance: int | None
    status: str = "posted"
    expires_at: dt.datetime | None = None
    posted_amount: int | None = None
    reference: str | None = None
    reverses: int | None = None
    reversed_amount: int = 0
    made_pending: bool = False  # made as a hold (whatever became of it)
    replayed: bool = False  # answered from its reference: made before, not now


@dataclass(frozen=True, slots=True)
class TransferOrder:
    """What ``POST /api/transfers`` asks: the two sides (:class:`AccountRef`; a side named by user
    is that user's account in ``source.asset_id``, which both sides carry), amount > 0 (minor
    units), the transfer code, description and metadata."""

    source: AccountRef
    destination: AccountRef
    amount: int
    code: str = "transfer"
    description: str | None = None
    metadata: dict[str, str] | None = None
    pending: bool = False
    timeout_seconds: int | None = None
    reference: str | None = None


def _transfer_refusal(outcome: str, role: str | None, order: TransferOrder, row) -> Problem:
    side = order.source if role == "from" else order.destination
    account_id = row["from_account_id"] if role == "from" else row["to_account_id"]
    if outcome == "user_not_found":
        return UserNotFound(side.user_id, role=role)
    if outcome == "account_not_found":
        return AccountNotFound(side.account_id, user_id=side.user_id, role=role)
    if outcome == "same_account":
        return SameAccount(row["from_account_id"])
    if outcome == "asset_mismatch":
        return AssetMismatch(row["from_account_id"], row["to_account_id"])
    amount = -order.amount if outcome == "insufficient_funds" else order.amount
    return REFUSALS[outcome](account_id=account_id, user_id=side.user_id, amount=amount, role=role)


async def transfer_funds(db: Db, order: TransferOrder, idempotency_key: str | None = None) -> Transfer:
    """Move ``order.amount`` between two different accounts of one asset, atomically (one call of
    ``transfer_funds()``, migration 0004) and return the :class:`Transfer`.

    Raises, writing nothing: :class:`UserNotFound` / :class:`AccountNotFound` (404, with ``role``),
    :class:`SameAccount` / :class:`AssetMismatch` (422), :class:`InsufficientFunds` (sender),
    :class:`MaxBalanceExceeded` / :class:`BalanceOverflow` (receiver), :class:`AccountFrozen` /
    :class:`AccountClosed` (409, with ``role``).
    """
    src, dst = order.source, order.destination
    row = await db.fetchrow(
        TRANSFER_FUNDS, src.account_id, src.user_id, dst.account_id, dst.user_id, src.asset_id, order.amount, order.code,
        order.description, _metadata_json(order.metadata), idempotency_key, order.pending, order.timeout_seconds,
        order.reference,
    )
    made = None if row["transfer_id"] is None else await read_transfer(db, row["transfer_id"])
    return _transferred(order, row, made)


def _transferred(order: TransferOrder, row, made: Transfer | None) -> Transfer:
    """What ``transfer_funds()``'s ``row`` means for ``order``: the transfer ``made`` (now, or before
    under ``order.reference``: then marked ``replayed``), or raises the refusal."""
    if row["outcome"] == "reference_exists":
        return _made_before(order, row, made)
    if row["outcome"] != "transferred":
        raise _transfer_refusal(row["outcome"], row["role"], order, row)
    return made


def _made_before(order: TransferOrder, row, made: Transfer) -> Transfer:
    """The transfer that took ``order.reference`` before, if it is the one ``order`` asks for
    (then marked ``replayed``); raises :class:`ReferenceReused` (409) naming the fields that differ.
    ``row`` has the accounts ``order``'s sides resolved to."""
    differing = [name for name, ours, theirs in (
        ("fromAccountId", row["from_account_id"], made.from_account_id),
        ("toAccountId", row["to_account_id"], made.to_account_id),
        ("amount", order.amount, made.amount),
        ("code", order.code, made.code),
        ("description", order.description, made.description),
        ("metadata", order.metadata or {}, made.metadata),
        ("pending", order.pending, made.made_pending),
    ) if ours != theirs]
    if differing:
        raise ReferenceReused(order.reference, made.transfer_id, differing)
    return dataclasses.replace(made, replayed=True)


_PENDING_REFUSALS: dict[str, type[Problem]] = {
    "transfer_not_pending": TransferNotPending,
    "pending_transfer_already_posted": PendingTransferAlreadyPosted,
    "pending_transfer_already_voided": PendingTransferAlreadyVoided,
    "pending_transfer_expired": PendingTransferExpired,
}


@dataclass(frozen=True, slots=True)
class ResolvePending:
    """Post (``post``; ``amount`` minor units, None for all) or void the hold ``transfer_id``."""

    transfer_id: int
    post: bool
    amount: int | None = None


async def resolve_pending_transfer(db: Db, transfer_id: int, post: bool, amount: int | None = None) -> Transfer:
    """Post (``post``: move ``amount`` minor units, None for all that is held, releasing the rest)
    or void (release it all) the pending transfer ``transfer_id``, exactly once (one call of
    ``resolve_pending_transfer()``, migration 0006; TigerBeetle's post_pending_transfer and
    void_pending_transfer). Returns the :class:`Transfer` as it now is.

    Raises, writing nothing: :class:`TransferNotFound` (404), :class:`TransferNotPending`,
    :class:`PendingTransferAlreadyPosted`, :class:`PendingTransferAlreadyVoided`,
    :class:`PendingTransferExpired` (409), :class:`ExceedsPendingAmount` (422), and on a post
    :class:`AccountFrozen` / :class:`AccountClosed` (409, with ``role``).
    """
    row = await db.fetchrow(RESOLVE_PENDING_TRANSFER, transfer_id, post, amount)
    read = row["outcome"] in ("posted", "voided") or row["outcome"] in REFUSALS
    hold = await read_transfer(db, transfer_id) if read else None
    return _resolved(ResolvePending(transfer_id, post, amount), row, hold)


def _resolved(order: ResolvePending, row, hold: Transfer | None) -> Transfer:
    """What ``resolve_pending_transfer()``'s ``row`` means: the ``hold`` as it now is, or raises the
    refusal (``hold`` is needed only for a refusal naming an account, and on success)."""
    outcome = row["outcome"]
    if outcome == "transfer_not_found":
        raise TransferNotFound(order.transfer_id)
    if outcome in _PENDING_REFUSALS:
        raise _PENDING_REFUSALS[outcome](order.transfer_id)
    if outcome == "exceeds_pending_amount":
        raise ExceedsPendingAmount(order.transfer_id, amount=order.amount)
    if outcome in REFUSALS:
        account = hold.from_account_id if row["role"] == "from" else hold.to_account_id
        raise REFUSALS[outcome](account_id=account, role=row["role"])
    return hold


async def reverse_transfer(db: Db, transfer_id: int, amount: int | None = None, code: str | None = None,
                           description: str | None = None, reference: str | None = None) -> Transfer:
    """Reverse ``amount`` minor units (None: all that is left) of transfer ``transfer_id``: a transfer
    the opposite way, under the usual checks, with ``reverses`` set (one call of
    ``reverse_transfer()``, migration 0007). Returns the new :class:`Transfer` (``replayed`` when its
    ``reference`` was taken by the same reversal before).

    Raises, writing nothing: :class:`TransferNotFound` (404), :class:`TransferNotPosted` (409),
    :class:`ExceedsReversibleAmount` (422), :class:`ReferenceReused` (409), and the refusals of
    :func:`transfer_funds` (e.g. :class:`InsufficientFunds` when the receiver spent it).
    """
    row = await db.fetchrow(REVERSE_TRANSFER, transfer_id, amount, code, description, reference)
    outcome = row["outcome"]
    if outcome == "transfer_not_found":
        raise TransferNotFound(transfer_id)
    if outcome == "transfer_not_posted":
        raise TransferNotPosted(transfer_id)
    if outcome == "exceeds_reversible_amount":
        raise ExceedsReversibleAmount(transfer_id, amount=amount)
    original = await read_transfer(db, transfer_id)
    order = TransferOrder(AccountRef(original.to_account_id), AccountRef(original.from_account_id),
                          amount if amount is not None else 0, code or "reversal", description, None,
                          reference=reference)
    if outcome == "reference_exists":
        made = await read_transfer(db, row["transfer_id"])
        differing = [name for name, ours, theirs in (
            ("reverses", transfer_id, made.reverses), ("amount", amount or made.amount, made.amount),
            ("code", order.code, made.code), ("description", description, made.description),
        ) if ours != theirs]
        if differing:
            raise ReferenceReused(reference, made.transfer_id, differing)
        return dataclasses.replace(made, replayed=True)
    if outcome != "transferred":
        raise _transfer_refusal(outcome, row["role"], order, row)
    return await read_transfer(db, row["transfer_id"])


# Every item of a batch in one call (migrations 0008-0009, which say why it is safe under concurrency):
# $1 atomic, then one array per item field (kind, both sides, asset, amount, code, description,
# metadata, pending, timeout, reference, the hold a post or void names, and the Idempotency-Key
# a transfer's entries record).
APPLY_TRANSFER_BATCH = """
SELECT item, outcome, role, transfer_id, from_account_id, to_account_id, transfer
  FROM apply_transfer_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
"""


class _AtomicBatchFailed(Exception):
    def __init__(self, index: int, refusal: Problem):
        super().__init__(index)
        self.index, self.refusal = index, refusal


async def apply_transfer_batch(conn: asyncpg.Connection, orders: Sequence[TransferOrder | ResolvePending | Problem],
                               atomic: bool, idempotency_keys: Sequence[str | None] | None = None
                               ) -> tuple[bool, list[Transfer | Problem]]:
    """Apply ``orders`` in order in ONE transaction on ``conn`` (a savepoint inside a caller's
    transaction), each seeing the effects of those before it: ONE call of ``apply_transfer_batch()``
    (migration 0009: set-based when all are plain transfers that pass), which also returns the
    transfers as they are after it, whatever the number of orders: one round trip. An order
    given as a :class:`Problem` failed before reaching the database (e.g. an unknown asset). Returns
    ``(committed, results)``, one :class:`Transfer` or refusal per order, as :func:`transfer_funds`
    and :func:`resolve_pending_transfer` would return or raise it.

    ``atomic`` (TigerBeetle's linked events): the first refusal rolls everything back; it is that
    item's result and every other item's is :class:`LinkedTransferFailed`; ``committed`` is False.
    Otherwise each order succeeds or fails on its own (a refusal writes nothing) and the rest commit.
    ``idempotency_keys`` (one per order, or None): the key each transfer made now records on its
    ledger entries, as :func:`transfer_funds` records it. Database errors propagate (nothing committed).
    """
    results: list[Transfer | Problem] = []
    try:
        # one statement is its own transaction; an atomic batch may have to be rolled back after it
        async with conn.transaction() if atomic else contextlib.nullcontext():
            rows = await conn.fetch(APPLY_TRANSFER_BATCH, atomic, *_batch_columns(orders),
                                    list(idempotency_keys) if idempotency_keys is not None else [None] * len(orders))
            for index, (order, row) in enumerate(zip(orders, rows)):
                try:
                    results.append(_batch_item_result(order, row))
                except Problem as refusal:
                    if atomic:
                        raise _AtomicBatchFailed(index, refusal) from None
                    results.append(refusal)
    except _AtomicBatchFailed as failed:
        return False, [failed.refusal if index == failed.index else LinkedTransferFailed(failed.index)
                       for index in range(len(orders))]
    return True, results


def _batch_item_result(order: TransferOrder | ResolvePending | Problem, row) -> Transfer:
    """What ``apply_transfer_batch()``'s (or ``apply_ledger_batch()``'s) ``row`` means for the
    transfer item ``order``: its :class:`Transfer`, or raises its refusal."""
    if isinstance(order, Problem):
        raise order
    made = None if row["transfer"] is None else _transfer(row["transfer"])
    if isinstance(order, ResolvePending):
        return _resolved(order, row, made)
    return _transferred(order, row, made)


# A batcher's batch that mixes balance changes with transfers, in one call (migration 0010, which
# says why it is safe under concurrency): the arrays of apply_transfer_batch() without atomic; a
# change's kind is its entry kind, its account the from side, its amount signed.
APPLY_LEDGER_BATCH = """
SELECT item, outcome, role, transfer_id, from_account_id, to_account_id, transfer, user_id, balance_after, entry_id
  FROM apply_ledger_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
"""

LedgerItem = tuple[AccountRef, BalanceChange] | TransferOrder | ResolvePending


async def apply_ledger_batch(db: Db, items: Sequence[LedgerItem], idempotency_keys: Sequence[str | None]
                             ) -> list[AppliedChange | Transfer | Problem]:
    """Apply ``items`` in order in ONE statement, each accepted or refused on its own as if applied
    one at a time: balance changes ``(account, change)`` as :func:`apply_balance_changes` applies
    them, transfers, holds, posts and voids as :func:`apply_transfer_batch` without ``atomic``
    (one call of ``apply_ledger_batch()``, migration 0010, which runs each run of one kind through
    that kind's function). Returns each item's result or refusal (a :class:`Problem`, not raised),
    in order. ``idempotency_keys``: per item, the key its ledger entries record (a change's own
    ``idempotency_key`` when its entry here is None). Database errors propagate (nothing committed).
    """
    keys = [key or (item[1].idempotency_key if isinstance(item, tuple) else None)
            for item, key in zip(items, idempotency_keys, strict=True)]
    rows = await db.fetch(APPLY_LEDGER_BATCH, *_batch_columns(items), keys)
    results: list[AppliedChange | Transfer | Problem] = []
    for item, row in zip(items, rows, strict=True):
        if isinstance(item, tuple):
            ref, change = item
            if row["outcome"] == "applied":
                results.append(AppliedChange(row["from_account_id"], row["user_id"], row["balance_after"],
                                             row["transfer_id"], row["entry_id"]))
            else:
                results.append(balance_change_refusal(row["outcome"], ref, row["from_account_id"], change.amount))
        else:
            try:
                results.append(_batch_item_result(item, row))
            except Problem as refusal:
                results.append(refusal)
    return results


def _batch_item_columns(order: LedgerItem | Problem) -> tuple:
    """An item's 14 fields of ``apply_transfer_batch()``'s per-item arrays, after ``atomic`` and
    before the idempotency key, in its parameter order; a balance change ``(account, change)`` as
    ``apply_ledger_batch()`` takes it (its entry kind, its account as the from side, its signed
    amount)."""
    if isinstance(order, TransferOrder):
        src, dst = order.source, order.destination
        return ("transfer", src.account_id, src.user_id, dst.account_id, dst.user_id, src.asset_id,
                order.amount, order.code, order.description, _metadata_json(order.metadata), order.pending,
                order.timeout_seconds, order.reference, None)
    if isinstance(order, ResolvePending):
        return ("post" if order.post else "void", *(None,) * 5, order.amount, *(None,) * 6, order.transfer_id)
    if isinstance(order, tuple):
        ref, change = order
        return (change.kind, ref.account_id, ref.user_id, None, None, ref.asset_id, change.amount, change.code,
                change.description, *(None,) * 5)
    return ("refused", *(None,) * 13)


def _batch_columns(orders: Sequence[LedgerItem | Problem]) -> list[list]:
    """The 14 per-item arrays of ``apply_transfer_batch()`` after ``atomic``, in its parameter order
    (the 15th, the idempotency keys, comes from the caller)."""
    columns: list[list] = [[] for _ in range(14)]
    for order in orders:
        for column, value in zip(columns, _batch_item_columns(order), strict=True):
            column.append(value)
    return columns


# ---------------------------------------------------------------------------------------------
# Transfers: reading
# ---------------------------------------------------------------------------------------------

# A transfer with the balances its two ledger entries recorded (stored on the transfer too): the
# view transfer_details (migration 0009), which apply_transfer_batch() returns too.
_TRANSFER_COLUMNS = "SELECT t.* FROM transfer_details t"
READ_TRANSFER = _TRANSFER_COLUMNS + " WHERE t.id = $1"
READ_TRANSFER_BY_REFERENCE = _TRANSFER_COLUMNS + " WHERE t.reference = $1"  # the unique index transfers_reference

# All transfers, newest first, keyset-paged by transfer id ($1: below this id), with optional
# filters ($2 code, $3 from, $4 to: from <= created_at < to).
LIST_TRANSFERS = _TRANSFER_COLUMNS + """
 WHERE t.id < $1 AND ($2::text IS NULL OR t.code = $2) AND ($3::timestamptz IS NULL OR t.created_at >= $3)
   AND ($4::timestamptz IS NULL OR t.created_at < $4)
 ORDER BY t.id DESC LIMIT $5
"""


# An account's transfers, newest first, keyset-paged by the account's ledger entry id ($2: below it),
# through the index ledger_entries (account_id, id); filters as in LIST_TRANSFERS.
LIST_ACCOUNT_TRANSFERS = _TRANSFER_COLUMNS.replace("SELECT t.*", "SELECT x.id AS entry_id, t.*", 1) + """
  JOIN ledger_entries x ON x.transfer_id = t.id
 WHERE x.account_id = $1 AND x.id < $2 AND ($3::text IS NULL OR t.code = $3)
   AND ($4::timestamptz IS NULL OR t.created_at >= $4) AND ($5::timestamptz IS NULL OR t.created_at < $5)
 ORDER BY x.id DESC LIMIT $6
"""


# A system account's transfers (it has no entries), keyset-paged by transfer id.
LIST_SYSTEM_TRANSFERS = _TRANSFER_COLUMNS.replace("SELECT t.*", "SELECT t.id AS entry_id, t.*", 1) + """
 WHERE (t.from_account_id = $1 OR t.to_account_id = $1) AND t.id < $2 AND ($3::text IS NULL OR t.code = $3)
   AND ($4::timestamptz IS NULL OR t.created_at >= $4) AND ($5::timestamptz IS NULL OR t.created_at < $5)
 ORDER BY t.id DESC LIMIT $6
"""


def _transfer(row) -> Transfer:
    return Transfer(row["id"], row["asset"], row["from_account_id"], row["to_account_id"], row["from_user_id"],
                    row["to_user_id"], row["amount"], row["code"], row["description"],
                    json.loads(row["metadata"]) if row["metadata"] else {}, row["created_at"],
                    row["from_balance"], row["to_balance"], row["status"], row["expires_at"], row["posted_amount"],
                    row["reference"], row["reverses"], row["reversed_amount"], row["made_pending"])


async def read_transfer(db: Db, transfer_id: int) -> Transfer | None:
    """Return transfer ``transfer_id`` with the balances its entries recorded, or None."""
    row = await db.fetchrow(READ_TRANSFER, transfer_id)
    return None if row is None else _transfer(row)


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One page of a newest-first listing: ids below ``before``, at most ``limit`` rows, optional
    filters on the transfer code and on ``created_from <= created_at < created_to``."""

    before: int
    limit: int
    code: str | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None


async def find_transfer_by_reference(db: Db, reference: str) -> Transfer | None:
    """The transfer that carries the client's ``reference``, or None."""
    row = await db.fetchrow(READ_TRANSFER_BY_REFERENCE, reference)
    return None if row is None else _transfer(row)


async def list_transfers(db: Db, page: PageQuery) -> list[Transfer]:
    """Transfers newest first (by transfer id), filtered as ``page`` says."""
    rows = await db.fetch(LIST_TRANSFERS, page.before, page.code, page.created_from, page.created_to, page.limit)
    return [_transfer(row) for row in rows]


async def list_account_transfers(db: Db, account_id: int, page: PageQuery) -> list[tuple[int, Transfer]]:
    """The transfers of ``account_id`` newest first, each with the account's entry id (the
    position ``page.before`` counts in; a system account's: the transfer id); raises
    :class:`AccountNotFound`."""
    query = LIST_SYSTEM_TRANSFERS if await _is_system(db, account_id) else LIST_ACCOUNT_TRANSFERS
    rows = await db.fetch(query, account_id, page.before, page.code, page.created_from, page.created_to, page.limit)
    return [(row["entry_id"], _transfer(row)) for row in rows]


# ---------------------------------------------------------------------------------------------
# Ledger entries: an account's history and its balance at a moment
# ---------------------------------------------------------------------------------------------

# Keyset pagination, newest first: entries of account $1 with id below $2, served by the index
# ledger_entries (account_id, id) without scanning the account's older entries or anyone else's.
READ_ENTRIES = """
SELECT e.id, e.transfer_id, e.amount, e.balance_after,
       CASE WHEN t.from_account_id = e.account_id THEN t.to_account_id ELSE t.from_account_id END
           AS counterparty_account_id,
       t.code, e.kind, e.description, t.metadata, e.idempotency_key, e.created_at
  FROM ledger_entries e JOIN transfers t ON t.id = e.transfer_id
 WHERE e.account_id = $1 AND e.id < $2 AND ($3::text IS NULL OR t.code = $3)
   AND ($4::timestamptz IS NULL OR e.created_at >= $4) AND ($5::timestamptz IS NULL OR e.created_at < $5)
 ORDER BY e.id DESC
 LIMIT $6
"""

# The account's balance right after its last entry at or before $2 (0 before its first). A system
# account has no entries: its balance then is what its transfers up to $2 moved in, minus out.
BALANCE_AT = """
SELECT CASE WHEN a.is_system
            THEN (SELECT coalesce(sum(CASE WHEN t.to_account_id = a.id THEN t.amount ELSE -t.amount END), 0)
                    FROM transfers t
                   WHERE t.asset_id = a.asset_id AND (t.from_account_id = a.id OR t.to_account_id = a.id)
                     AND t.created_at <= $2)
            ELSE coalesce((SELECT e.balance_after FROM ledger_entries e
                            WHERE e.account_id = a.id AND e.created_at <= $2
                            ORDER BY e.id DESC LIMIT 1), 0)
       END AS balance, s.code AS asset
  FROM accounts a JOIN assets s ON s.id = a.asset_id
 WHERE a.id = $1
"""


# A system account's history: its transfers, shown as entries (entryId = transferId; no running
# balance), newest first by transfer id; parameters as in READ_ENTRIES.
READ_SYSTEM_ENTRIES = """
SELECT t.id, t.id AS transfer_id, CASE WHEN t.to_account_id = $1 THEN t.amount ELSE -t.amount END AS amount,
       NULL::bigint AS balance_after,
       CASE WHEN t.to_account_id = $1 THEN t.from_account_id ELSE t.to_account_id END AS counterparty_account_id,
       t.code, CASE WHEN t.to_account_id = $1 THEN 'transfer_in' ELSE 'transfer_out' END AS kind, t.description,
       t.metadata, NULL::text AS idempotency_key, t.created_at
  FROM transfers t
 WHERE (t.from_account_id = $1 OR t.to_account_id = $1) AND t.id < $2 AND ($3::text IS NULL OR t.code = $3)
   AND ($4::timestamptz IS NULL OR t.created_at >= $4) AND ($5::timestamptz IS NULL OR t.created_at < $5)
 ORDER BY t.id DESC
 LIMIT $6
"""
IS_SYSTEM = "SELECT is_system FROM accounts WHERE id = $1"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One side of a transfer, as an account's history shows it: ``amount`` signed (minor units),
    ``balance_after`` the account's balance right after it (None on a system account)."""

    entry_id: int
    transfer_id: int
    amount: int
    balance_after: int | None
    counterparty_account_id: int
    code: str
    kind: str
    description: str | None
    metadata: dict[str, str]
    idempotency_key: str | None
    created_at: dt.datetime


async def _is_system(db: Db, account_id: int) -> bool:
    is_system = await db.fetchval(IS_SYSTEM, account_id)
    if is_system is None:
        raise AccountNotFound(account_id)
    return is_system


async def read_entries(db: Db, account_id: int, page: PageQuery) -> list[LedgerEntry]:
    """Up to ``page.limit`` entries of ``account_id`` with id < ``page.before``, newest first,
    filtered as ``page`` says (a system account's: its transfers, see READ_SYSTEM_ENTRIES).
    Raises :class:`AccountNotFound` when there is no such account."""
    query = READ_SYSTEM_ENTRIES if await _is_system(db, account_id) else READ_ENTRIES
    rows = await db.fetch(query, account_id, page.before, page.code, page.created_from, page.created_to, page.limit)
    return [LedgerEntry(*row[:8], json.loads(row["metadata"]) if row["metadata"] else {}, row["idempotency_key"],
                        row["created_at"]) for row in rows]


async def balance_at(db: Db, account_id: int, at: dt.datetime) -> tuple[str, int]:
    """``(asset code, balance)`` of ``account_id`` right after its last change at or before
    ``at``; raises :class:`AccountNotFound`."""
    row = await db.fetchrow(BALANCE_AT, account_id, at)
    if row is None:
        raise AccountNotFound(account_id)
    return row["asset"], int(row["balance"])


# ---------------------------------------------------------------------------------------------
# Assets
# ---------------------------------------------------------------------------------------------

# A new asset and its system account, in one statement.
CREATE_ASSET = """
WITH asset AS (
    INSERT INTO assets (code, scale, name) VALUES ($1, $2, $3) ON CONFLICT (code) DO NOTHING
 RETURNING id, code, scale, name, is_default, created_at
), system_account AS (
    INSERT INTO accounts (asset_id, name, is_system) SELECT id, 'System account', true FROM asset
 RETURNING id
)
SELECT asset.*, (SELECT id FROM system_account) AS system_account_id FROM asset
"""

# The asset's supply: the sum of its non-system balances, i.e. minus the system account's balance.
_ASSET_COLUMNS = """
SELECT s.id, s.code, s.scale, s.name, s.is_default, s.created_at, a.id AS system_account_id
  FROM assets s JOIN accounts a ON a.asset_id = s.id AND a.is_system
"""
READ_ASSET = _ASSET_COLUMNS + " WHERE s.code = $1"
READ_DEFAULT_ASSET = _ASSET_COLUMNS + " WHERE s.is_default"
LIST_ASSETS = _ASSET_COLUMNS + " ORDER BY s.id"
ASSET_SUPPLY = "SELECT coalesce(sum(balance), 0) FROM accounts WHERE asset_id = $1 AND NOT is_system"


@dataclass(frozen=True, slots=True)
class Asset:
    """An asset: ``code``, ``scale`` (decimal places of one minor unit), its system account."""

    asset_id: int
    code: str
    scale: int
    name: str | None
    default: bool
    created_at: dt.datetime
    system_account_id: int


async def create_asset(db: Db, code: str, scale: int, name: str | None) -> Asset:
    """Create asset ``code`` and its system account; raises :class:`AssetExists` (409)."""
    row = await db.fetchrow(CREATE_ASSET, code, scale, name)
    if row is None:
        raise AssetExists(code)
    return Asset(*row.values())


async def read_asset(db: Db, code: str) -> Asset:
    """Asset ``code``; raises :class:`AssetNotFound` (404)."""
    row = await db.fetchrow(READ_ASSET, code)
    if row is None:
        raise AssetNotFound(code)
    return Asset(*row.values())


async def read_default_asset(db: Db) -> Asset:
    """The default asset (created by migration 0004)."""
    return Asset(*(await db.fetchrow(READ_DEFAULT_ASSET)).values())


async def list_assets(db: Db) -> list[Asset]:
    """Every asset, oldest first."""
    return [Asset(*row.values()) for row in await db.fetch(LIST_ASSETS)]


async def asset_supply(db: Db, asset: Asset) -> int:
    """The sum of all non-system balances of ``asset`` (minor units)."""
    return int(await db.fetchval(ASSET_SUPPLY, asset.asset_id))


class AssetDirectory:
    """The assets this process has looked up, by code. Assets are never deleted and their id and
    system account never change, so an asset found once stays valid; an unknown code is asked of
    the database each time (it may have been created since). ``default`` is the default asset once
    looked up (None before: the service starts even while the database is down)."""

    def __init__(self) -> None:
        self.default: Asset | None = None
        self._by_code: dict[str, Asset] = {}

    async def get(self, db: Db, code: str | None) -> Asset:
        """The asset ``code`` (None: the default asset); raises :class:`AssetNotFound`."""
        if code is None:
            if self.default is None:
                self.default = await read_default_asset(db)
            return self.default
        asset = self._by_code.get(code)
        if asset is None:
            asset = self._by_code[code] = await read_asset(db, code)
        return asset


# ---------------------------------------------------------------------------------------------
# Accounts and users
# ---------------------------------------------------------------------------------------------

# A system account has no stored balance (migration 0004, accounts): each transfer row moves one
# amount out of one account and into another, so its balance is minus the sum of the asset's other
# balances, exactly (balance-api check recomputes it from the transfer rows).
_ACCOUNT_COLUMNS = """
SELECT a.id, s.code AS asset, a.user_id, a.name, a.is_system,
       CASE WHEN a.is_system THEN (SELECT -coalesce(sum(o.balance), 0) FROM accounts o
                                    WHERE o.asset_id = a.asset_id AND NOT o.is_system)
            ELSE a.balance END AS balance,
       a.overdraft_limit, a.max_balance, a.status, a.metadata, a.created_at, a.updated_at,
       a.pending_debits - coalesce(x.debits, 0) AS pending_debits,
       a.pending_credits - coalesce(x.credits, 0) AS pending_credits
  FROM accounts a JOIN assets s ON s.id = a.asset_id
  -- holds whose timeout has passed count no more (migration 0006); looked up only when any is held
  LEFT JOIN LATERAL expired_holds(a.id) x ON a.pending_debits > 0 OR a.pending_credits > 0
"""
READ_ACCOUNT = _ACCOUNT_COLUMNS + " WHERE a.id = $1"
READ_USER_ACCOUNTS = _ACCOUNT_COLUMNS + " WHERE a.user_id = $1 ORDER BY a.id"
USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)"

# An unknown user inserts nothing rather than failing the foreign key: a failed statement would
# abort the caller's transaction, and one holding an Idempotency-Key must still store the refusal
# (found by Schemathesis: a 500 on POST /api/accounts with a key and an unknown userId).
CREATE_ACCOUNT = """
INSERT INTO accounts (asset_id, user_id, name, overdraft_limit, max_balance, metadata)
SELECT $1, $2, $3, $4, $5, $6
 WHERE $2::bigint IS NULL OR EXISTS (SELECT 1 FROM users u WHERE u.id = $2)
ON CONFLICT (user_id, asset_id) DO NOTHING
RETURNING id
"""
ACCOUNT_OF_USER = "SELECT id FROM accounts WHERE user_id = $1 AND asset_id = $2"

# A new user and its default-asset account, in one statement.
CREATE_USER = """
WITH new_user AS (INSERT INTO users DEFAULT VALUES RETURNING id)
INSERT INTO accounts (asset_id, user_id) SELECT $1, id FROM new_user RETURNING id
"""

# Limits and names change under the account's row lock (the UPDATE takes it and re-checks its WHERE
# clause on the newest row, PostgreSQL docs §13.2.1), so a new limit is checked against the balance
# no concurrent transfer can change before the commit. NULL parameters leave a field as it is;
# $6 says whether maxBalance was given (it may be set to null: no ceiling). Open holds count as in
# transfers: the stored sums less the holds that have expired (migration 0006's expired_holds(),
# looked up only when a sum is not 0), so from expiresAt on a hold no longer counts here either
# (found by tests/test_ledger_state_machine.py: an expired hold still refused a lower limit). The
# subqueries read the row being updated, so a re-check on a newer row version recomputes them. A
# closed account is not changed (closed is final); a concurrent close is seen by that re-check too.
UPDATE_ACCOUNT = """
UPDATE accounts a
   SET name = coalesce($2, name), overdraft_limit = coalesce($3, overdraft_limit),
       max_balance = CASE WHEN $6 THEN $4 ELSE max_balance END, metadata = coalesce($5, metadata),
       updated_at = now()
 WHERE id = $1 AND NOT is_system AND status <> 'closed'
   AND balance - pending_debits
       + CASE WHEN pending_debits > 0 THEN (SELECT x.debits FROM expired_holds(a.id) x) ELSE 0 END
       >= -coalesce($3, overdraft_limit)
   AND (NOT $6 OR $4::bigint IS NULL OR balance + pending_credits
        - CASE WHEN pending_credits > 0 THEN (SELECT x.credits FROM expired_holds(a.id) x) ELSE 0 END <= $4)
RETURNING id
"""

# freeze / unfreeze / close, under the row lock (as above): closing needs a zero balance, and a
# closed account stays closed.
SET_STATUS = """
UPDATE accounts a SET status = $2, updated_at = now()
 WHERE id = $1 AND NOT is_system AND status <> 'closed'
   AND ($2 <> 'closed' OR (balance = 0 AND ((pending_debits = 0 AND pending_credits = 0)
        OR (SELECT x.debits = pending_debits AND x.credits = pending_credits FROM expired_holds(a.id) x))))
RETURNING id
"""
READ_STATE = "SELECT is_system, status, balance FROM accounts WHERE id = $1"


@dataclass(frozen=True, slots=True)
class Account:
    """An account of one asset. ``balance``, limits and pending sums in minor units;
    ``pending_debits`` / ``pending_credits`` are the amounts of its open holds as sender and receiver
    (expired ones excluded); ``max_balance`` None means no ceiling."""

    account_id: int
    asset: str
    user_id: int | None
    name: str | None
    system: bool
    balance: int
    overdraft_limit: int
    max_balance: int | None
    status: str
    metadata: dict[str, str]
    created_at: dt.datetime
    updated_at: dt.datetime
    pending_debits: int = 0
    pending_credits: int = 0

    @property
    def available(self) -> int:
        """What can be spent now: the balance minus the open holds on it (``pending_debits``)."""
        return self.balance - self.pending_debits


def _account(row) -> Account:
    balance = row["balance"]
    return Account(row["id"], row["asset"], row["user_id"], row["name"], row["is_system"],
                   int(balance) if isinstance(balance, Decimal) else balance, row["overdraft_limit"],
                   row["max_balance"], row["status"], json.loads(row["metadata"]), row["created_at"],
                   row["updated_at"], row["pending_debits"], row["pending_credits"])


async def read_account(db: Db, account_id: int) -> Account:
    """Account ``account_id``; raises :class:`AccountNotFound` (404)."""
    row = await db.fetchrow(READ_ACCOUNT, account_id)
    if row is None:
        raise AccountNotFound(account_id)
    return _account(row)


@dataclass(frozen=True, slots=True)
class NewAccount:
    """What ``POST /api/accounts`` asks: limits in minor units, ``max_balance`` None = no ceiling."""

    asset: Asset
    user_id: int | None = None
    name: str | None = None
    overdraft_limit: int = 0
    max_balance: int | None = None
    metadata: dict[str, str] | None = None


async def create_account(db: Db, new: NewAccount) -> Account:
    """Open an account; raises :class:`UserNotFound` (404) or :class:`AccountExists` (409, naming
    the user's existing account in that asset)."""
    account_id = await db.fetchval(CREATE_ACCOUNT, new.asset.asset_id, new.user_id, new.name, new.overdraft_limit,
                                   new.max_balance, json.dumps(new.metadata or {}))
    if account_id is None:
        existing = await db.fetchval(ACCOUNT_OF_USER, new.user_id, new.asset.asset_id)
        if existing is None:
            raise UserNotFound(new.user_id)
        raise AccountExists(existing, new.asset.code)
    return await read_account(db, account_id)


async def open_user_account(db: Db, user_id: int, asset: Asset) -> None:
    """Open user ``user_id``'s account in ``asset`` unless it has one (a credit opens it);
    raises :class:`UserNotFound`."""
    opened = await db.fetchval(CREATE_ACCOUNT, asset.asset_id, user_id, None, 0, None, "{}")
    if opened is None and await db.fetchval(ACCOUNT_OF_USER, user_id, asset.asset_id) is None:
        raise UserNotFound(user_id)


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """What ``PATCH /api/accounts/{id}`` changes; None leaves a field as it is, except
    ``max_balance`` when ``max_balance_given`` (None then removes the ceiling)."""

    name: str | None = None
    overdraft_limit: int | None = None
    max_balance: int | None = None
    max_balance_given: bool = False
    metadata: dict[str, str] | None = None


_REFUSED_ACTIONS = {None: "given limits", "frozen": "frozen", "open": "unfrozen", "closed": "closed"}


async def _refusal(db: Db, account_id: int, status: str | None) -> Problem:
    """Why an UPDATE of account ``account_id`` matched no row (read after it); ``status`` is the
    status it asked for (UPDATE_ACCOUNT: None, a limit change)."""
    state = await db.fetchrow(READ_STATE, account_id)
    if state is None:
        return AccountNotFound(account_id)
    if state["is_system"]:
        return SystemAccount(account_id, f"cannot be {_REFUSED_ACTIONS[status]}")
    if state["status"] == "closed":  # closed is final: no status, limit, name or metadata changes
        return AccountClosed(account_id=account_id)
    if status is None:
        return LimitViolated(account_id, state["balance"])
    return AccountNotEmpty(account_id, state["balance"])  # what else stops SET_STATUS: closing, balance <> 0


async def update_account(db: Db, account_id: int, update: AccountUpdate) -> Account:
    """Change an account's name, limits or metadata; raises :class:`AccountNotFound`,
    :class:`SystemAccount` (422), :class:`AccountClosed` (409: a closed account changes no more,
    as with its status) or :class:`LimitViolated` (409) when the balance already breaks a new
    limit."""
    updated = await db.fetchval(
        UPDATE_ACCOUNT, account_id, update.name, update.overdraft_limit, update.max_balance,
        None if update.metadata is None else json.dumps(update.metadata), update.max_balance_given,
    )
    if updated is None:
        raise await _refusal(db, account_id, None)
    return await read_account(db, account_id)


async def set_account_status(db: Db, account_id: int, status: str) -> Account:
    """Freeze (``frozen``), unfreeze (``open``) or close (``closed``) an account.

    Raises :class:`AccountNotFound`, :class:`SystemAccount` (422), :class:`AccountClosed` (409:
    closed is final) or, closing, :class:`AccountNotEmpty` (409)."""
    if await db.fetchval(SET_STATUS, account_id, status) is None:
        raise await _refusal(db, account_id, status)
    return await read_account(db, account_id)


@dataclass(frozen=True, slots=True)
class User:
    """A user and its accounts; ``default_account`` is its account in the default asset (if any)."""

    user_id: int
    accounts: list[Account]
    default_account: Account | None


async def create_user(db: Db, default_asset: Asset) -> User:
    """Open a new user with its default-asset account at balance 0 (one statement)."""
    account_id = await db.fetchval(CREATE_USER, default_asset.asset_id)
    account = await read_account(db, account_id)
    return User(account.user_id, [account], account)


async def read_user(db: Db, user_id: int, default_asset: Asset) -> User:
    """User ``user_id`` with its accounts; raises :class:`UserNotFound`."""
    accounts = [_account(row) for row in await db.fetch(READ_USER_ACCOUNTS, user_id)]
    if not accounts and not await db.fetchval(USER_EXISTS, user_id):
        raise UserNotFound(user_id)
    default = next((a for a in accounts if a.asset == default_asset.code), None)
    return User(user_id, accounts, default)


# For tests and the bench: a new user whose default-asset account opens with $1 minor units, moved
# in from the system account as an 'opening' transfer with the account's entry (every check holds).
SEED_USER = """
WITH new_user AS (INSERT INTO users DEFAULT VALUES RETURNING id),
account AS (
    INSERT INTO accounts (asset_id, user_id, balance)
    SELECT s.id, new_user.id, $1::bigint FROM assets s, new_user WHERE s.is_default RETURNING id, asset_id
),
opening AS (
    INSERT INTO transfers (asset_id, from_account_id, to_account_id, amount, code, to_balance)
    SELECT account.asset_id, sys.id, account.id, $1::bigint, 'opening', $1::bigint
      FROM account JOIN accounts sys ON sys.asset_id = account.asset_id AND sys.is_system
     WHERE $1::bigint > 0
 RETURNING id, to_account_id, amount
), entry AS (
    INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind)
    SELECT to_account_id, id, amount, amount, 'opening' FROM opening
)
SELECT (SELECT id FROM new_user) AS user_id, (SELECT id FROM account) AS account_id
"""


async def user_account_id(db: Db, user_id: int, asset: Asset) -> int:
    """The id of user ``user_id``'s account in ``asset``; raises :class:`UserNotFound` or
    :class:`AccountNotFound`."""
    account_id = await db.fetchval(ACCOUNT_OF_USER, user_id, asset.asset_id)
    if account_id is None:
        if not await db.fetchval(USER_EXISTS, user_id):
            raise UserNotFound(user_id)
        raise AccountNotFound(None, user_id=user_id)
    return account_id
