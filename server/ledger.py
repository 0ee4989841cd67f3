"""The SQL that reads and moves money, in one place.

Balances and amounts are integers in minor units (e.g. cents), stored as PostgreSQL ``bigint``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from .problems import BalanceOverflow, InsufficientFunds, UserNotFound

# Apply one signed change to one user's balance and append its ledger entry, as ONE statement
# (so one implicit transaction and one round trip).
#
# Why this is safe under concurrency, at PostgreSQL's default READ COMMITTED level (PostgreSQL
# docs, §13.2.1 "Read Committed Isolation Level"):
#   * The UPDATE takes the row lock on the user's row. A concurrent change to the same row makes
#     it wait until that transaction commits or aborts.
#   * After the wait, PostgreSQL re-evaluates the WHERE clause against the NEWEST version of the
#     row (not our snapshot's), and updates only if `balance + $2 >= 0` still holds. So each change
#     is checked and applied against the balance left by the one before it, while holding the
#     lock: no lost update, no overdraft, no read-then-write race.
#   * The ledger INSERT reads the UPDATE's RETURNING row in the same statement (a data-modifying
#     CTE, §7.8.4), so the entry commits together with the change or not at all, and records the
#     exact balance after it.
#   * CHECK (balance >= 0) on users is the last line of defence.
# When the WHERE clause rejects the row, nothing is written; `user_exists` then tells "no such
# user" (404) from "insufficient funds" (409). `balance + $2` past bigint's range raises SQLSTATE
# 22003 and aborts the whole statement.
APPLY_BALANCE_CHANGE = """
WITH changed AS (
    UPDATE users
       SET balance = balance + $2, updated_at = now()
     WHERE id = $1
       AND balance + $2 >= 0
 RETURNING id, balance
), entry AS (
    INSERT INTO ledger_entries (user_id, amount, balance_after, kind)
    SELECT id, $2, balance, 'adjustment' FROM changed
 RETURNING balance_after
)
SELECT (SELECT balance_after FROM entry)           AS balance,
       EXISTS (SELECT 1 FROM users WHERE id = $1)  AS user_exists
"""

READ_ACCOUNT = "SELECT id, balance, updated_at FROM users WHERE id = $1"


@dataclass(frozen=True, slots=True)
class Account:
    """A user's balance (minor units) as of ``updated_at`` (the last change, UTC)."""

    user_id: int
    balance: int
    updated_at: dt.datetime


async def apply_balance_change(db: asyncpg.Pool | asyncpg.Connection, user_id: int, amount: int) -> int:
    """Add ``amount`` (signed, non-zero, minor units) to user ``user_id``'s balance; return the new balance.

    Raises :class:`~server.problems.UserNotFound` (404), :class:`~server.problems.InsufficientFunds`
    (409) when the balance would drop below zero, :class:`~server.problems.BalanceOverflow` (409)
    when it would pass bigint's maximum; in each case nothing is written.
    """
    try:
        row = await db.fetchrow(APPLY_BALANCE_CHANGE, user_id, amount)
    except asyncpg.NumericValueOutOfRangeError:
        raise BalanceOverflow(user_id, amount) from None
    if row["balance"] is not None:
        return row["balance"]
    if not row["user_exists"]:
        raise UserNotFound(user_id)
    raise InsufficientFunds(user_id, amount)


async def read_account(db: asyncpg.Pool | asyncpg.Connection, user_id: int) -> Account:
    """Return user ``user_id``'s :class:`Account`; raises :class:`~server.problems.UserNotFound`."""
    row = await db.fetchrow(READ_ACCOUNT, user_id)
    if row is None:
        raise UserNotFound(user_id)
    return Account(user_id=row["id"], balance=row["balance"], updated_at=row["updated_at"])
