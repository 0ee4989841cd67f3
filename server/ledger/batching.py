"""Per-account batching of concurrent balance changes (``BATCHING=true``).

Every change to one account serialises on that account's row lock, held until the commit reaches
disk. Changes that arrive for an account while a statement for it is in flight would wait in this
process anyway (for a pool connection, then for the row lock); instead they are collected, and when
the in-flight statement returns, all of them (at most ``BATCH_MAX_SIZE``) go to PostgreSQL as ONE
call of ``apply_balance_changes()`` (migration 0004): one statement, one transaction, one commit.
Each change is a transfer between the account and its asset's system account; the system account's
row is never locked, so batches for different accounts never wait for each other.

* A lone change goes out at once, as a batch of one: no timer, no added latency without contention.
* Semantics are those of applying the changes one at a time in arrival order: the SQL function
  walks the batch in order, accepting a change iff the account is open and the running balance
  stays within its limits, and writes one transfer (two entries) per accepted change, the account's
  entry with its own ``balance_after``.
* Every request is answered with its own outcome, after its batch has committed. If the batch
  fails (connection lost, timeout), every request in it gets the error (503): the batch was one
  statement, so nothing of it committed.
* Batching is per process: with several workers each batches its own requests, and PostgreSQL's
  row lock still serialises the batches (see the function's comment).

* Changes with an ``Idempotency-Key`` are batched too. A batch holding any is one transaction of
  four statements: claim the keys (in key order), read the stored outcomes of keys already used
  (a replay, or 422 ``idempotency_key_reused``), apply the changes of the claimed keys and the
  unkeyed ones in one ``apply_balance_changes()`` call, store the outcomes of the claimed keys;
  then commit, then answer. A key that appears twice in one batch is deferred to the next batch,
  where it finds the first one's stored outcome. Deadlocks and serialization failures retry the
  whole batch (:func:`server.ledger.idempotency.retry_transaction`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from server.ledger.idempotency import (
    CLAIM_KEYS,
    READ_STORED_MANY,
    STORE_OUTCOMES,
    KeyedRequest,
    KeyVanished,
    Outcome,
    retry_transaction,
    stored_outcome,
)
from server.ledger.store import AccountRef, AppliedChange, BalanceChange, apply_balance_changes
from server.problems import DATABASE_UNAVAILABLE_ERRORS, DatabaseUnavailable, Problem
from server.running.database import Database

log = logging.getLogger(__name__)

# How a keyed change's result (the applied change, or its refusal) becomes the response stored
# under its key.
Render = Callable[[AppliedChange | Problem], Outcome]


@dataclass(slots=True)
class _Change:
    change: BalanceChange
    answer: asyncio.Future  # AppliedChange; for a keyed change (Outcome, replayed)
    keyed: KeyedRequest | None = None
    render: Render | None = None


class BalanceChangeBatcher:
    """Collects concurrent changes per account and applies each collection in one statement.

    ``max_batch`` bounds how many changes one statement carries. Changes waiting here count as
    pending requests of ``database`` (``DB_MAX_PENDING``), like requests waiting for a connection.
    """

    def __init__(self, database: Database, max_batch: int,
                 on_batch: Callable[[int], object] | None = None,
                 key_retention: dt.timedelta = dt.timedelta(days=1)):
        """``on_batch(size)`` is called for every batch sent (e.g. a metrics histogram);
        ``key_retention`` is how long an idempotency key stays claimed (``IDEMPOTENCY_KEY_RETENTION``)."""
        self._database = database
        self._key_retention = key_retention
        self._max_batch = max_batch
        self._on_batch = on_batch
        self.batches_sent = 0
        # account -> changes that arrived while a batch for it was in flight; an account is a key
        # here exactly while a batch for it is in flight
        self._waiting: dict[AccountRef, list[_Change]] = {}
        self._drainers: set[asyncio.Task] = set()

    async def apply(self, ref: AccountRef, change: BalanceChange) -> AppliedChange:
        """Apply ``change`` to the account ``ref``.

        Returns the :class:`AppliedChange`; raises its refusal, :class:`ServiceOverloaded` or
        :class:`DatabaseUnavailable` (503) -- exactly as :func:`server.ledger.apply_balance_change`.
        """
        return await self._submit(ref, _Change(change, self._future()))

    async def apply_keyed(self, ref: AccountRef, change: BalanceChange, keyed: KeyedRequest,
                          render: Render) -> tuple[Outcome, bool]:
        """Apply a change sent with an Idempotency-Key: returns ``(outcome, replayed)``, the outcome
        being ``render(result)`` stored under the key with the change, or the one stored before
        (``replayed``). Raises :class:`~server.problems.IdempotencyKeyReused` (422) when the key was
        used for another request, and the 503 problems as :meth:`apply`."""
        change = change._replace(idempotency_key=keyed.key)
        return await self._submit(ref, _Change(change, self._future(), keyed, render))

    @staticmethod
    def _future() -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, account: AccountRef, change: _Change):
        with self._database.admission():
            waiting = self._waiting.get(account)
            if waiting is not None:  # a batch for this account is in flight: ride with the next one
                waiting.append(change)
                return await change.answer
            self._waiting[account] = []
            try:  # nothing in flight: go at once, alone
                await self._send(account, [change])
            finally:
                self._hand_on(account)
            return await change.answer

    def _next_batch(self, account: AccountRef) -> list[_Change]:
        waiting = self._waiting[account]
        if not waiting:
            del self._waiting[account]
            return []
        batch, self._waiting[account] = waiting[:self._max_batch], waiting[self._max_batch:]
        return batch

    def _hand_on(self, account: AccountRef) -> None:
        """After a batch for ``account`` returned: send what queued meanwhile, from a task of its
        own (the request that sent the first batch answers now, not after the queue drains)."""
        batch = self._next_batch(account)
        if batch:
            task = asyncio.create_task(self._drain(account, batch))
            self._drainers.add(task)
            task.add_done_callback(self._drainers.discard)

    async def _drain(self, account: AccountRef, batch: list[_Change]) -> None:
        try:
            while batch:
                await self._send(account, batch)
                batch = self._next_batch(account)
        except BaseException:  # cancelled (shutdown): nobody must wait forever
            for change in [*batch, *self._waiting.pop(account, [])]:
                if not change.answer.done():
                    change.answer.set_exception(DatabaseUnavailable("The service is shutting down; retry."))
            raise

    async def _send(self, account: AccountRef, batch: list[_Change]) -> None:
        """Apply ``batch`` (one statement, or one transaction when it holds keys) and settle every
        change's ``answer`` after the commit; never raises (except on cancellation)."""
        self.batches_sent += 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            if any(change.keyed for change in batch):
                settled = await retry_transaction(lambda: self._apply_keyed_batch(account, batch))
            else:
                async with self._database.pooled_connection() as conn:
                    settled = list(zip(batch, await self._apply(conn, account, batch)))
        except Exception as error:
            if not isinstance(error, (Problem, *DATABASE_UNAVAILABLE_ERRORS)):
                log.exception("batch of %d changes for %s failed", len(batch), account)
            if isinstance(error, DATABASE_UNAVAILABLE_ERRORS):
                error = DatabaseUnavailable()
            for change in batch:  # one transaction: none of it committed
                if not change.answer.done():
                    change.answer.set_exception(error)
            return
        for change, result in settled:
            if isinstance(result, BaseException):
                change.answer.set_exception(result)
            else:
                change.answer.set_result(result)

    @staticmethod
    async def _apply(conn: asyncpg.Connection, account: AccountRef,
                     changes: list[_Change]) -> list[AppliedChange | Problem]:
        """One ``apply_balance_changes()`` call: each change's applied result or refusal, in order."""
        return await apply_balance_changes(conn, account, [change.change for change in changes])

    async def _apply_keyed_batch(self, account: AccountRef, batch: list[_Change]) -> list[tuple[_Change, object]]:
        """The transaction of a batch holding keyed changes (module docstring); returns what each
        change is to be answered, to be settled once it has committed."""
        first_use: dict[str, _Change] = {}
        sending, deferred = [], []
        for change in batch:
            if change.keyed and change.keyed.key in first_use:
                deferred.append(change)  # the same key twice in one batch: the next batch replays it
            else:
                if change.keyed:
                    first_use[change.keyed.key] = change
                sending.append(change)
        settled: list[tuple[_Change, object]] = []
        async with self._database.pooled_connection() as conn, conn.transaction():
            keys = [change.keyed.key for change in first_use.values()]
            claimed = {row["key"] for row in await conn.fetch(
                CLAIM_KEYS, keys, [change.keyed.fingerprint for change in first_use.values()], self._key_retention)}
            stored = {row["key"]: row for row in await conn.fetch(
                READ_STORED_MANY, [key for key in keys if key not in claimed])} if len(claimed) < len(keys) else {}
            applying = []
            for change in sending:
                if change.keyed is None or change.keyed.key in claimed:
                    applying.append(change)
                elif change.keyed.key not in stored:
                    raise KeyVanished()  # expired and purged between claim and read: retry
                else:
                    try:
                        settled.append((change, (stored_outcome(stored[change.keyed.key], change.keyed.fingerprint,
                                                                change.keyed.key), True)))
                    except Problem as reused:
                        settled.append((change, reused))
            outcomes = []
            for change, result in zip(applying, await self._apply(conn, account, applying)):
                if change.keyed is None:
                    settled.append((change, result))
                else:
                    outcome = change.render(result)
                    outcomes.append((change.keyed.key, outcome))
                    settled.append((change, (outcome, False)))
            if outcomes:
                await conn.execute(STORE_OUTCOMES, *map(list, zip(*(
                    (key, o.status, o.body, o.content_type, o.location) for key, o in outcomes))))
        if deferred:
            self._waiting[account][:0] = deferred
        return settled
