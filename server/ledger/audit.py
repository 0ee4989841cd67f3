"""The audit log: who changed what that is not a transfer, with the target before and after.

Rows are written by the ledger's own statements, in the change's transaction, through
``record_audit()`` (server/ledger/sql/audit.sql, which says why a page never skips a row). Each
statement that changes an asset, an account, an API key or a webhook endpoint takes an
:class:`Actor` and passes :meth:`Actor.parameters` as its last three parameters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from server.ledger.events import FeedCursor
from server.ledger.records import NOBODY, Actor, Db

__all__ = ["ACTIONS", "NOBODY", "TARGET_KINDS", "Actor", "AuditEntry", "read_audit"]

# The actions written to the log (the API documents them in this order).
ACTIONS = ("asset.created", "account.created", "account.updated", "account.frozen", "account.unfrozen",
           "account.closed", "key.created", "key.revoked", "webhook.created", "webhook.updated", "webhook.deleted")
# The kinds of target, as in "account:9" (asset: its code; the others: their id).
TARGET_KINDS = ("asset", "account", "key", "webhook")

# A page in log order after ($1, $2), below the horizon of this statement's own snapshot (as the
# feed, events.sql rule 1), of one target ($3) or all (NULL); audit_log_by_target or the primary key.
READ_PAGE = """
SELECT position, id, at, actor_key_id, actor_name, request_id, action, target, before, after
  FROM audit_log
 WHERE (position, id) > ($1, $2) AND position < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
   AND ($3::text IS NULL OR target = $3)
 ORDER BY position, id
 LIMIT $4
"""




@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the log; ``before`` / ``after`` the target's stored document (None: it did not
    exist before / no longer exists), as the ledger's SQL wrote it (a row as JSON)."""

    cursor: FeedCursor
    entry_id: int
    at: dt.datetime
    actor: Actor
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def _entry(row) -> AuditEntry:
    return AuditEntry(FeedCursor(row["position"], row["id"]), row["id"], row["at"],
                      Actor(row["actor_key_id"], row["actor_name"], row["request_id"]), row["action"], row["target"],
                      None if row["before"] is None else json.loads(row["before"]),
                      None if row["after"] is None else json.loads(row["after"]))


async def read_audit(db: Db, after: FeedCursor, target: str | None, limit: int) -> tuple[list[AuditEntry], FeedCursor]:
    """At most ``limit`` entries after ``after`` (of ``target`` only, e.g. ``"account:9"``, unless
    None), in log order, and the cursor to read on from (the last returned, else ``after``). ``db``
    must be the primary: a replica's horizon would be right, only late."""
    entries = [_entry(row) for row in await db.fetch(READ_PAGE, after.position, after.event_id, target, limit)]
    return entries, entries[-1].cursor if entries else after
