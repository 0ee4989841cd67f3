"""Accounts and users: opened, read, given limits, names and metadata, frozen, unfrozen, closed.

A change of an account's limits or status runs under its row lock (the UPDATE takes it), as the
ledger's functions lock it (server/ledger/sql/locking.sql), so a new limit is checked against a
balance no concurrent transfer can change before the commit.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal

from server.ledger.records import NOBODY, Actor, Asset, Db
from server.problems import (
    AccountClosed,
    AccountExists,
    AccountNotEmpty,
    AccountNotFound,
    LimitViolated,
    Problem,
    SystemAccount,
    UserNotFound,
)

IS_SYSTEM = "SELECT is_system FROM accounts WHERE id = $1"


async def account_is_system(db: Db, account_id: int) -> bool:
    """Whether ``account_id`` is a system account; raises :class:`AccountNotFound`."""
    is_system = await db.fetchval(IS_SYSTEM, account_id)
    if is_system is None:
        raise AccountNotFound(account_id)
    return is_system


# A system account's balance is not in its row (server/ledger/sql/locking.sql, rule 3) but in its
# asset's shards (system_balances.sql): their sum, as many rows as changes of it ever ran at once,
# whatever the size of the ledger (balance-api check recomputes it from the transfer rows).
_ACCOUNT_COLUMNS = """
SELECT a.id, s.code AS asset, a.user_id, a.name, a.is_system,
       CASE WHEN a.is_system THEN (SELECT coalesce(sum(b.balance), 0) FROM system_balance_shards b
                                    WHERE b.asset_id = a.asset_id)
            ELSE a.balance END AS balance,
       a.overdraft_limit, a.max_balance, a.status, a.metadata, a.created_at, a.updated_at,
       a.pending_debits - coalesce(x.debits, 0) AS pending_debits,
       a.pending_credits - coalesce(x.credits, 0) AS pending_credits, encode(a.head_hash, 'hex') AS head_hash
  FROM accounts a JOIN assets s ON s.id = a.asset_id
  -- holds whose timeout has passed count no more (holds.sql); looked up only when any is held
  LEFT JOIN LATERAL expired_holds(a.id) x ON a.pending_debits > 0 OR a.pending_credits > 0
"""
READ_ACCOUNT = _ACCOUNT_COLUMNS + " WHERE a.id = $1"
READ_USER_ACCOUNTS = _ACCOUNT_COLUMNS + " WHERE a.user_id = $1 ORDER BY a.id"
USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)"

# An unknown user inserts nothing rather than failing the foreign key: a failed statement would
# abort the caller's transaction, and one holding an Idempotency-Key must still store the refusal
# (found by Schemathesis: a 500 on POST /api/accounts with a key and an unknown userId). Every
# statement that opens or changes an account records its event in the same statement (the feed,
# server/ledger/sql/events.sql): the row it returns, under the row lock it took; and its audit row
# (server/ledger/sql/audit.sql), the actor's three parameters last.
CREATE_ACCOUNT = """
WITH opened AS (
    INSERT INTO accounts AS a (asset_id, user_id, name, overdraft_limit, max_balance, metadata, feed_position)
    SELECT $1, $2, $3, $4, $5, $6, feed_position_after(NULL)
     WHERE $2::bigint IS NULL OR EXISTS (SELECT 1 FROM users u WHERE u.id = $2)
    ON CONFLICT (user_id, asset_id) DO NOTHING
    RETURNING a
)
SELECT record_account_event('account.created', o.a),
       record_audit((o.a).feed_position, $7, $8, $9, 'account.created', 'account:' || (o.a).id, NULL,
                    account_document(o.a))
  FROM opened o
"""
ACCOUNT_OF_USER = "SELECT id FROM accounts WHERE user_id = $1 AND asset_id = $2"

# A new user and its default-asset account, in one statement.
CREATE_USER = """
WITH new_user AS (INSERT INTO users DEFAULT VALUES RETURNING id),
opened AS (
    INSERT INTO accounts AS a (asset_id, user_id, feed_position) SELECT $1, id, feed_position_after(NULL) FROM new_user
    RETURNING a
)
SELECT record_account_event('account.created', o.a),
       record_audit((o.a).feed_position, $2, $3, $4, 'account.created', 'account:' || (o.a).id, NULL,
                    account_document(o.a))
  FROM opened o
"""

# Limits and names change under the account's row lock (the UPDATE takes it and re-checks its WHERE
# clause on the newest row, PostgreSQL docs §13.2.1), so a new limit is checked against the balance
# no concurrent transfer can change before the commit. NULL parameters leave a field as it is;
# $6 says whether maxBalance was given (it may be set to null: no ceiling). Open holds count as in
# transfers: the stored sums less the holds that have expired (expired_holds(), holds.sql,
# looked up only when a sum is not 0), so from expiresAt on a hold no longer counts here either
# (found by tests/test_ledger_state_machine.py: an expired hold still refused a lower limit). The
# subqueries read the row being updated, so a re-check on a newer row version recomputes them. A
# closed account is not changed (closed is final); a concurrent close is seen by that re-check too.
# The row is locked first, as the UPDATE would lock it (FOR NO KEY UPDATE, locking.sql rule 1), so
# the audit log's `before` is the version the UPDATE changes (audit.sql); the UPDATE reads `before`,
# so that it runs after it.
UPDATE_ACCOUNT = """
WITH before AS MATERIALIZED (SELECT b FROM accounts b WHERE b.id = $1 FOR NO KEY UPDATE),
changed AS (
UPDATE accounts a
   SET name = coalesce($2, name), overdraft_limit = coalesce($3, overdraft_limit),
       max_balance = CASE WHEN $6 THEN $4 ELSE max_balance END, metadata = coalesce($5, metadata),
       updated_at = now(), feed_position = feed_position_after(a.feed_position)
  FROM before pre
 WHERE id = (pre.b).id AND NOT is_system AND status <> 'closed'
   AND balance - pending_debits
       + CASE WHEN pending_debits > 0 THEN (SELECT x.debits FROM expired_holds(a.id) x) ELSE 0 END
       >= -coalesce($3, overdraft_limit)
   AND (NOT $6 OR $4::bigint IS NULL OR balance + pending_credits
        - CASE WHEN pending_credits > 0 THEN (SELECT x.credits FROM expired_holds(a.id) x) ELSE 0 END <= $4)
RETURNING a
)
SELECT record_account_event('account.updated', c.a),
       record_audit((c.a).feed_position, $7, $8, $9, 'account.updated', 'account:' || (c.a).id, account_document(b.b),
                    account_document(c.a))
  FROM changed c, before b
"""

# freeze / unfreeze / close, under the row lock (as above): closing needs a zero balance, and a
# closed account stays closed. Audited as UPDATE_ACCOUNT.
SET_STATUS = """
WITH before AS MATERIALIZED (SELECT b FROM accounts b WHERE b.id = $1 FOR NO KEY UPDATE),
changed AS (
UPDATE accounts a SET status = $2, updated_at = now(), feed_position = feed_position_after(a.feed_position)
  FROM before pre
 WHERE id = (pre.b).id AND NOT is_system AND status <> 'closed'
   AND ($2 <> 'closed' OR (balance = 0 AND ((pending_debits = 0 AND pending_credits = 0)
        OR (SELECT x.debits = pending_debits AND x.credits = pending_credits FROM expired_holds(a.id) x))))
RETURNING a
)
SELECT record_account_event(x.action::event_type, c.a),
       record_audit((c.a).feed_position, $3, $4, $5, x.action, 'account:' || (c.a).id, account_document(b.b),
                    account_document(c.a))
  FROM changed c, before b,
       LATERAL (SELECT CASE $2 WHEN 'frozen' THEN 'account.frozen' WHEN 'open' THEN 'account.unfrozen'
                               ELSE 'account.closed' END AS action) x
"""
READ_STATE = "SELECT is_system, status, balance FROM accounts WHERE id = $1"


@dataclass(frozen=True, slots=True)
class Account:
    """An account of one asset. ``balance``, limits and pending sums in minor units;
    ``pending_debits`` / ``pending_credits`` are the amounts of its open holds as sender and receiver
    (expired ones excluded); ``max_balance`` None means no ceiling. ``head_hash`` is the hash of its
    last ledger entry as 64 hex digits (server/ledger/sql/entry_hashes.sql), None before its first."""

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
    head_hash: str | None = None

    @property
    def available(self) -> int:
        """What can be spent now: the balance minus the open holds on it (``pending_debits``)."""
        return self.balance - self.pending_debits


def _account(row) -> Account:
    balance = row["balance"]
    return Account(row["id"], row["asset"], row["user_id"], row["name"], row["is_system"],
                   int(balance) if isinstance(balance, Decimal) else balance, row["overdraft_limit"],
                   row["max_balance"], row["status"], json.loads(row["metadata"]), row["created_at"],
                   row["updated_at"], row["pending_debits"], row["pending_credits"], row["head_hash"])


def account_from_document(data: dict) -> Account:
    """An :class:`Account` from the row an account event stored (``to_jsonb`` of its ``accounts``
    row with the asset's code and the open holds' sums; server/ledger/sql/events.sql)."""
    return Account(data["id"], data["asset"], data["user_id"], data["name"], data["is_system"], data["balance"],
                   data["overdraft_limit"], data["max_balance"], data["status"], data["metadata"],
                   dt.datetime.fromisoformat(data["created_at"]), dt.datetime.fromisoformat(data["updated_at"]),
                   data["pending_debits"], data["pending_credits"], _hex(data.get("head_hash")))


def _hex(stored: str | None) -> str | None:
    """A ``bytea`` as ``to_jsonb`` writes it (``"\\x"`` and hex digits) as hex digits alone; None
    for None (no entries yet, or an event written before migration 0017)."""
    return stored[2:] if stored else None


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


async def create_account(db: Db, new: NewAccount, actor: Actor = NOBODY) -> Account:
    """Open an account; raises :class:`UserNotFound` (404) or :class:`AccountExists` (409, naming
    the user's existing account in that asset)."""
    account_id = await db.fetchval(CREATE_ACCOUNT, new.asset.asset_id, new.user_id, new.name, new.overdraft_limit,
                                   new.max_balance, json.dumps(new.metadata or {}), *actor.parameters())
    if account_id is None:
        existing = await db.fetchval(ACCOUNT_OF_USER, new.user_id, new.asset.asset_id)
        if existing is None:
            raise UserNotFound(new.user_id)
        raise AccountExists(existing, new.asset.code)
    return await read_account(db, account_id)


async def open_user_account(db: Db, user_id: int, asset: Asset, actor: Actor = NOBODY) -> None:
    """Open user ``user_id``'s account in ``asset`` unless it has one (a credit opens it);
    raises :class:`UserNotFound`."""
    opened = await db.fetchval(CREATE_ACCOUNT, asset.asset_id, user_id, None, 0, None, "{}", *actor.parameters())
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


async def update_account(db: Db, account_id: int, update: AccountUpdate, actor: Actor = NOBODY) -> Account:
    """Change an account's name, limits or metadata; raises :class:`AccountNotFound`,
    :class:`SystemAccount` (422), :class:`AccountClosed` (409: a closed account changes no more,
    as with its status) or :class:`LimitViolated` (409) when the balance already breaks a new
    limit."""
    updated = await db.fetchval(
        UPDATE_ACCOUNT, account_id, update.name, update.overdraft_limit, update.max_balance,
        None if update.metadata is None else json.dumps(update.metadata), update.max_balance_given,
        *actor.parameters(),
    )
    if updated is None:
        raise await _refusal(db, account_id, None)
    return await read_account(db, account_id)


async def set_account_status(db: Db, account_id: int, status: str, actor: Actor = NOBODY) -> Account:
    """Freeze (``frozen``), unfreeze (``open``) or close (``closed``) an account.

    Raises :class:`AccountNotFound`, :class:`SystemAccount` (422), :class:`AccountClosed` (409:
    closed is final) or, closing, :class:`AccountNotEmpty` (409)."""
    if await db.fetchval(SET_STATUS, account_id, status, *actor.parameters()) is None:
        raise await _refusal(db, account_id, status)
    return await read_account(db, account_id)


@dataclass(frozen=True, slots=True)
class User:
    """A user and its accounts; ``default_account`` is its account in the default asset (if any)."""

    user_id: int
    accounts: list[Account]
    default_account: Account | None


async def create_user(db: Db, default_asset: Asset, actor: Actor = NOBODY) -> User:
    """Open a new user with its default-asset account at balance 0 (one statement)."""
    account_id = await db.fetchval(CREATE_USER, default_asset.asset_id, *actor.parameters())
    account = await read_account(db, account_id)
    return User(account.user_id, [account], account)


async def read_user(db: Db, user_id: int, default_asset: Asset) -> User:
    """User ``user_id`` with its accounts; raises :class:`UserNotFound`."""
    accounts = [_account(row) for row in await db.fetch(READ_USER_ACCOUNTS, user_id)]
    if not accounts and not await db.fetchval(USER_EXISTS, user_id):
        raise UserNotFound(user_id)
    default = next((a for a in accounts if a.asset == default_asset.code), None)
    return User(user_id, accounts, default)


async def user_account_id(db: Db, user_id: int, asset: Asset) -> int:
    """The id of user ``user_id``'s account in ``asset``; raises :class:`UserNotFound` or
    :class:`AccountNotFound`."""
    account_id = await db.fetchval(ACCOUNT_OF_USER, user_id, asset.asset_id)
    if account_id is None:
        if not await db.fetchval(USER_EXISTS, user_id):
            raise UserNotFound(user_id)
        raise AccountNotFound(None, user_id=user_id)
    return account_id
