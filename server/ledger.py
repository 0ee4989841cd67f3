"""The SQL that reads and moves money, in one place.

Balances and amounts are integers in minor units (e.g. cents), stored as PostgreSQL ``bigint``.
Every function takes ``db``: an asyncpg pool, or a connection (inside a caller's transaction).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from .problems import BalanceOverflow, InsufficientFunds, UserNotFound

# Apply one signed change to one user's balance and append its ledger entry, as ONE statement
# (so one implicit transaction and one round trip).
#   $1 user id, $2 signed amount (and see the two forms below the statement)
#
# Why this is safe under concurrency, at PostgreSQL's default READ COMMITTED level (PostgreSQL
# docs, §13.2.1 "Read Committed Isolation Level"):
#   * The UPDATE takes the row lock on the user's row. A concurrent change to the same row makes
#     it wait until that transaction commits or aborts.
#   * After the wait, PostgreSQL re-evaluates the WHERE clause against the NEWEST version of the
#     row (not our snapshot's), and updates only if the new balance is still within 0..2^63-1. So
#     each change is checked and applied against the balance left by the one before it, while
#     holding the lock: no lost update, no overdraft, no read-then-write race.
#   * The check is written so that it cannot overflow ($2 is within +-(2^63-1)): a credit needs
#     balance <= 2^63-1 - $2, a debit balance >= -$2, i.e. 0 <= balance + $2 <= 2^63-1. A balance
#     past bigint's range is thus refused by the WHERE clause instead of raising SQLSTATE 22003,
#     which would abort the caller's transaction.
#   * The ledger INSERT reads the UPDATE's RETURNING row in the same statement (a data-modifying
#     CTE, §7.8.4), so the entry commits together with the change or not at all, and records the
#     exact balance after it.
#   * CHECK (balance >= 0) on users is the last line of defence.
# When the WHERE clause rejects the row, nothing is written; `user_exists` then tells "no such
# user" (404) from a refusal (409): insufficient funds for a debit, overflow for a credit.
_BALANCE_CHANGE = """
WITH changed AS (
    UPDATE users
       SET balance = balance + $2, updated_at = now()
     WHERE id = $1
       AND CASE WHEN $2::bigint > 0 THEN balance <= 9223372036854775807 - $2::bigint
                ELSE balance >= -$2::bigint END  -- ::bigint: without it $2 is typed int4 from "> 0"
 RETURNING id, balance
), entry AS (
    INSERT INTO ledger_entries (user_id, amount, balance_after, kind, description, idempotency_key)
    SELECT id, $2, balance, {kind}, {description}, {idempotency_key} FROM changed
 RETURNING id, balance_after
)
SELECT (SELECT balance_after FROM entry)           AS balance,
       (SELECT id FROM entry)                      AS entry_id,
       EXISTS (SELECT 1 FROM users WHERE id = $1)  AS user_exists
"""
# The statement above in its two forms: every kind ($3 kind, $4 description, $5 idempotency key),
# and PATCH /api/balance's hot path, where those are constants and only $1, $2 travel.
APPLY_BALANCE_CHANGE = _BALANCE_CHANGE.format(kind="$3", description="$4", idempotency_key="$5")
APPLY_ADJUSTMENT = _BALANCE_CHANGE.format(kind="'adjustment'", description="NULL", idempotency_key="NULL")

TRANSFER_FUNDS = "SELECT * FROM transfer_funds($1, $2, $3, $4, $5)"

READ_ACCOUNT = "SELECT id, balance, updated_at FROM users WHERE id = $1"

CREATE_USER = "INSERT INTO users DEFAULT VALUES RETURNING id, balance, updated_at"

# A transfer with the balances its two ledger entries recorded.
READ_TRANSFER = """
SELECT t.id, t.from_user_id, t.to_user_id, t.amount, t.description, t.created_at,
       sent.balance_after AS from_balance, received.balance_after AS to_balance
  FROM transfers t
  JOIN ledger_entries sent     ON sent.transfer_id = t.id     AND sent.kind = 'transfer_out'
  JOIN ledger_entries received ON received.transfer_id = t.id AND received.kind = 'transfer_in'
 WHERE t.id = $1
"""

# Keyset pagination, newest first: entries of $1 with id below $2, served by the index
# ledger_entries (user_id, id) without scanning the user's older entries or anyone else's.
READ_HISTORY = """
SELECT id, amount, balance_after, kind, description, idempotency_key, transfer_id, created_at
  FROM ledger_entries
 WHERE user_id = $1 AND id < $2
 ORDER BY id DESC
 LIMIT $3
"""

USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)"

Db = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class Account:
    """A user's balance (minor units) as of ``updated_at`` (the last change, UTC)."""

    user_id: int
    balance: int
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """An accepted change: the user's new balance and the id of its ledger entry."""

    user_id: int
    balance: int
    entry_id: int


@dataclass(frozen=True, slots=True)
class Transfer:
    """A completed transfer and the balances right after it (minor units)."""

    transfer_id: int
    from_user_id: int
    to_user_id: int
    amount: int
    description: str | None
    created_at: dt.datetime
    from_balance: int
    to_balance: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One row of a user's history: ``amount`` signed, ``balance_after`` in minor units."""

    entry_id: int
    amount: int
    balance_after: int
    kind: str
    description: str | None
    idempotency_key: str | None
    transfer_id: int | None
    created_at: dt.datetime


async def apply_balance_change(
    db: Db, user_id: int, amount: int, kind: str = "adjustment",
    description: str | None = None, idempotency_key: str | None = None,
) -> AppliedChange:
    """Add ``amount`` (signed, non-zero, minor units) to user ``user_id``'s balance.

    ``kind`` is the ledger entry's kind (``adjustment``, ``credit`` or ``debit``). Raises
    :class:`~server.problems.UserNotFound` (404), :class:`~server.problems.InsufficientFunds` (409)
    when the balance would drop below zero, :class:`~server.problems.BalanceOverflow` (409) when it
    would pass 2^63-1; in each case nothing is written, and no database error is raised.
    """
    if kind == "adjustment" and description is None and idempotency_key is None:
        row = await db.fetchrow(APPLY_ADJUSTMENT, user_id, amount)
    else:
        row = await db.fetchrow(APPLY_BALANCE_CHANGE, user_id, amount, kind, description, idempotency_key)
    if row["balance"] is not None:
        return AppliedChange(user_id, row["balance"], row["entry_id"])
    if not row["user_exists"]:
        raise UserNotFound(user_id)
    if amount > 0:
        raise BalanceOverflow(user_id, amount)
    raise InsufficientFunds(user_id, amount)


async def transfer_funds(
    db: Db, from_user_id: int, to_user_id: int, amount: int,
    description: str | None = None, idempotency_key: str | None = None,
) -> Transfer:
    """Move ``amount`` (> 0, minor units) between two different users, atomically.

    Raises :class:`~server.problems.UserNotFound` naming the missing side (``role`` ``from`` or
    ``to``), :class:`~server.problems.InsufficientFunds` for the sender, or
    :class:`~server.problems.BalanceOverflow` for the receiver; nothing is written then.
    """
    row = await db.fetchrow(TRANSFER_FUNDS, from_user_id, to_user_id, amount, description, idempotency_key)
    outcome = row["outcome"]
    if outcome == "transferred":
        return Transfer(row["transfer_id"], from_user_id, to_user_id, amount, description,
                        row["created_at"], row["from_balance"], row["to_balance"])
    if outcome == "sender_not_found":
        raise UserNotFound(from_user_id, role="from")
    if outcome == "receiver_not_found":
        raise UserNotFound(to_user_id, role="to")
    if outcome == "insufficient_funds":
        raise InsufficientFunds(from_user_id, -amount)
    raise BalanceOverflow(to_user_id, amount)


async def read_account(db: Db, user_id: int) -> Account:
    """Return user ``user_id``'s :class:`Account`; raises :class:`~server.problems.UserNotFound`."""
    row = await db.fetchrow(READ_ACCOUNT, user_id)
    if row is None:
        raise UserNotFound(user_id)
    return Account(user_id=row["id"], balance=row["balance"], updated_at=row["updated_at"])


async def create_user(db: Db) -> Account:
    """Open a new user with balance 0 (no ledger entry: the sum of no entries is 0)."""
    row = await db.fetchrow(CREATE_USER)
    return Account(user_id=row["id"], balance=row["balance"], updated_at=row["updated_at"])


async def read_transfer(db: Db, transfer_id: int) -> Transfer | None:
    """Return transfer ``transfer_id`` with the balances its entries recorded, or None."""
    row = await db.fetchrow(READ_TRANSFER, transfer_id)
    if row is None:
        return None
    return Transfer(row["id"], row["from_user_id"], row["to_user_id"], row["amount"], row["description"],
                    row["created_at"], row["from_balance"], row["to_balance"])


async def read_history(db: Db, user_id: int, before_entry_id: int, limit: int) -> list[LedgerEntry]:
    """Up to ``limit`` entries of ``user_id`` with id < ``before_entry_id``, newest first.

    Raises :class:`~server.problems.UserNotFound` when the user does not exist.
    """
    rows = await db.fetch(READ_HISTORY, user_id, before_entry_id, limit)
    if not rows and not await db.fetchval(USER_EXISTS, user_id):
        raise UserNotFound(user_id)
    return [LedgerEntry(*row.values()) for row in rows]
