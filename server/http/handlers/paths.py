"""Reading the request line: ids in the path and the paging and filter query parameters."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable

from aiohttp import web

from server.http.request_bodies import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, MAX_BIGINT
from server.ledger import store as ledger
from server.problems import ValidationFailed


def id_from_path(request: web.Request) -> int:
    raw = request.match_info["id"]
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_BIGINT:
        return int(raw)
    raise ValidationFailed([{"field": "id", "reason": f"must be an integer from 1 to {MAX_BIGINT}"}])



def encode_cursor(position: int) -> str:
    """An opaque cursor meaning "continue below id ``position``": the id as 8 bytes, big-endian,
    in base64url without padding (always 11 characters of [A-Za-z0-9_-])."""
    return base64.urlsafe_b64encode(position.to_bytes(8, "big")).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    """The id a cursor points below. Every 11-character base64url string is a position (ids past
    the largest are clamped to it); anything else is refused (422)."""
    if len(cursor) == 11 and cursor.isascii() and all(char.isalnum() or char in "-_" for char in cursor):
        return min(int.from_bytes(base64.urlsafe_b64decode(cursor + "="), "big"), MAX_BIGINT)
    raise ValidationFailed([{"field": "cursor", "reason": "is not a cursor returned by this API"}])


def rfc3339(name: str, raw: str, errors: list) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in raw.upper():
        errors.append({"field": name, "reason": "must be an RFC 3339 date-time with a UTC offset, "
                                                "e.g. 2026-11-01T00:00:00Z"})
        return None
    return moment


FILTERS = ("limit", "cursor", "from", "to", "code")


def page_query(request: web.Request, allowed: tuple[str, ...] = ("limit", "cursor")) -> ledger.PageQuery:
    """The page a listing asks for: ``limit`` (1..500, default 50), ``cursor`` and, where
    ``allowed``, ``from``/``to`` (RFC 3339) and ``code``; anything else is refused (422)."""
    errors, query = [], request.query
    errors += [{"field": name, "reason": "is not a query parameter of this route"}
               for name in query if name not in allowed]
    limit = HISTORY_DEFAULT_LIMIT
    if "limit" in query:
        raw = query["limit"]
        if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= HISTORY_MAX_LIMIT:
            limit = int(raw)
        else:
            errors.append({"field": "limit", "reason": f"must be an integer from 1 to {HISTORY_MAX_LIMIT}"})
    created_from = rfc3339("from", query["from"], errors) if "from" in query else None
    created_to = rfc3339("to", query["to"], errors) if "to" in query else None
    code = query.get("code")
    if code is not None and not (code.isascii() and 1 <= len(code) <= 32
                                 and all(c.islower() or c.isdigit() or c == "_" for c in code)):
        errors.append({"field": "code", "reason": "must match [a-z0-9_]{1,32}"})
    if errors:
        raise ValidationFailed(errors)
    before = _decode_cursor(query["cursor"]) if "cursor" in query else MAX_BIGINT
    return ledger.PageQuery(before, limit, code, created_from, created_to)


def split_page(items: list, position: Callable[[object], int], limit: int) -> tuple[list, str | None]:
    """Split a fetch of ``limit + 1`` rows into the page and the next cursor (None on the last)."""
    page = items[:limit]
    return page, encode_cursor(position(page[-1])) if len(items) > limit else None
