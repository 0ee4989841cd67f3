"""An account's history (its ledger entries, newest first, keyset-paged) and its balance at a moment."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from server.ledger.accounts import account_is_system
from server.ledger.records import Db, PageQuery
from server.problems import AccountNotFound

# Keyset pagination, newest first: entries of account $1 with id below $2, served by the index
# ledger_entries (account_id, id) without scanning the account's older entries or anyone else's.
READ_ENTRIES = """
SELECT e.id, e.transfer_id, e.amount, e.balance_after,
       CASE WHEN t.from_account_id = e.account_id THEN t.to_account_id ELSE t.from_account_id END
           AS counterparty_account_id,
       t.code, e.kind, e.description, t.metadata, e.idempotency_key, e.created_at
  FROM ledger_entries e JOIN transfers t ON t.id = e.transfer_id
 WHERE e.account_id = $1 AND e.id < $2 AND ($3::text IS NULL OR t.code = $3)
   AND ($4::timestamptz IS NULL OR e.created_at >= $4) AND ($5::timestamptz IS NULL OR e.created_at < $5)
 ORDER BY e.id DESC
 LIMIT $6
"""

# The account's balance right after its last entry at or before $2 (0 before its first). A system
# account has no entries: its balance then is the sum, over its asset's shards, of each one's
# balance after its last change at or before $2 (system_balances.sql): one index descent per shard.
BALANCE_AT = """
SELECT CASE WHEN a.is_system
            THEN (SELECT coalesce(sum((SELECT c.balance_after FROM system_balance_changes c
                                        WHERE c.asset_id = b.asset_id AND c.shard = b.shard AND c.at <= $2
                                        ORDER BY c.at DESC, c.number DESC LIMIT 1)), 0)
                    FROM system_balance_shards b WHERE b.asset_id = a.asset_id)
            ELSE coalesce((SELECT e.balance_after FROM ledger_entries e
                            WHERE e.account_id = a.id AND e.created_at <= $2
                            ORDER BY e.id DESC LIMIT 1), 0)
       END AS balance, s.code AS asset
  FROM accounts a JOIN assets s ON s.id = a.asset_id
 WHERE a.id = $1
"""


# The ids of a system account's transfers for a page ($1 the account, below $2, filters $3 code,
# $4 from, $5 to, $6 the page's size): the newest of those it sent and of those it received, each
# one descent of its partial index (transfers_system_senders, transfers_system_receivers: a system
# side stores no balance; migration 0014), then the newest of both.
SYSTEM_TRANSFER_IDS = """
SELECT y.id FROM (
    (SELECT x.id FROM transfers x
      WHERE x.from_account_id = $1 AND x.from_balance IS NULL AND x.id < $2 AND ($3::text IS NULL OR x.code = $3)
        AND ($4::timestamptz IS NULL OR x.created_at >= $4) AND ($5::timestamptz IS NULL OR x.created_at < $5)
      ORDER BY x.id DESC LIMIT $6)
    UNION ALL
    (SELECT x.id FROM transfers x
      WHERE x.to_account_id = $1 AND x.to_balance IS NULL AND x.id < $2 AND ($3::text IS NULL OR x.code = $3)
        AND ($4::timestamptz IS NULL OR x.created_at >= $4) AND ($5::timestamptz IS NULL OR x.created_at < $5)
      ORDER BY x.id DESC LIMIT $6)) y
 ORDER BY y.id DESC LIMIT $6
"""

# A system account's history: its transfers, shown as entries (entryId = transferId; no running
# balance), newest first by transfer id; parameters as in READ_ENTRIES.
READ_SYSTEM_ENTRIES = """
SELECT t.id, t.id AS transfer_id, CASE WHEN t.to_account_id = $1 THEN t.amount ELSE -t.amount END AS amount,
       NULL::bigint AS balance_after,
       CASE WHEN t.to_account_id = $1 THEN t.from_account_id ELSE t.to_account_id END AS counterparty_account_id,
       t.code, CASE WHEN t.to_account_id = $1 THEN 'transfer_in' ELSE 'transfer_out' END AS kind, t.description,
       t.metadata, NULL::text AS idempotency_key, t.created_at
  FROM transfers t
 WHERE t.id IN (""" + SYSTEM_TRANSFER_IDS + """)
 ORDER BY t.id DESC
"""

@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One side of a transfer, as an account's history shows it: ``amount`` signed (minor units),
    ``balance_after`` the account's balance right after it (None on a system account)."""

    entry_id: int
    transfer_id: int
    amount: int
    balance_after: int | None
    counterparty_account_id: int
    code: str
    kind: str
    description: str | None
    metadata: dict[str, str]
    idempotency_key: str | None
    created_at: dt.datetime


async def read_entries(db: Db, account_id: int, page: PageQuery) -> list[LedgerEntry]:
    """Up to ``page.limit`` entries of ``account_id`` with id < ``page.before``, newest first,
    filtered as ``page`` says (a system account's: its transfers, see READ_SYSTEM_ENTRIES).
    Raises :class:`AccountNotFound` when there is no such account."""
    query = READ_SYSTEM_ENTRIES if await account_is_system(db, account_id) else READ_ENTRIES
    rows = await db.fetch(query, account_id, page.before, page.code, page.created_from, page.created_to, page.limit)
    return [LedgerEntry(*row[:8], json.loads(row["metadata"]) if row["metadata"] else {}, row["idempotency_key"],
                        row["created_at"]) for row in rows]


async def balance_at(db: Db, account_id: int, at: dt.datetime) -> tuple[str, int]:
    """``(asset code, balance)`` of ``account_id`` right after its last change at or before
    ``at``; raises :class:`AccountNotFound`."""
    row = await db.fetchrow(BALANCE_AT, account_id, at)
    if row is None:
        raise AccountNotFound(account_id)
    return row["asset"], int(row["balance"])
