"""Moving money: every way a balance changes, each one call of a SQL function.

Money moves only by transfers between two accounts of one asset. The functions, and why each is
safe under concurrency, are in server/ledger/sql/: ``apply_balance_changes()``
(balance_changes.sql: PATCH, credits and debits, batched across accounts, or a batch of one),
``reverse_transfer()`` (transfers.sql), ``apply_transfer_batch()`` (transfer_batches.sql: the
items of ``POST /api/transfers/batch``) and ``apply_ledger_batch()`` (ledger_batches.sql: a
batcher's batch mixing balance changes with transfers, holds, posts and voids). Single transfers,
holds, posts and voids go through the batcher (server/ledger/batching.py) and so through the
batch functions. Refusals come back as :class:`~server.problems.Problem` values (or are raised),
and a refusal writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence

import asyncpg

from server.ledger.api_keys import KEY_REFUSED
from server.ledger.records import (AccountRef, AppliedChange, BalanceChangeOrder, Db, ResolvePending, Transfer,
                                   TransferOrder, transfer_from_row)
from server.ledger.transfer_reads import read_transfer
from server.problems import (AccountClosed, AccountFrozen, AccountNotFound, AssetMismatch, BalanceOverflow,
                             ExceedsPendingAmount, ExceedsReversibleAmount, InsufficientFunds, LinkedTransferFailed,
                             MaxBalanceExceeded, PendingTransferAlreadyPosted, PendingTransferAlreadyVoided,
                             PendingTransferExpired, Problem, ReferenceReused, SameAccount, SystemAccount,
                             TransferNotFound, TransferNotPending, TransferNotPosted, UserNotFound)

# One call applies a batch of changes to any accounts (balance_changes.sql says why it is safe):
# per change its account id, or user id and asset id, then its fields and the API key that sent
# it (its transfer's creator); one array each.
APPLY_BALANCE_CHANGES = """
SELECT account_id, user_id, balance_after, transfer_id, entry_id, outcome
  FROM apply_balance_changes($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""


# The same, run only when none of the API keys $9 is revoked or expired as of this statement's
# snapshot (else it returns no row and changes nothing): the function's first argument depends on
# the one row of `valid`, so it is called once, after the check, or not at all. The check reads
# api_keys by primary key and locks nothing.
APPLY_BALANCE_CHANGES_IF_KEYS_VALID = f"""
SELECT c.account_id, c.user_id, c.balance_after, c.transfer_id, c.entry_id, c.outcome
  FROM (SELECT '{{}}'::bigint[] AS nothing
         WHERE NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = ANY ($9) AND {KEY_REFUSED})) valid
 CROSS JOIN LATERAL apply_balance_changes($1 || valid.nothing, $2, $3, $4, $5, $6, $7, $8, $9) c
"""


# Reverse $2 (NULL: all that is left) of transfer $1, with code $3, description $4, reference $5,
# asked for by API key $6 (transfers.sql).
REVERSE_TRANSFER = "SELECT * FROM reverse_transfer($1, $2, $3, $4, $5, $6)"


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


async def apply_balance_changes(db: Db, changes: Sequence[tuple[AccountRef, BalanceChangeOrder]],
                                if_keys_valid: bool = False) -> list[AppliedChange | Problem] | None:
    """Apply ``changes``, each ``(account, change)``, to any accounts, in order, in ONE statement;
    return each one's :class:`AppliedChange` or its refusal (a :class:`Problem`, not raised), in order.
    Each change's transfer records its ``key_id`` as its creator. With ``if_keys_valid``, only if
    none of the changes' API keys is revoked or expired, in the same statement: else nothing is
    applied and the result is None.

    The outcome is exactly that of applying them one at a time (``apply_balance_changes()``,
    balance_changes.sql); refusals write nothing.
    """
    if not changes:
        return []
    columns = (*zip(*(ref for ref, _ in changes)), *zip(*(change for _, change in changes)))
    if if_keys_valid:
        rows = await db.fetch(APPLY_BALANCE_CHANGES_IF_KEYS_VALID, *columns)
        if not rows:
            return None
    else:
        rows = await db.fetch(APPLY_BALANCE_CHANGES, *columns)
    return [AppliedChange(account_id, user_id, balance_after, transfer_id, entry_id) if outcome == "applied"
            else balance_change_refusal(outcome, ref, account_id, change.amount)
            for (ref, change), (account_id, user_id, balance_after, transfer_id, entry_id, outcome)
            in zip(changes, rows, strict=True)]


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
                           description: str | None = None, reference: str | None = None,
                           key_id: int | None = None) -> Transfer:
    """Reverse ``amount`` minor units (None: all that is left) of transfer ``transfer_id``: a transfer
    the opposite way, under the usual checks, with ``reverses`` set, made by API key ``key_id`` (its
    ``created_by``; None: no authentication) (one call of ``reverse_transfer()``, transfers.sql).
    Returns the new :class:`Transfer` (``replayed`` when its ``reference`` was taken by the same
    reversal before).

    Raises, writing nothing: :class:`TransferNotFound` (404), :class:`TransferNotPosted` (409),
    :class:`ExceedsReversibleAmount` (422), :class:`ReferenceReused` (409), and the refusals of
    :func:`transfer_funds` (e.g. :class:`InsufficientFunds` when the receiver spent it).
    """
    row = await db.fetchrow(REVERSE_TRANSFER, transfer_id, amount, code, description, reference, key_id)
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


# Every item of a batch in one call (transfer_batches.sql says why it is safe under concurrency):
# $1 atomic, then one array per item field (kind, both sides, asset, amount, code, description,
# metadata, pending, timeout, reference, the hold a post or void names, the Idempotency-Key a
# transfer's entries record, and the API key that sends it, the transfer's creator).
APPLY_TRANSFER_BATCH = """
SELECT item, outcome, role, transfer_id, from_account_id, to_account_id, transfer
  FROM apply_transfer_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
"""


class _AtomicBatchFailed(Exception):
    def __init__(self, index: int, refusal: Problem):
        super().__init__(index)
        self.index, self.refusal = index, refusal


async def apply_transfer_batch(conn: asyncpg.Connection, orders: Sequence[TransferOrder | ResolvePending | Problem],
                               atomic: bool, idempotency_keys: Sequence[str | None] | None = None,
                               statement_timeout: float | None = None) -> tuple[bool, list[Transfer | Problem]]:
    """Apply ``orders`` in order in ONE transaction on ``conn`` (a savepoint inside a caller's
    transaction), each seeing the effects of those before it: ONE call of ``apply_transfer_batch()``
    (transfer_batches.sql: set-based when all are plain transfers that pass), which also returns the
    transfers as they are after it, whatever the number of orders: one round trip. An order
    given as a :class:`Problem` failed before reaching the database (e.g. an unknown asset). Returns
    ``(committed, results)``, one :class:`Transfer` or refusal per order, as :func:`transfer_funds`
    and :func:`resolve_pending_transfer` would return or raise it.

    ``atomic`` (TigerBeetle's linked events): the first refusal rolls everything back; it is that
    item's result and every other item's is :class:`LinkedTransferFailed`; ``committed`` is False.
    Otherwise each order succeeds or fails on its own (a refusal writes nothing) and the rest commit.
    ``idempotency_keys`` (one per order, or None): the key each transfer made now records on its
    ledger entries, as :func:`transfer_funds` records it; a transfer records its order's ``key_id``
    as its creator. ``statement_timeout`` (seconds, None: the
    connection's own): the batch's bound in place of the connection's statement_timeout, set for its
    transaction alone (SET LOCAL, PostgreSQL docs §19.11.2), its waits for row locks included.
    Database errors propagate (nothing committed).
    """
    results: list[Transfer | Problem] = []
    try:
        # one statement is its own transaction; an atomic batch may have to be rolled back after it,
        # and a statement_timeout of its own lasts for a transaction
        async with conn.transaction() if atomic or statement_timeout else contextlib.nullcontext():
            if statement_timeout:
                await conn.execute(f"SET LOCAL statement_timeout = {round(statement_timeout * 1000)}")
            rows = await conn.fetch(APPLY_TRANSFER_BATCH, atomic, *_batch_columns(orders),
                                    list(idempotency_keys) if idempotency_keys is not None else [None] * len(orders),
                                    _creators(orders), timeout=statement_timeout and statement_timeout + 5)
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
    made = None if row["transfer"] is None else transfer_from_row(row["transfer"])
    if isinstance(order, ResolvePending):
        return _resolved(order, row, made)
    return _transferred(order, row, made)


# A batcher's batch that mixes balance changes with transfers, in one call (ledger_batches.sql, which
# says why it is safe under concurrency): the arrays of apply_transfer_batch() without atomic; a
# change's kind is its entry kind, its account the from side, its amount signed.
APPLY_LEDGER_BATCH = """
SELECT item, outcome, role, transfer_id, from_account_id, to_account_id, transfer, user_id, balance_after, entry_id
  FROM apply_ledger_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
"""

LedgerItem = tuple[AccountRef, BalanceChangeOrder] | TransferOrder | ResolvePending


async def apply_ledger_batch(db: Db, items: Sequence[LedgerItem], idempotency_keys: Sequence[str | None]
                             ) -> list[AppliedChange | Transfer | Problem]:
    """Apply ``items`` in order in ONE statement, each accepted or refused on its own as if applied
    one at a time: balance changes ``(account, change)`` as :func:`apply_balance_changes` applies
    them, transfers, holds, posts and voids as :func:`apply_transfer_batch` without ``atomic``
    (one call of ``apply_ledger_batch()``, ledger_batches.sql, which runs each run of one kind through
    that kind's function). Returns each item's result or refusal (a :class:`Problem`, not raised),
    in order. ``idempotency_keys``: per item, the key its ledger entries record (a change's own
    ``idempotency_key`` when its entry here is None). Database errors propagate (nothing committed).
    """
    keys = [key or (item[1].idempotency_key if isinstance(item, tuple) else None)
            for item, key in zip(items, idempotency_keys, strict=True)]
    rows = await db.fetch(APPLY_LEDGER_BATCH, *_batch_columns(items), keys, _creators(items))
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


def _creators(orders: Sequence[LedgerItem | Problem]) -> list[int | None]:
    """Per item, the API key that sends it (its transfer's ``created_by``; None: none or not a transfer)."""
    return [order[1].key_id if isinstance(order, tuple) else order.key_id if isinstance(order, TransferOrder) else None
            for order in orders]


def _batch_columns(orders: Sequence[LedgerItem | Problem]) -> list[list]:
    """The 14 per-item arrays of ``apply_transfer_batch()`` after ``atomic``, in its parameter order
    (the 15th, the idempotency keys, comes from the caller)."""
    columns: list[list] = [[] for _ in range(14)]
    for order in orders:
        for column, value in zip(columns, _batch_item_columns(order), strict=True):
            column.append(value)
    return columns
