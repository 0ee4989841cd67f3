"""Batching of concurrent money movements across accounts: one batcher per worker, for every kind.

Every change commits in a transaction, and a commit waits for its WAL to reach disk; a change to an
account also waits for that account's row lock. So instead of one statement and one commit per
request, what arrives while batches are in flight is collected, and when a batch returns, what
waits (at most ``BATCH_MAX_SIZE`` items, whatever accounts they touch) goes to PostgreSQL as ONE
call: one transaction, one commit. At most ``BATCH_MAX_IN_FLIGHT`` batches are in flight at once.
The machinery is :class:`Batcher`; the worker's one batcher, :class:`LedgerBatcher`, takes every
single money movement: ``PATCH /api/balance``, credits and debits (balance changes: transfers
between an account and its asset's system account, whose row is never locked), ``POST
/api/transfers`` (plain or a hold) and the post or void of a hold. A batch is one call of
``apply_balance_changes()`` (server/ledger/sql/balance_changes.sql) when it holds only balance
changes, of ``apply_transfer_batch()`` (transfer_batches.sql, not atomic: each item accepted or
refused on its own, set-based when all are plain transfers that pass) when it holds no balance
change, and of ``apply_ledger_batch()`` (ledger_batches.sql) when it mixes them: the items in
arrival order, each run of one kind through that kind's function, after every account of the
batch is locked.

``BATCHING=false`` is the same code path with batches of one (``max_batch=1``).

* A lone item goes out at once, as a batch of one: no timer, no added latency without contention.
* Items have *lanes*: a balance change its account; a transfer its two sides and its reference;
  a post or void its hold (and the hold's accounts, when known); a keyed item also its
  Idempotency-Key (:class:`LedgerBatcher` says which). Per
  lane, order is arrival order: a batch takes an item only when it is the oldest waiting one of
  each of its lanes and none of them is in a batch still in flight (it waits for the next batch),
  so batches in flight never share a lane, and items that share one go out in the order they
  came, whatever their kind. An account named by user before a batch has shown which account it
  is, and the accounts of a hold this batcher did not make, are lanes the batcher cannot know
  yet: such items may be in a batch in flight beside one on the same account; PostgreSQL's row
  locks, always taken in ascending account id order by every function that moves money, then
  apply one batch after the other, without deadlock (linearizable: each request takes effect at
  one point between its arrival and its answer).
* Semantics are those of applying the items one at a time in arrival order: the SQL functions lock
  the accounts in id order and walk the items in array order, accepting an item iff it passes the
  same checks as on its own; every request is answered with its own outcome, after its batch has
  committed. If the batch fails (connection lost, timeout), every request in it gets the error
  (503): the batch was one transaction, so nothing of it committed.
* Batching is per process: with several workers each batches its own requests; row locks in
  account id order serialise batches that share an account, without deadlock.
* Items with an ``Idempotency-Key`` are batched too. A batch holding any is one transaction of
  four statements: claim the keys (in key order), read the stored outcomes of keys already used
  (a replay, or 422 ``idempotency_key_reused``), apply the items of the claimed keys and the
  unkeyed ones in one call, store the outcomes of the claimed keys; then commit, then answer. A key
  is a lane that takes at most one item per batch, so a repeated key finds the first one's stored
  outcome. Deadlocks and serialization failures retry the whole batch
  (:func:`server.ledger.idempotency.retry_transaction`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from server.ledger.api_keys import refused_keys
from server.ledger.idempotency import (CLAIM_KEYS, READ_STORED_MANY, STORE_OUTCOMES, KeyedRequest, KeyVanished, Outcome,
                                       retry_transaction, stored_outcome)
from server.ledger.moving_money import apply_balance_changes, apply_ledger_batch, apply_transfer_batch
from server.ledger.records import AccountRef, AppliedChange, BalanceChangeOrder, ResolvePending, Transfer, TransferOrder
from server.problems import DATABASE_UNAVAILABLE_ERRORS, DatabaseUnavailable, Problem, Unauthorized
from server.running.database import Database

log = logging.getLogger(__name__)

Order = TypeVar("Order")  # what an item asks for: a BalanceChangeOrder on an account, a TransferOrder...
Result = TypeVar("Result")  # what applying it gives: an AppliedChange, a Transfer

# How a keyed item's result (what it made, or its refusal) becomes the response stored under its key.
Render = Callable[[object], Outcome]


@dataclass(frozen=True, slots=True)
class _KeyLane:
    """An Idempotency-Key as a lane: at most one item per batch."""

    key: str


@dataclass(frozen=True, slots=True)
class _HoldLane:
    """A pending transfer as a lane: its post or void."""

    transfer_id: int


@dataclass(slots=True)
class _Item:
    order: object
    lanes: tuple[Hashable, ...]  # distinct; a keyed item's _KeyLane last
    answer: asyncio.Future  # the result; for a keyed item (Outcome, replayed)
    keyed: KeyedRequest | None = None
    render: Render | None = None


class Batcher(Generic[Order, Result]):
    """Collects concurrent items, whatever their accounts, and applies each collection in one call
    (module docstring). Subclasses say how a batch is applied (:meth:`_apply`).

    ``max_batch`` bounds how many items one call carries, ``max_in_flight`` how many batches are in
    flight at once (each holds a pool connection). ``overlap_after`` (seconds) is how long every
    batch in flight must have been in flight before a further one goes out beside them: a batch
    that returns sooner is followed by one batch of all that waited, and one that is held up (a
    row lock, a slow statement) is overlapped once it has taken that long, so other accounts'
    requests keep moving; 0 sends a batch whenever a slot is free (docs/concurrency.md, "Batching": one batch
    in flight made 1.3-1.4 x the transfers of two on 2 cores, once plans were right). Items
    waiting here count as pending requests of ``database`` (``DB_MAX_PENDING``), like requests
    waiting for a connection.
    """

    def __init__(self, database: Database, max_batch: int,
                 key_retention: dt.timedelta = dt.timedelta(days=1), max_in_flight: int = 8,
                 overlap_after: float = 0.0):
        """``key_retention`` is how long an idempotency key stays claimed (``IDEMPOTENCY_KEY_RETENTION``)."""
        self._database = database
        self._key_retention = key_retention
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._overlap_after = overlap_after
        # batches in flight for less than overlap_after, each with the timer that ends that
        self._young: dict[asyncio.Task, asyncio.TimerHandle] = {}
        self.batches_sent = 0
        # lane -> its items not yet sent, in arrival order; lanes in the order their first waiting
        # item arrived
        self._waiting: dict[Hashable, deque[_Item]] = {}
        self._busy: set[Hashable] = set()  # lanes in a batch in flight
        self._in_flight: set[asyncio.Task] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it serves, from the first request

    async def _submit(self, order: Order, lanes: tuple[Hashable, ...], keyed: KeyedRequest | None = None,
                      render: Render | None = None):
        """Queue ``order`` on its ``lanes`` (an Idempotency-Key's added) and return its answer."""
        with self._database.admission():
            if self._closed:
                raise DatabaseUnavailable("The service is shutting down; retry.")
            if keyed is not None:
                lanes = (*lanes, _KeyLane(keyed.key))
            if self._loop is None:  # Python 3.11's get_running_loop() makes a getpid() system call
                self._loop = asyncio.get_running_loop()
            item = _Item(order, lanes, self._loop.create_future(), keyed, render)
            for lane in lanes:
                queue = self._waiting.get(lane)
                if queue is None:
                    self._waiting[lane] = deque((item,))
                else:
                    queue.append(item)
            # Whenever nothing can go (every slot taken, or all that waits is held back by what is
            # in flight), an item on a busy lane changes nothing: its batch sends it when it returns.
            if len(self._in_flight) < self._max_in_flight and not self._young and self._busy.isdisjoint(lanes):
                self._send_what_can_go()
            return await item.answer

    def _send_what_can_go(self) -> None:
        """Start batches, each from a task of its own, while fewer than ``max_in_flight`` are in
        flight, none of them for less than ``overlap_after``, and items whose lanes are all free
        wait."""
        while len(self._in_flight) < self._max_in_flight and not self._young:
            batch = self._next_batch()
            if not batch:
                return
            task = asyncio.create_task(self._run(batch))
            self._in_flight.add(task)
            if self._overlap_after and self._max_in_flight > 1:
                self._young[task] = self._loop.call_later(self._overlap_after, self._grown_up, task)

    def _grown_up(self, task: asyncio.Task) -> None:
        """``task``'s batch has been in flight for ``overlap_after``: a further batch may go beside it."""
        self._young.pop(task, None)
        if not self._closed:
            self._send_what_can_go()

    def _next_batch(self) -> list[_Item]:
        """Take up to ``max_batch`` waiting items, lanes with the oldest waiting item first, and
        mark their lanes busy.

        From each free lane, items are taken from the front while the front item is also the front
        of each of its other lanes and none of them is busy or done for this batch (a key takes
        one item per batch); a lane stops at the first item it cannot give. So items sharing a
        lane go out in arrival order, and the oldest waiting item can always go once what it
        waits for has returned.
        """
        batch: list[_Item] = []
        room = self._max_batch
        done: set[Hashable] = set()  # lanes that give nothing more to this batch
        taken: set[Hashable] = set()
        for lane in list(self._waiting):
            if lane in self._busy or lane in done or lane not in self._waiting:
                continue
            waiting = self._waiting[lane]
            while waiting and room:
                item = waiting[0]
                if len(item.lanes) == 1:  # this lane's alone (a balance change without a key)
                    waiting.popleft()
                    taken.add(lane)
                else:
                    if any(other in self._busy or other in done or self._waiting[other][0] is not item
                           for other in item.lanes):
                        break
                    for other in item.lanes:
                        queue = self._waiting[other]
                        queue.popleft()
                        if other != lane and not queue:
                            del self._waiting[other]
                        taken.add(other)
                        if isinstance(other, _KeyLane):
                            done.add(other)
                batch.append(item)
                room -= 1
            if not waiting:
                del self._waiting[lane]
            done.add(lane)
            if not room:
                break
        self._busy |= taken
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        try:
            await self._send(batch)
        except BaseException:  # cancelled (shutdown): nobody must wait forever
            self._closed = True
            waiting = {id(item): item for queue in self._waiting.values() for item in queue}
            for item in [*batch, *waiting.values()]:
                if not item.answer.done():
                    item.answer.set_exception(DatabaseUnavailable("The service is shutting down; retry."))
            self._waiting.clear()
            raise
        finally:
            task = asyncio.current_task()
            self._in_flight.discard(task)
            if (timer := self._young.pop(task, None)) is not None:
                timer.cancel()
            self._busy.difference_update([lane for item in batch for lane in item.lanes])
        if not self._closed:
            self._returned()
            self._send_what_can_go()

    async def _send(self, batch: list[_Item]) -> None:
        """Apply ``batch`` (one call, or one transaction when it holds keys) and settle every item's
        ``answer`` after the commit; never raises (except on cancellation)."""
        self.batches_sent += 1
        try:
            if any(item.keyed for item in batch):
                settled = await retry_transaction(lambda: self._apply_keyed_batch(batch))
            else:
                async with self._database.pooled_connection() as conn:
                    settled = list(zip(batch, await self._apply(conn, [item.order for item in batch])))
        except Exception as error:
            if not isinstance(error, (Problem, *DATABASE_UNAVAILABLE_ERRORS)):
                log.exception("batch of %d items failed", len(batch))
            if isinstance(error, DATABASE_UNAVAILABLE_ERRORS):
                error = DatabaseUnavailable()
            for item in batch:  # one transaction: none of it committed
                if not item.answer.done():
                    item.answer.set_exception(error)
            return
        for item, result in settled:
            if isinstance(result, BaseException):
                item.answer.set_exception(result)
            else:
                item.answer.set_result(result)

    async def _apply(self, conn: asyncpg.Connection, orders: list[Order]) -> Sequence[Result | Problem]:
        """Apply ``orders`` in order in one call on ``conn``: each one's result or refusal, in order."""
        raise NotImplementedError

    def _returned(self) -> None:
        """Called after a batch has returned and its lanes are free, before the next batches go."""

    async def _apply_keyed_batch(self, batch: list[_Item]) -> list[tuple[_Item, object]]:
        """The transaction of a batch holding keyed items (module docstring); returns what each
        item is to be answered, to be settled once it has committed."""
        keyed = [item for item in batch if item.keyed is not None]  # no key twice (_next_batch)
        settled: list[tuple[_Item, object]] = []
        async with self._database.pooled_connection() as conn, conn.transaction():
            keys = [item.keyed.key for item in keyed]
            claimed = {row["key"] for row in await conn.fetch(
                CLAIM_KEYS, keys, [item.keyed.fingerprint for item in keyed], self._key_retention)}
            stored = {row["key"]: row for row in await conn.fetch(
                READ_STORED_MANY, [key for key in keys if key not in claimed])} if len(claimed) < len(keys) else {}
            applying = []
            for item in batch:
                if item.keyed is None or item.keyed.key in claimed:
                    applying.append(item)
                elif item.keyed.key not in stored:
                    raise KeyVanished()  # expired and purged between claim and read: retry
                else:
                    try:
                        settled.append((item, (stored_outcome(stored[item.keyed.key], item.keyed.fingerprint,
                                                              item.keyed.key), True)))
                    except Problem as reused:
                        settled.append((item, reused))
            outcomes = []
            for item, result in zip(applying, await self._apply(conn, [item.order for item in applying])):
                if item.keyed is None:
                    settled.append((item, result))
                else:
                    outcome = item.render(result)
                    outcomes.append((item.keyed.key, outcome))
                    settled.append((item, (outcome, False)))
            if outcomes:
                await conn.execute(STORE_OUTCOMES, *map(list, zip(*(
                    (key, o.status, o.body, o.content_type, o.location) for key, o in outcomes))))
        return settled


def _is_change(order) -> bool:
    """Whether a :class:`LedgerBatcher` item is a balance change ``(AccountRef, BalanceChangeOrder)``
    (else ``(TransferOrder | ResolvePending, idempotency key)``)."""
    return type(order[1]) is BalanceChangeOrder


class LedgerBatcher(Batcher[tuple, AppliedChange | Transfer]):
    """The one batcher of a worker: every single money movement, balance changes (``PATCH
    /api/balance``, credits, debits) and transfers (plain or a hold), posts and voids, in batches
    of any mix, each batch ONE call: ``apply_balance_changes()`` when it holds only
    changes, ``apply_transfer_batch()`` (not atomic) when it holds only transfers, else
    ``apply_ledger_batch()``, which applies the runs of each kind, in order, with those two.

    Lanes: an account, as :class:`AccountRef` (``AccountRef(id)`` when named by id); a change's
    account, a transfer's two sides and its reference (two transfers with one reference keep their
    order); a post or void its hold and, when this batcher made the hold (remembered for the last
    ``remembered`` holds), the hold's two accounts, so that it keeps its place among the changes
    and transfers of those accounts. An account named by user (``AccountRef(None, user, asset)``)
    is a lane of its own until a batch has shown which account it is; from then on (once nothing
    waits or is in flight on the user's lane, so that its items keep their order) it is its
    account's lane (the last ``remembered`` users' accounts are kept).
    """

    def __init__(self, database: Database, max_batch: int,
                 on_batch: Callable[[int, int], object] | None = None,
                 key_retention: dt.timedelta = dt.timedelta(days=1), max_in_flight: int = 8,
                 remembered: int = 100_000, overlap_after: float = 0.0):
        """``on_batch(changes, transfers)`` is called for every call sent to PostgreSQL, with how
        many balance changes and how many transfers, posts and voids it carries (e.g. metrics
        histograms)."""
        super().__init__(database, max_batch, key_retention, max_in_flight, overlap_after)
        self._on_batch = on_batch
        self._hold_accounts: OrderedDict[int, tuple[int, int]] = OrderedDict()  # hold id -> its accounts
        self._user_accounts: dict[AccountRef, AccountRef] = {}  # AccountRef(None, user, asset) -> AccountRef(id)
        self._seen_user_accounts: dict[AccountRef, int] = {}  # shown by batches, not yet in _user_accounts
        self._remembered = remembered

    def _account_lane(self, ref: AccountRef) -> AccountRef:
        if ref.account_id is None:
            return self._user_accounts.get(ref, ref)
        return ref if ref.user_id is None and ref.asset_id is None else AccountRef(ref.account_id)

    async def apply_change(self, ref: AccountRef, change: BalanceChangeOrder) -> AppliedChange:
        """Apply ``change`` to the account ``ref``.

        Returns the :class:`AppliedChange`; raises its refusal (:class:`UserNotFound`,
        :class:`AccountNotFound` (404), :class:`InsufficientFunds`, :class:`MaxBalanceExceeded`,
        :class:`BalanceOverflow`, :class:`AccountFrozen`, :class:`AccountClosed` (409),
        :class:`SystemAccount` (422); see :func:`server.ledger.moving_money.balance_change_refusal`),
        :class:`ServiceOverloaded` or :class:`DatabaseUnavailable` (503).
        """
        return await self._submit((ref, change), (self._account_lane(ref),))

    async def apply_change_keyed(self, ref: AccountRef, change: BalanceChangeOrder, keyed: KeyedRequest,
                                 render: Render) -> tuple[Outcome, bool]:
        """Apply a change sent with an Idempotency-Key: returns ``(outcome, replayed)``, the outcome
        being ``render(result)`` stored under the key with the change, or the one stored before
        (``replayed``). Raises :class:`~server.problems.IdempotencyKeyReused` (422) when the key was
        used for another request, and the 503 problems as :meth:`apply_change`."""
        return await self._submit((ref, change._replace(idempotency_key=keyed.key)), (self._account_lane(ref),),
                                  keyed, render)

    async def apply_transfer(self, order: TransferOrder | ResolvePending) -> Transfer:
        """Make the transfer or hold ``order``, or post or void the hold it names. Returns the
        :class:`Transfer` (made, found by its reference, or the hold as it now is); raises its
        refusal as :func:`server.ledger.moving_money.apply_transfer_batch` gives it (e.g.
        :class:`InsufficientFunds`, :class:`ReferenceReused`, :class:`PendingTransferExpired`), and
        the 503 problems as :meth:`apply_change`."""
        return await self._submit((order, None), self._transfer_lanes(order))

    async def apply_transfer_keyed(self, order: TransferOrder | ResolvePending, keyed: KeyedRequest,
                                   render: Render) -> tuple[Outcome, bool]:
        """As :meth:`apply_change_keyed`, for ``order``; a transfer made records the key on its
        ledger entries."""
        return await self._submit((order, keyed.key), self._transfer_lanes(order), keyed, render)

    def _transfer_lanes(self, order: TransferOrder | ResolvePending) -> tuple[Hashable, ...]:
        if isinstance(order, ResolvePending):
            accounts = self._hold_accounts.get(order.transfer_id, ())
            return (_HoldLane(order.transfer_id), *(AccountRef(account) for account in accounts))
        lanes = dict.fromkeys((self._account_lane(order.source), self._account_lane(order.destination)))
        if order.reference is not None:
            lanes["reference", order.reference] = None
        return tuple(lanes)

    async def _apply(self, conn, orders):
        """One call (class docstring); remembers the accounts of the holds made and of the users
        named. Balance changes sent with API keys (admitted on a remembered grant,
        server/http/bearer_auth.py) are applied only if their keys are still valid as of the
        statement, checked in it (a batch of changes only); when one is not, or the batch mixes
        kinds, a look-up of the keys first refuses (401) the changes of those revoked or expired
        and the rest are applied. Every check runs after each change in its batch arrived, so no
        change sent after its key's revoke committed is applied; one sent before may be (it was in
        flight)."""
        is_change = [_is_change(order) for order in orders]
        changes = sum(is_change)
        if self._on_batch is not None:
            self._on_batch(changes, len(orders) - changes)
        key_ids = sorted({order[1].key_id for order, change in zip(orders, is_change)
                          if change and order[1].key_id is not None})
        if not key_ids:
            return await self._apply_admitted(conn, orders, is_change)
        if changes == len(orders):
            results = await self._apply_admitted(conn, orders, is_change, if_keys_valid=True)
            if results is not None:
                return results
        refused = await refused_keys(conn, key_ids)
        verdicts = [Unauthorized(credentials_sent=True) if change and order[1].key_id in refused else None
                    for order, change in zip(orders, is_change)]
        kept = [(order, change) for order, change, verdict in zip(orders, is_change, verdicts) if verdict is None]
        results = iter(await self._apply_admitted(conn, *map(list, zip(*kept))) if kept else [])
        return [verdict if verdict is not None else next(results) for verdict in verdicts]

    async def _apply_admitted(self, conn, orders, is_change: list[bool], if_keys_valid: bool = False):
        """The one call for ``orders`` (``is_change``: per order, whether it is a balance change);
        with ``if_keys_valid`` (a batch of changes only), None when one of their keys is no longer
        valid (nothing applied)."""
        changes = sum(is_change)
        if changes == len(orders):
            results = await apply_balance_changes(conn, orders, if_keys_valid)
            if results is None:
                return None
        elif not changes:
            _, results = await apply_transfer_batch(conn, [order for order, _ in orders], atomic=False,
                                                    idempotency_keys=[key for _, key in orders])
        else:
            results = await apply_ledger_batch(conn, [order if change else order[0]
                                                      for order, change in zip(orders, is_change)],
                                               [None if change else order[1] for order, change in zip(orders, is_change)])
        seen = self._seen_user_accounts
        for (order, _), result in zip(orders, results):
            if isinstance(result, AppliedChange):
                if order.account_id is None and order not in self._user_accounts:
                    seen[order] = result.account_id
            elif isinstance(result, Transfer):
                if result.status == "pending" and not result.replayed:
                    self._hold_accounts[result.transfer_id] = (result.from_account_id, result.to_account_id)
                    if len(self._hold_accounts) > self._remembered:
                        self._hold_accounts.popitem(last=False)
                if isinstance(order, TransferOrder):
                    for side, account_id in ((order.source, result.from_account_id),
                                             (order.destination, result.to_account_id)):
                        if side.account_id is None and side not in self._user_accounts:
                            seen[side] = account_id
        return results

    def _returned(self) -> None:
        """After a batch's lanes are free: a user named is its account's lane from now on, if
        nothing waits or is in flight on the user's lane (else a later batch shows it again)."""
        for ref, account_id in self._seen_user_accounts.items():
            if ref not in self._busy and ref not in self._waiting:
                self._user_accounts[ref] = AccountRef(account_id)
                if len(self._user_accounts) > self._remembered:
                    del self._user_accounts[next(iter(self._user_accounts))]
        self._seen_user_accounts.clear()
