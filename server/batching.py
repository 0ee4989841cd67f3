"""Per-account batching of concurrent balance changes (``BATCHING=true``).

Every change to one account serialises on that account's row lock, held until the commit reaches
disk. Changes that arrive for an account while a statement for it is in flight would wait in this
process anyway (for a pool connection, then for the row lock); instead they are collected, and when
the in-flight statement returns, all of them (at most ``BATCH_MAX_SIZE``) go to PostgreSQL as ONE
call of ``apply_balance_changes()`` (migration 0003): one statement, one transaction, one commit.

* A lone change goes out at once, as a batch of one: no timer, no added latency without contention.
* Semantics are those of applying the changes one at a time in arrival order: the SQL function
  walks the batch in order, accepting a change iff the running balance stays within
  0..2^63-1, and writes one ledger entry per accepted change with its own ``balance_after``.
* Every request is answered with its own outcome, after its batch has committed. If the batch
  fails (connection lost, timeout), every request in it gets the error (503): the batch was one
  statement, so nothing of it committed.
* Batching is per process: with several workers each batches its own requests, and PostgreSQL's
  row lock still serialises the batches (see the function's comment).

Changes with an ``Idempotency-Key`` do not come here: their key claim, change and stored outcome are
one transaction of their own (:mod:`server.idempotency`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .database import Database
from .ledger import AppliedChange
from .problems import (
    DATABASE_UNAVAILABLE_ERRORS,
    BalanceOverflow,
    DatabaseUnavailable,
    InsufficientFunds,
    Problem,
    UserNotFound,
)

log = logging.getLogger(__name__)

APPLY_BALANCE_CHANGES = "SELECT balance_after, entry_id, outcome FROM apply_balance_changes($1, $2, $3, $4, $5)"


@dataclass(slots=True)
class _Change:
    amount: int  # signed, minor units
    kind: str
    description: str | None
    answer: asyncio.Future[AppliedChange]


def _refusal(outcome: str, user_id: int, amount: int) -> Problem:
    if outcome == "insufficient_funds":
        return InsufficientFunds(user_id, amount)
    if outcome == "balance_overflow":
        return BalanceOverflow(user_id, amount)
    return UserNotFound(user_id)


class BalanceChangeBatcher:
    """Collects concurrent changes per account and applies each collection in one statement.

    ``max_batch`` bounds how many changes one statement carries. Changes waiting here count as
    pending requests of ``database`` (``DB_MAX_PENDING``), like requests waiting for a connection.
    """

    def __init__(self, database: Database, max_batch: int,
                 on_batch: Callable[[int], object] | None = None):
        """``on_batch(size)`` is called for every statement sent (e.g. a metrics histogram)."""
        self._database = database
        self._max_batch = max_batch
        self._on_batch = on_batch
        self.statements = 0  # statements sent so far
        # account -> changes that arrived while a batch for it was in flight; an account is a key
        # here exactly while a batch for it is in flight
        self._waiting: dict[int, list[_Change]] = {}
        self._drainers: set[asyncio.Task] = set()

    async def apply(self, user_id: int, amount: int, kind: str = "adjustment",
                    description: str | None = None) -> AppliedChange:
        """Apply ``amount`` (signed, non-zero, minor units) to ``user_id`` as ledger entry ``kind``.

        Returns the :class:`AppliedChange`; raises :class:`UserNotFound` (404),
        :class:`InsufficientFunds` / :class:`BalanceOverflow` (409), :class:`ServiceOverloaded` or
        :class:`DatabaseUnavailable` (503) -- exactly as :func:`server.ledger.apply_balance_change`.
        """
        with self._database.admission():
            change = _Change(amount, kind, description, asyncio.get_running_loop().create_future())
            waiting = self._waiting.get(user_id)
            if waiting is not None:  # a batch for this account is in flight: ride with the next one
                waiting.append(change)
                return await change.answer
            self._waiting[user_id] = []
            try:  # nothing in flight: go at once, alone
                await self._send(user_id, [change])
            finally:
                self._hand_on(user_id)
            return await change.answer

    def _next_batch(self, user_id: int) -> list[_Change]:
        waiting = self._waiting[user_id]
        if not waiting:
            del self._waiting[user_id]
            return []
        batch, self._waiting[user_id] = waiting[:self._max_batch], waiting[self._max_batch:]
        return batch

    def _hand_on(self, user_id: int) -> None:
        """After a batch for ``user_id`` returned: send what queued meanwhile, from a task of its
        own (the request that sent the first batch answers now, not after the queue drains)."""
        batch = self._next_batch(user_id)
        if batch:
            task = asyncio.create_task(self._drain(user_id, batch))
            self._drainers.add(task)
            task.add_done_callback(self._drainers.discard)

    async def _drain(self, user_id: int, batch: list[_Change]) -> None:
        try:
            while batch:
                await self._send(user_id, batch)
                batch = self._next_batch(user_id)
        except BaseException:  # cancelled (shutdown): nobody must wait forever
            for change in [*batch, *self._waiting.pop(user_id, [])]:
                if not change.answer.done():
                    change.answer.set_exception(DatabaseUnavailable("The service is shutting down; retry."))
            raise

    async def _send(self, user_id: int, batch: list[_Change]) -> None:
        """Apply ``batch`` in one statement and settle every change's ``answer``; never raises
        (except on cancellation)."""
        self.statements += 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            async with self._database.pooled_connection() as conn:
                rows = await conn.fetch(
                    APPLY_BALANCE_CHANGES, user_id,
                    [change.amount for change in batch], [change.kind for change in batch],
                    [change.description for change in batch], [None] * len(batch),
                )
        except Exception as error:
            if not isinstance(error, (Problem, *DATABASE_UNAVAILABLE_ERRORS)):
                log.exception("batch of %d changes for user %d failed", len(batch), user_id)
            if isinstance(error, DATABASE_UNAVAILABLE_ERRORS):
                error = DatabaseUnavailable()
            for change in batch:  # one statement: none of it committed
                change.answer.set_exception(error)
            return
        for change, (balance_after, entry_id, outcome) in zip(batch, rows, strict=True):
            if outcome == "applied":
                change.answer.set_result(AppliedChange(user_id, balance_after, entry_id))
            else:
                change.answer.set_exception(_refusal(outcome, user_id, change.amount))
