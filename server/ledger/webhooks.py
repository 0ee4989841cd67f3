"""Webhook endpoints and their deliveries, as stored in PostgreSQL (migration 0015).

An endpoint follows the change feed (server/ledger/events.py) from a cursor of its own; the
dispatcher (server/running/webhook_delivery.py) moves it on after each delivery and records every
attempt here. The signing secret is kept to sign with (Standard Webhooks, symmetric HMAC-SHA256):
it is shown to the client once, when the endpoint is made.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import secrets

from server.ledger.events import FeedCursor, feed_head, feed_horizon
from server.ledger.records import Actor, Db
from server.problems import WebhookNotFound

_COLUMNS = """id, url, types::text[] AS types, description, status, failures, next_attempt_at, disabled_at, created_at,
updated_at, cursor_position, cursor_id, cursor_index"""
# Each change of an endpoint writes its audit row in the same statement (server/ledger/sql/audit.sql),
# its row without the secret; actor parameters last.
CREATE = f"""
WITH made AS (
    INSERT INTO webhook_endpoints (url, types, description, secret, cursor_position, cursor_id, cursor_index)
    VALUES ($1, $2::event_type[], $3, $4, $5, $6, $7)
    RETURNING *
)
SELECT {_COLUMNS}, record_audit(NULL, $8, $9, $10, 'webhook.created', 'webhook:' || m.id, NULL, to_jsonb(m) - 'secret')
  FROM made m
"""
READ = f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND NOT deleted"
LIST = f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE NOT deleted ORDER BY id"
# NULL parameters leave a field as it is; $5 says whether types was given (null: every type).
# Enabling again starts afresh: no failures counted, the next attempt now, from where it stopped.
# The row is locked first (as the UPDATE would), so `before` is the version the UPDATE changes; the
# UPDATE reads `before`, so that it runs after it (a CTE that locked a row this statement had
# already updated would see no row).
UPDATE = f"""
WITH before AS MATERIALIZED (
    SELECT w FROM webhook_endpoints w WHERE w.id = $1 AND NOT w.deleted FOR NO KEY UPDATE
), changed AS (
UPDATE webhook_endpoints
   SET url = coalesce($2, url), types = CASE WHEN $5 THEN $3::event_type[] ELSE types END,
       description = coalesce($4, description),
       status = coalesce($6, status),
       failures = CASE WHEN $6 = 'enabled' THEN 0 ELSE failures END,
       next_attempt_at = CASE WHEN $6 = 'enabled' THEN now() ELSE next_attempt_at END,
       disabled_at = CASE WHEN $6 = 'enabled' THEN NULL WHEN $6 = 'disabled' THEN coalesce(disabled_at, now())
                          ELSE disabled_at END,
       updated_at = now()
  FROM before b
 WHERE id = (b.w).id AND NOT deleted
RETURNING webhook_endpoints.*
)
SELECT {_COLUMNS}, record_audit(NULL, $7, $8, $9, 'webhook.updated', 'webhook:' || c.id, to_jsonb(b.w) - 'secret',
                                to_jsonb(c) - 'secret')
  FROM changed c, before b
"""
# deleted, not removed: its deliveries stay readable to an operator (balance-api check, psql)
DELETE = """
WITH before AS MATERIALIZED (
    SELECT w FROM webhook_endpoints w WHERE w.id = $1 AND NOT w.deleted FOR NO KEY UPDATE
), deleted AS (
UPDATE webhook_endpoints SET deleted = true, status = 'disabled', updated_at = now()
  FROM before b
 WHERE id = (b.w).id AND NOT deleted
RETURNING id
)
SELECT record_audit(NULL, $2, $3, $4, 'webhook.deleted', 'webhook:' || d.id, to_jsonb(b.w) - 'secret', NULL)
  FROM deleted d, before b
"""
LIST_DELIVERIES = """
SELECT id, event_position, event_id, event_index, attempt, status_code, latency_ms, error, next_retry_at, at
  FROM webhook_deliveries
 WHERE webhook_id = $1 AND id < $2
 ORDER BY id DESC
 LIMIT $3
"""

# The dispatcher's statements: the endpoints due now; one endpoint with its secret, if it is still
# due (read under its advisory lock); an attempt recorded with what it did to the endpoint, in one
# statement.
DUE = """
SELECT id FROM webhook_endpoints WHERE status = 'enabled' AND NOT deleted AND next_attempt_at <= now() ORDER BY id
"""
READ_FOR_DELIVERY = f"""
SELECT {_COLUMNS}, secret FROM webhook_endpoints
 WHERE id = $1 AND status = 'enabled' AND NOT deleted AND next_attempt_at <= now()
"""
MOVE_ON = """
UPDATE webhook_endpoints SET cursor_position = $2, cursor_id = $3, cursor_index = $4
 WHERE id = $1 AND status = 'enabled'
"""
DELIVERED = """
WITH attempt AS (
    INSERT INTO webhook_deliveries (webhook_id, event_position, event_id, event_index, attempt, status_code,
                                    latency_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
)
UPDATE webhook_endpoints SET cursor_position = $2, cursor_id = $3, cursor_index = $4, failures = 0 WHERE id = $1
"""
# $8: the seconds to wait before the next attempt, NULL: none left, the endpoint is disabled
FAILED = """
WITH attempt AS (
    INSERT INTO webhook_deliveries (webhook_id, event_position, event_id, event_index, attempt, status_code,
                                    latency_ms, error, next_retry_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $9, now() + make_interval(secs => $8))
)
UPDATE webhook_endpoints
   SET failures = failures + 1,
       next_attempt_at = CASE WHEN $8::float8 IS NULL THEN next_attempt_at ELSE now() + make_interval(secs => $8) END,
       status = CASE WHEN $8::float8 IS NULL THEN 'disabled' ELSE status END,
       disabled_at = CASE WHEN $8::float8 IS NULL THEN now() END
 WHERE id = $1
"""
# How far behind an endpoint is: the final events after its cursor (in the rows after it, counted
# up to $4 rows; its own row's are counted whole) and the time of the oldest of them.
LAG = """
SELECT coalesce(sum(coalesce(cardinality(x.transfer_ids), 1)), 0) AS events, min(x.occurred_at) AS oldest
  FROM (SELECT e.occurred_at, e.transfer_ids FROM events e
         WHERE (e.position, e.id) > ($1, $2) AND e.position < $3
         ORDER BY e.position, e.id LIMIT $4) x
"""
LAG_COUNT_LIMIT = 100_000


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """A webhook endpoint: where events of ``types`` (None: all) are sent, whether it is
    ``enabled`` or ``disabled``, the failed attempts in a row and when the next is due, and the
    cursor of the last event it has got past."""

    webhook_id: int
    url: str
    types: list[str] | None
    description: str | None
    status: str
    failures: int
    next_attempt_at: dt.datetime
    disabled_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    cursor: FeedCursor
    secret: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt to deliver the event at ``event`` (a cursor): the HTTP status it got (None: no
    answer), its latency in milliseconds, the error, and when the next attempt is due (None: no
    retry, delivered or given up)."""

    delivery_id: int
    event: FeedCursor
    attempt: int
    status_code: int | None
    latency_ms: float
    error: str | None
    next_retry_at: dt.datetime | None
    at: dt.datetime


def _endpoint(row) -> Endpoint:
    return Endpoint(row["id"], row["url"], row["types"], row["description"], row["status"], row["failures"],
                    row["next_attempt_at"], row["disabled_at"], row["created_at"], row["updated_at"],
                    FeedCursor(row["cursor_position"], row["cursor_id"], row["cursor_index"]),
                    row.get("secret"))


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells it: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def create_endpoint(db: Db, url: str, types: list[str] | None, description: str | None,
                          actor: Actor) -> Endpoint:
    """A new endpoint, enabled, following the feed from its newest final event on; the returned
    :class:`Endpoint` carries the ``secret`` (the only time it is given out)."""
    secret = new_secret()
    head = await feed_head(db)
    row = await db.fetchrow(CREATE, url, types, description, secret, head.position, head.event_id, head.index,
                            *actor.parameters())
    return dataclasses.replace(_endpoint(row), secret=secret)


async def read_endpoint(db: Db, webhook_id: int) -> Endpoint:
    """Endpoint ``webhook_id``; raises :class:`WebhookNotFound` (404), deleted ones too."""
    row = await db.fetchrow(READ, webhook_id)
    if row is None:
        raise WebhookNotFound(webhook_id)
    return _endpoint(row)


async def endpoint_to_deliver(db: Db, webhook_id: int) -> Endpoint | None:
    """Endpoint ``webhook_id`` with its ``secret`` when it is enabled and its next attempt is due
    (the dispatcher reads it under the endpoint's advisory lock), else None."""
    row = await db.fetchrow(READ_FOR_DELIVERY, webhook_id)
    return _endpoint(row) if row else None


async def list_endpoints(db: Db) -> list[Endpoint]:
    """Every endpoint not deleted, oldest first."""
    return [_endpoint(row) for row in await db.fetch(LIST)]


async def update_endpoint(db: Db, webhook_id: int, url: str | None, types: list[str] | None, types_given: bool,
                          description: str | None, status: str | None, actor: Actor) -> Endpoint:
    """Change an endpoint (None leaves a field as it is; ``types`` None with ``types_given``: all
    types); ``status='enabled'`` re-enables it with no failures counted. Raises
    :class:`WebhookNotFound`."""
    row = await db.fetchrow(UPDATE, webhook_id, url, types, description, types_given, status, *actor.parameters())
    if row is None:
        raise WebhookNotFound(webhook_id)
    return _endpoint(row)


async def delete_endpoint(db: Db, webhook_id: int, actor: Actor) -> None:
    """Delete an endpoint: nothing more is sent to it. Raises :class:`WebhookNotFound`."""
    if await db.fetchval(DELETE, webhook_id, *actor.parameters()) is None:
        raise WebhookNotFound(webhook_id)


async def list_deliveries(db: Db, webhook_id: int, before: int, limit: int) -> list[Delivery]:
    """Endpoint ``webhook_id``'s attempts with ids below ``before``, newest first, at most
    ``limit``. Raises :class:`WebhookNotFound`."""
    await read_endpoint(db, webhook_id)
    return [Delivery(r["id"], FeedCursor(r["event_position"], r["event_id"], r["event_index"]), r["attempt"],
                     r["status_code"],
                     r["latency_ms"], r["error"], r["next_retry_at"], r["at"])
            for r in await db.fetch(LIST_DELIVERIES, webhook_id, before, limit)]


async def endpoint_lag(db: Db, endpoint: Endpoint) -> tuple[int, float]:
    """How far ``endpoint`` is behind the feed: final events after its cursor (at most
    :data:`LAG_COUNT_LIMIT` counted) and the age in seconds of the oldest of them (0: none)."""
    row = await db.fetchrow(LAG, endpoint.cursor.position, endpoint.cursor.event_id, await feed_horizon(db),
                            LAG_COUNT_LIMIT)
    age = (dt.datetime.now(dt.UTC) - row["oldest"]).total_seconds() if row["oldest"] else 0.0
    return row["events"], max(age, 0.0)
