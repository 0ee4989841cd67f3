"""Users made straight in SQL, for tests that need many or need them fast (not through the API).

``SEED_USER`` ($1: an opening balance in minor units, >= 0) makes a user whose default-asset
account opens with that balance, moved in from the system account as an ``opening`` transfer with
the account's ledger entry (hashed, the account's head), its event and the system balance's change, so every
invariant ``balance-api check`` verifies still holds. It returns ``(user_id, account_id)``.

Tests that insert many entries straight in SQL give them an empty hash and then call
:func:`chain_entries`, which hashes them as the service would.
"""

from __future__ import annotations

import hashlib
import struct

import psycopg

SEED_USER = """
WITH new_user AS (INSERT INTO users DEFAULT VALUES RETURNING id),
ids AS (  -- drawn first: the account's head is its opening entry's hash (server/ledger/sql/entry_hashes.sql)
    SELECT nextval(pg_get_serial_sequence('accounts', 'id')) AS account_id,
           nextval(pg_get_serial_sequence('transfers', 'id')) AS transfer_id
),
account AS (
    INSERT INTO accounts (id, asset_id, user_id, balance, head_hash)
    OVERRIDING SYSTEM VALUE
    SELECT ids.account_id, s.id, new_user.id, $1::bigint,
           CASE WHEN $1::bigint > 0 THEN entry_hash(NULL, ids.account_id, ids.transfer_id, $1::bigint, $1::bigint) END
      FROM assets s, new_user, ids WHERE s.is_default RETURNING id, asset_id, head_hash
),
opening AS (
    INSERT INTO transfers (id, asset_id, from_account_id, to_account_id, amount, code, to_balance)
    OVERRIDING SYSTEM VALUE
    SELECT ids.transfer_id, account.asset_id, sys.id, account.id, $1::bigint, 'opening', $1::bigint
      FROM ids, account JOIN accounts sys ON sys.asset_id = account.asset_id AND sys.is_system
     WHERE $1::bigint > 0
 RETURNING id, to_account_id, amount
), entry AS (
    INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, hash)
    SELECT opening.to_account_id, opening.id, opening.amount, opening.amount, 'opening', account.head_hash
      FROM opening, account
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


def chained(entries: list[tuple[int, int, int, int]]) -> list[bytes]:
    """The hashes of one account's entries ``(account_id, transfer_id, amount, balance_after)`` in id
    order: SHA-256 of the previous one's (nothing for the first) and the four numbers as 8-byte
    big-endian signed integers (server/ledger/sql/entry_hashes.sql, written again independently)."""
    hashes, previous = [], b""
    for entry in entries:
        previous = hashlib.sha256(previous + struct.pack(">qqqq", *entry)).digest()
        hashes.append(previous)
    return hashes


def chain_entries(conn: psycopg.Connection) -> None:
    """Hash the entries inserted with an empty hash: every account that has one gets its whole chain
    computed again, in id order, and its head, on the psycopg connection ``conn``."""
    rows = conn.execute("SELECT account_id, id, transfer_id, amount, balance_after FROM ledger_entries"
                        " WHERE account_id IN (SELECT account_id FROM ledger_entries WHERE hash = '')"
                        " ORDER BY account_id, id").fetchall()
    accounts: dict[int, list[tuple]] = {}
    for row in rows:
        accounts.setdefault(row[0], []).append(row)
    keys, ids, hashes, heads = [], [], [], {}
    for account_id, entries in accounts.items():
        chain = chained([(a, t, amount, after) for a, _, t, amount, after in entries])
        keys += [account_id] * len(entries)
        ids += [entry[1] for entry in entries]
        hashes += chain
        heads[account_id] = chain[-1]
    conn.execute("UPDATE ledger_entries e SET hash = u.hash FROM unnest(%s::bigint[], %s::bigint[], %s::bytea[])"
                 " AS u (account_id, id, hash) WHERE e.account_id = u.account_id AND e.id = u.id", (keys, ids, hashes))
    conn.execute("UPDATE accounts a SET head_hash = u.hash FROM unnest(%s::bigint[], %s::bytea[]) AS u (id, hash)"
                 " WHERE a.id = u.id", (list(heads), list(heads.values())))
