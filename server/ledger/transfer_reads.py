"""Reading transfers: one by id or by reference, and newest-first listings, keyset-paged.

Every read goes through the view ``transfer_documents`` (server/ledger/sql/documents.sql).
"""

from __future__ import annotations

from server.ledger.accounts import account_is_system
from server.ledger.history import SYSTEM_TRANSFER_IDS
from server.ledger.records import Db, PageQuery, Transfer, transfer_from_row

# A transfer with the balances its two ledger entries recorded (stored on the transfer too): the
# view transfer_documents (documents.sql), which apply_transfer_batch() returns too.
_TRANSFER_COLUMNS = "SELECT t.* FROM transfer_documents t"
READ_TRANSFER = _TRANSFER_COLUMNS + " WHERE t.id = $1"
READ_TRANSFER_BY_REFERENCE = _TRANSFER_COLUMNS + " WHERE t.reference = $1"  # the unique index transfers_reference

# All transfers, newest first, keyset-paged by transfer id ($1: below this id), with optional
# filters ($2 code: the index transfers_code_id; $3 from, $4 to: from <= created_at < to; with both:
# LIST_TRANSFERS_IN_A_WINDOW; migration 0014).
LIST_TRANSFERS = _TRANSFER_COLUMNS + """
 WHERE t.id < $1 AND ($2::text IS NULL OR t.code = $2) AND ($3::timestamptz IS NULL OR t.created_at >= $3)
   AND ($4::timestamptz IS NULL OR t.created_at < $4)
 ORDER BY t.id DESC LIMIT $5
"""


# The same page in a window with both ends [$3, $4): the window's transfers first, found through
# the index transfers_created_at, then the newest $5 of them below $1; so a page costs what the
# window holds, whatever came after it. With LIST_TRANSFERS' plain LIMIT the planner walks back from
# the newest transfer, as if the window's rows were spread evenly over the ids (created_at follows
# the ids instead), past every transfer after the window, and through the whole table when the
# window holds fewer than a page; the MATERIALIZED window is planned without the LIMIT.
LIST_TRANSFERS_IN_A_WINDOW = """
WITH w AS MATERIALIZED (
    SELECT x.id FROM transfers x
     WHERE x.id < $1 AND ($2::text IS NULL OR x.code = $2) AND x.created_at >= $3 AND x.created_at < $4
)
""" + _TRANSFER_COLUMNS + """
 WHERE t.id IN (SELECT w.id FROM w ORDER BY w.id DESC LIMIT $5)
 ORDER BY t.id DESC
"""


# An account's transfers, newest first, keyset-paged by the account's ledger entry id ($2: below it),
# through the index ledger_entries (account_id, id); filters as in LIST_TRANSFERS.
LIST_ACCOUNT_TRANSFERS = _TRANSFER_COLUMNS.replace("SELECT t.*", "SELECT x.id AS entry_id, t.*", 1) + """
  JOIN ledger_entries x ON x.transfer_id = t.id
 WHERE x.account_id = $1 AND x.id < $2 AND ($3::text IS NULL OR t.code = $3)
   AND ($4::timestamptz IS NULL OR t.created_at >= $4) AND ($5::timestamptz IS NULL OR t.created_at < $5)
 ORDER BY x.id DESC LIMIT $6
"""


# A system account's transfers (it has no entries), keyset-paged by transfer id: the page's ids
# as its history finds them (history.SYSTEM_TRANSFER_IDS, one descent of each partial index).
LIST_SYSTEM_TRANSFERS = _TRANSFER_COLUMNS.replace("SELECT t.*", "SELECT t.id AS entry_id, t.*", 1) + """
 WHERE t.id IN (""" + SYSTEM_TRANSFER_IDS + """)
 ORDER BY t.id DESC
"""


async def read_transfer(db: Db, transfer_id: int) -> Transfer | None:
    """Return transfer ``transfer_id`` with the balances its entries recorded, or None."""
    row = await db.fetchrow(READ_TRANSFER, transfer_id)
    return None if row is None else transfer_from_row(row)


async def find_transfer_by_reference(db: Db, reference: str) -> Transfer | None:
    """The transfer that carries the client's ``reference``, or None."""
    row = await db.fetchrow(READ_TRANSFER_BY_REFERENCE, reference)
    return None if row is None else transfer_from_row(row)


async def list_transfers(db: Db, page: PageQuery) -> list[Transfer]:
    """Transfers newest first (by transfer id), filtered as ``page`` says; a window with both ends
    read through its own transfers (LIST_TRANSFERS_IN_A_WINDOW)."""
    windowed = page.created_from is not None and page.created_to is not None
    rows = await db.fetch(LIST_TRANSFERS_IN_A_WINDOW if windowed else LIST_TRANSFERS, page.before, page.code,
                          page.created_from, page.created_to, page.limit)
    return [transfer_from_row(row) for row in rows]


async def list_account_transfers(db: Db, account_id: int, page: PageQuery) -> list[tuple[int, Transfer]]:
    """The transfers of ``account_id`` newest first, each with the account's entry id (the
    position ``page.before`` counts in; a system account's: the transfer id); raises
    :class:`AccountNotFound`."""
    query = LIST_SYSTEM_TRANSFERS if await account_is_system(db, account_id) else LIST_ACCOUNT_TRANSFERS
    rows = await db.fetch(query, account_id, page.before, page.code, page.created_from, page.created_to, page.limit)
    return [(row["entry_id"], transfer_from_row(row)) for row in rows]
