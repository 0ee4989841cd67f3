"""The change feed: reading events in feed order, from a cursor, below the horizon.

Events are written by the ledger's own SQL in the transaction of their change
(server/ledger/sql/events.sql, which says why their order never changes). A reader hands out only
events below the horizon, ``pg_snapshot_xmin(pg_current_snapshot())`` (PostgreSQL docs §9.27.5):
every transaction that could still write an event is at or above it. Reads go to the primary (a
replica's horizon is the primary's, replayed late: nothing would be wrong, only later).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from typing import NamedTuple

from server.ledger.accounts import Account, account_from_document
from server.ledger.records import Asset, Db, Transfer, transfer_from_row

# the enum event_type (migration 0015), in the order the API documents them
EVENT_TYPES = ("transfer.created", "transfer.pending", "transfer.posted", "transfer.voided", "account.created",
               "account.updated", "account.frozen", "account.unfrozen", "account.closed", "asset.created")

# The oldest transaction still running: events at or above it may still be joined by others
# before them (events.sql, "Why the order never changes", 1).
HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

# A page of the feed: feed_page() (server/ledger/sql/events.sql) with its arguments in this order.
# It takes the horizon from the snapshot it reads in: one round trip per page.
READ_EVENTS = "SELECT * FROM feed_page($1, $2, $3, $4, $5, $6, $7, $8)"

# How many events a filtered read looks at, at most, to find a page: it costs what it reads, not
# what the feed holds; the next cursor then says where it stopped.
FILTERED_READ_SPAN = 5000

# The newest event below the horizon (the last of its row): where a new webhook endpoint starts.
FEED_HEAD = """
SELECT e.position, e.id, coalesce(cardinality(e.transfer_ids), 1) AS last_index
  FROM events e WHERE e.position < $1 ORDER BY e.position DESC, e.id DESC LIMIT 1
"""


class FeedCursor(NamedTuple):
    """A place in the feed: after the event (``position``, ``event_id``, ``index``), ``index`` its
    place (from 1) among its row's transfer_ids (1 for a row of one event); ``START`` is before all."""

    position: int
    event_id: int
    index: int = 1

    def encode(self) -> str:
        """Opaque to clients: position and id as 8 bytes each, index as 8, big-endian, base64url
        (32 characters)."""
        raw = b"".join(number.to_bytes(8, "big", signed=True) for number in self)
        return base64.urlsafe_b64encode(raw).decode()

    @classmethod
    def decode(cls, text: str) -> FeedCursor | None:
        """The cursor ``text`` encodes, or None when it is not 32 characters of base64url. Every
        such string is a place in the feed (an index past 2^31-1 is clamped to it)."""
        if len(text) != 32 or not text.isascii() or not all(c.isalnum() or c in "-_" for c in text):
            return None
        raw = base64.urlsafe_b64decode(text)
        position, event_id, index = (int.from_bytes(raw[n:n + 8], "big", signed=True) for n in (0, 8, 16))
        return cls(position, event_id, max(-2**31, min(index, 2**31 - 1)))


START = FeedCursor(-1, 0, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event: its cursor, ``type`` (one of :data:`EVENT_TYPES`), when its change committed
    (the transaction's time) and its subject as right after the change."""

    cursor: FeedCursor
    type: str
    occurred_at: dt.datetime
    subject: Transfer | Account | Asset


@dataclasses.dataclass(frozen=True, slots=True)
class FeedFilter:
    """Which events a reader wants: ``types`` (None: all), of asset ``asset_id`` (None: any),
    concerning account ``account_id`` (a side of a transfer, or the account; None: any)."""

    types: tuple[str, ...] | None = None
    asset_id: int | None = None
    account_id: int | None = None

    @property
    def narrows(self) -> bool:
        return self.types is not None or self.asset_id is not None or self.account_id is not None


def _transfer_as_changed(event_type: str, transfer: Transfer) -> Transfer:
    """The transfer as right after the change ``event_type``: its row keeps every field as it was
    but those that later changes set (a hold's status and what it posted, the balances a post
    recorded, what reversals took back: each of those changes has its own event)."""
    if event_type == "transfer.pending":
        return dataclasses.replace(transfer, status="pending", posted_amount=0, from_balance=None, to_balance=None,
                                   reversed_amount=0)
    if event_type == "transfer.voided":
        return dataclasses.replace(transfer, status="voided")
    return dataclasses.replace(transfer, status="posted", reversed_amount=0)


def _asset_from_document(data: dict) -> Asset:
    return Asset(data["id"], data["code"], data["scale"], data["name"], data["is_default"],
                 dt.datetime.fromisoformat(data["created_at"]), data["system_account_id"])


def _event(row) -> Event:
    event_type, data = row["type"], row["data"] and json.loads(row["data"])
    if event_type.startswith("transfer."):
        subject = _transfer_as_changed(event_type, transfer_from_row(row["transfer"]))
    elif event_type == "asset.created":
        subject = _asset_from_document(data)
    else:
        subject = account_from_document(data)
    return Event(FeedCursor(row["event_position"], row["event_id"], row["event_index"]), event_type,
                 row["occurred_at"], subject)


async def feed_horizon(db: Db) -> int:
    """The horizon now: events at positions below it are final (none can join before them)."""
    return await db.fetchval(HORIZON)


async def read_events(db: Db, after: FeedCursor, limit: int,
                      wanted: FeedFilter = FeedFilter()) -> tuple[list[Event], FeedCursor]:
    """At most ``limit`` events after ``after`` that ``wanted`` passes, oldest first, and the
    cursor to read on from: the last event returned, or, when fewer than ``limit`` passed, the last
    event looked at (a filtered read looks at :data:`FILTERED_READ_SPAN` at most), or ``after``
    when there was none. ``db`` must be the primary; one statement (feed_page(), which takes the
    horizon from its own snapshot)."""
    span = max(limit, FILTERED_READ_SPAN) if wanted.narrows else limit
    rows = await db.fetch(READ_EVENTS, after.position, after.event_id, after.index, span,
                          list(wanted.types) if wanted.types is not None else None, wanted.asset_id,
                          wanted.account_id, limit)
    events = [_event(row) for row in rows if not row["is_last"]]
    last = [row for row in rows if row["is_last"]]
    if len(events) == limit:
        return events, events[-1].cursor
    return events, FeedCursor(last[0]["event_position"], last[0]["event_id"], last[0]["event_index"]) if last else after


async def feed_head(db: Db) -> FeedCursor:
    """The cursor after the newest final event (:data:`START` when there is none)."""
    row = await db.fetchrow(FEED_HEAD, await feed_horizon(db))
    return FeedCursor(row["position"], row["id"], row["last_index"]) if row else START
