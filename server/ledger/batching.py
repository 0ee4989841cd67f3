"""Batching of concurrent balance changes across accounts (``BATCHING=true``).

Every change commits in a transaction, and a commit waits for its WAL to reach disk; a change to an
account also waits for that account's row lock. So instead of one statement and one commit per
change, changes that arrive while batches are in flight are collected, and when a batch returns,
what waits (at most ``BATCH_MAX_SIZE`` changes, whatever accounts they touch) goes to PostgreSQL as
ONE call of ``apply_balance_changes()`` (migration 0005): one statement, one transaction, one commit.
At most ``BATCH_MAX_IN_FLIGHT`` batches are in flight at once. Each change is a transfer between an
account and its asset's system account; the system account's row is never locked.

* A lone change goes out at once, as a batch of one: no timer, no added latency without contention.
* Per account, order is arrival order: a batch takes no change of an account that is in a batch
  still in flight (those wait for the next), so one account's changes go out in the order they
  came, and batches in flight never touch the same account (nor wait for each other's locks).
* Semantics are those of applying the changes one at a time in arrival order: the SQL function
  locks the accounts in id order and walks each account's changes in array order, accepting a
  change iff the account is open and its running balance stays within its limits, and writes one
  transfer per accepted change, the account's entry with its own ``balance_after``.
* Every request is answered with its own outcome, after its batch has committed. If the batch
  fails (connection lost, timeout), every request in it gets the error (503): the batch was one
  statement, so nothing of it committed.
* Batching is per process: with several workers each batches its own requests; PostgreSQL's row
  locks, always taken in account id order, serialise batches that share an account, without deadlock.

* Changes with an ``Idempotency-Key`` are batched too. A batch holding any is one transaction of
  four statements: claim the keys (in key order), read the stored outcomes of keys already used
  (a replay, or 422 ``idempotency_key_reused``), apply the changes of the claimed keys and the
  unkeyed ones in one ``apply_balance_changes()`` call, store the outcomes of the claimed keys;
  then commit, then answer. Changes with the same key go out in arrival order, one per batch (a
  key is like an account here), so a repeated key finds the first one's stored outcome. Deadlocks and serialization failures retry the
  whole batch (:func:`server.ledger.idempotency.retry_transaction`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
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
    account: AccountRef
    change: BalanceChange
    answer: asyncio.Future  # AppliedChange; for a keyed change (Outcome, replayed)
    keyed: KeyedRequest | None = None
    render: Render | None = None


class BalanceChangeBatcher:
    """Collects concurrent changes, whatever their accounts, and applies each collection in one statement.

    ``max_batch`` bounds how many changes one statement carries, ``max_in_flight`` how many batches
    are in flight at once (each holds a pool connection). Changes waiting here count as pending
    requests of ``database`` (``DB_MAX_PENDING``), like requests waiting for a connection.
    """

    def __init__(self, database: Database, max_batch: int,
                 on_batch: Callable[[int], object] | None = None,
                 key_retention: dt.timedelta = dt.timedelta(days=1), max_in_flight: int = 8):
        """``on_batch(size)`` is called for every batch sent (e.g. a metrics histogram);
        ``key_retention`` is how long an idempotency key stays claimed (``IDEMPOTENCY_KEY_RETENTION``)."""
        self._database = database
        self._key_retention = key_retention
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._on_batch = on_batch
        self.batches_sent = 0
        # account -> its changes not yet sent, in arrival order; accounts in the order their first
        # waiting change arrived
        self._waiting: dict[AccountRef, deque[_Change]] = {}
        self._busy: set[AccountRef] = set()  # accounts in a batch in flight
        # idempotency key -> its changes not yet sent, in arrival order; and the keys in flight
        self._waiting_keys: dict[str, deque[_Change]] = {}
        self._busy_keys: set[str] = set()
        self._in_flight: set[asyncio.Task] = set()
        self._closed = False

    async def apply(self, ref: AccountRef, change: BalanceChange) -> AppliedChange:
        """Apply ``change`` to the account ``ref``.

        Returns the :class:`AppliedChange`; raises its refusal, :class:`ServiceOverloaded` or
        :class:`DatabaseUnavailable` (503) -- exactly as :func:`server.ledger.store.apply_balance_change`.
        """
        return await self._submit(_Change(ref, change, self._future()))

    async def apply_keyed(self, ref: AccountRef, change: BalanceChange, keyed: KeyedRequest,
                          render: Render) -> tuple[Outcome, bool]:
        """Apply a change sent with an Idempotency-Key: returns ``(outcome, replayed)``, the outcome
        being ``render(result)`` stored under the key with the change, or the one stored before
        (``replayed``). Raises :class:`~server.problems.IdempotencyKeyReused` (422) when the key was
        used for another request, and the 503 problems as :meth:`apply`."""
        change = change._replace(idempotency_key=keyed.key)
        return await self._submit(_Change(ref, change, self._future(), keyed, render))

    @staticmethod
    def _future() -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, change: _Change):
        with self._database.admission():
            if self._closed:
                raise DatabaseUnavailable("The service is shutting down; retry.")
            self._enqueue(self._waiting, change.account, change)
            if change.keyed is not None:
                self._enqueue(self._waiting_keys, change.keyed.key, change)
            # Whenever nothing can go (every slot taken, or all that waits is held back by what is in
            # flight), a change of a busy account changes nothing: its batch sends it when it returns.
            if change.account not in self._busy and len(self._in_flight) < self._max_in_flight:
                self._send_what_can_go()
            return await change.answer

    @staticmethod
    def _enqueue(queues: dict, name, change: _Change) -> None:
        queue = queues.get(name)
        if queue is None:
            queues[name] = deque((change,))
        else:
            queue.append(change)

    def _send_what_can_go(self) -> None:
        """Start batches, each from a task of its own, while fewer than ``max_in_flight`` are in
        flight and changes of accounts not in flight wait."""
        while len(self._in_flight) < self._max_in_flight:
            batch = self._next_batch()
            if not batch:
                return
            task = asyncio.create_task(self._run(batch))
            self._in_flight.add(task)

    def _next_batch(self) -> list[_Change]:
        """Take up to ``max_batch`` waiting changes, oldest account first, and mark their accounts
        and keys busy.

        An account's changes are taken from the front of its queue, and only while its account is
        not in flight; a keyed change only when it is the oldest waiting change with its key and
        no change with that key is in flight (else its account's queue stops there). So changes
        that share an account or a key go out in arrival order, each key at most once per batch,
        and the oldest waiting change can always go once what it waits for has returned.
        """
        batch: list[_Change] = []
        room = self._max_batch
        for account in [account for account in self._waiting if account not in self._busy]:
            waiting = self._waiting[account]
            before = room
            while waiting and room:
                change = waiting[0]
                if change.keyed is not None:
                    key = change.keyed.key
                    same_key = self._waiting_keys[key]
                    if key in self._busy_keys or same_key[0] is not change:
                        break
                    same_key.popleft()
                    if not same_key:
                        del self._waiting_keys[key]
                    self._busy_keys.add(key)
                batch.append(waiting.popleft())
                room -= 1
            if not waiting:
                del self._waiting[account]
            if room < before:
                self._busy.add(account)
            if not room:
                break
        return batch

    async def _run(self, batch: list[_Change]) -> None:
        try:
            await self._send(batch)
        except BaseException:  # cancelled (shutdown): nobody must wait forever
            self._closed = True
            for change in [*batch, *(change for waiting in self._waiting.values() for change in waiting)]:
                if not change.answer.done():
                    change.answer.set_exception(DatabaseUnavailable("The service is shutting down; retry."))
            self._waiting.clear()
            self._waiting_keys.clear()
            raise
        finally:
            self._in_flight.discard(asyncio.current_task())
            self._busy.difference_update({change.account for change in batch})
            self._busy_keys.difference_update([change.keyed.key for change in batch if change.keyed is not None])
        if not self._closed:
            self._send_what_can_go()

    async def _send(self, batch: list[_Change]) -> None:
        """Apply ``batch`` (one statement, or one transaction when it holds keys) and settle every
        change's ``answer`` after the commit; never raises (except on cancellation)."""
        self.batches_sent += 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            if any(change.keyed for change in batch):
                settled = await retry_transaction(lambda: self._apply_keyed_batch(batch))
            else:
                async with self._database.pooled_connection() as conn:
                    settled = list(zip(batch, await self._apply(conn, batch)))
        except Exception as error:
            if not isinstance(error, (Problem, *DATABASE_UNAVAILABLE_ERRORS)):
                log.exception("batch of %d changes failed", len(batch))
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
    async def _apply(conn: asyncpg.Connection, changes: list[_Change]) -> list[AppliedChange | Problem]:
        """One ``apply_balance_changes()`` call: each change's applied result or refusal, in order."""
        return await apply_balance_changes(conn, [(change.account, change.change) for change in changes])

    async def _apply_keyed_batch(self, batch: list[_Change]) -> list[tuple[_Change, object]]:
        """The transaction of a batch holding keyed changes (module docstring); returns what each
        change is to be answered, to be settled once it has committed."""
        keyed = [change for change in batch if change.keyed is not None]  # no key twice (_next_batch)
        settled: list[tuple[_Change, object]] = []
        async with self._database.pooled_connection() as conn, conn.transaction():
            keys = [change.keyed.key for change in keyed]
            claimed = {row["key"] for row in await conn.fetch(
                CLAIM_KEYS, keys, [change.keyed.fingerprint for change in keyed], self._key_retention)}
            stored = {row["key"]: row for row in await conn.fetch(
                READ_STORED_MANY, [key for key in keys if key not in claimed])} if len(claimed) < len(keys) else {}
            applying = []
            for change in batch:
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
            for change, result in zip(applying, await self._apply(conn, applying)):
                if change.keyed is None:
                    settled.append((change, result))
                else:
                    outcome = change.render(result)
                    outcomes.append((change.keyed.key, outcome))
                    settled.append((change, (outcome, False)))
            if outcomes:
                await conn.execute(STORE_OUTCOMES, *map(list, zip(*(
                    (key, o.status, o.body, o.content_type, o.location) for key, o in outcomes))))
        return settled
