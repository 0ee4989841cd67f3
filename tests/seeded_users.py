"""Users made straight in SQL, for tests that need many or need them fast (not through the API).

``SEED_USER`` ($1: an opening balance in minor units, >= 0) makes a user whose default-asset
account opens with that balance, moved in from the system account as an ``opening`` transfer with
the account's ledger entry, its event and the system balance's change, so every invariant ``balance-api check`` verifies still holds. It
returns ``(user_id, account_id)``.
"""

from __future__ import annotations

import psycopg

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
), event AS (  -- its event in the change feed, as the service's functions write it (events.sql)
    INSERT INTO events (position, type, asset_id, transfer_ids)
    SELECT feed_position_after(NULL), 'transfer.created', account.asset_id, ARRAY[opening.id] FROM account, opening
), system_balance AS (  -- out of the system account, as the service's functions record it
    SELECT add_to_system_balances(ARRAY[account.asset_id], ARRAY[-opening.amount]) FROM account, opening
)
SELECT (SELECT id FROM new_user) AS user_id, (SELECT id FROM account) AS account_id
  FROM (SELECT count(*) FROM system_balance) AS recorded
"""


def seed_user(conn: psycopg.Connection, balance: int = 0) -> int:
    """Insert a user whose default-asset account opens with ``balance`` (see ``SEED_USER``) on the
    psycopg connection ``conn``; return the user id."""
    return conn.execute(SEED_USER.replace("$1", "%(balance)s"), {"balance": balance}).fetchone()[0]
