"""``GET /api/audit``: the audit log (server/ledger/audit.py), keyset-paged, read from the primary."""

from __future__ import annotations

import re

from aiohttp import web

from server.http.app_keys import DATABASE
from server.http.handlers.documents import timestamp
from server.http.handlers.paths import bounded_int, unknown_parameters
from server.ledger.audit import TARGET_KINDS, AuditEntry, read_audit
from server.ledger.events import START, FeedCursor
from server.problems import ValidationFailed

AUDIT_DEFAULT_LIMIT = 100
AUDIT_MAX_LIMIT = 1000
# "account:9", "asset:USD", "key:3", "webhook:2"
_TARGET = re.compile(rf"(?:{'|'.join(TARGET_KINDS)}):[A-Za-z0-9_]{{1,32}}")


def audit_json(entry: AuditEntry) -> dict:
    """An entry as the API shows it: ``before`` / ``after`` the target's row as stored (without
    secrets or digests), null when it did not exist before / no longer exists."""
    return {"id": entry.entry_id, "cursor": entry.cursor.encode(), "at": timestamp(entry.at),
            "actor": entry.actor.document(), "requestId": entry.actor.request_id, "action": entry.action,
            "target": entry.target, "before": entry.before, "after": entry.after}


async def list_audit(request: web.Request) -> web.Response:
    """``GET /api/audit?target=&after=&limit=`` → 200 ``{"entries", "nextCursor"}``, oldest first,
    of one target (``account:9``) or all; ``nextCursor`` is where to read on, never null (an entry
    committed later comes after it)."""
    query, errors = request.query, unknown_parameters(request, ("target", "after", "limit"))
    after = START
    if "after" in query and (after := FeedCursor.decode(query["after"])) is None:
        errors.append({"field": "after", "reason": "is not a cursor returned by this API"})
    limit = AUDIT_DEFAULT_LIMIT
    if "limit" in query and (limit := bounded_int(query["limit"], AUDIT_MAX_LIMIT)) is None:
        errors.append({"field": "limit", "reason": f"must be an integer from 1 to {AUDIT_MAX_LIMIT}"})
    target = query.get("target")
    if target is not None and not _TARGET.fullmatch(target):
        errors.append({"field": "target", "reason": f"must be one of {', '.join(TARGET_KINDS)}, a colon and an id "
                                                    "or asset code, e.g. account:9"})
    if errors:
        raise ValidationFailed(errors)
    async with request.app[DATABASE].connection() as db:
        entries, cursor = await read_audit(db, after, target, limit)
    return web.json_response({"entries": [audit_json(e) for e in entries], "nextCursor": cursor.encode()})
