"""Reading the request line: ids in the path and the paging and filter query parameters."""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable

from aiohttp import web

from server.http.request_bodies import ASSET_CODE_PATTERN, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, MAX_BIGINT
from server.ledger.records import PageQuery
from server.problems import ValidationFailed


def bounded_int(raw: str, high: int) -> int | None:
    """``raw`` (a path segment or a query value) as an integer from 1 to ``high``, or None when it
    is anything else. Its length is checked before ``int()``: Python refuses to convert more than
    4,300 digits (``sys.int_info.default_max_str_digits``), and no id has more than 19."""
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)) and 1 <= int(raw) <= high:
        return int(raw)
    return None


def id_from_path(request: web.Request, name: str = "id") -> int:
    """The path's ``{id}``: an integer from 1 to 2^63-1 (PostgreSQL's bigint), else 422 ``validation_error``."""
    found = bounded_int(request.match_info[name], MAX_BIGINT)
    if found is None:
        raise ValidationFailed([{"field": name, "reason": f"must be an integer from 1 to {MAX_BIGINT}"}])
    return found


_ASSET_CODE = re.compile(ASSET_CODE_PATTERN)


def asset_code_from_path(request: web.Request) -> str:
    """The path's ``{code}``: an asset code as bodies spell it, else 422 ``validation_error``."""
    code = request.match_info["code"]
    if _ASSET_CODE.fullmatch(code):
        return code
    raise ValidationFailed([{"field": "code", "reason": f"must match {ASSET_CODE_PATTERN.strip('^$')}"}])



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
    """Query parameter ``name``'s value ``raw`` as an RFC 3339 date-time (RFC 3339 §5.6, with a
    UTC offset), converted to UTC; on anything else an error is appended to ``errors`` and None
    returned. A time that leaves years 1-9999 once converted (``0001-01-01T00:00:00+01:00``) is
    refused as out of range."""
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in raw.upper():
        errors.append({"field": name, "reason": "must be an RFC 3339 date-time with a UTC offset, "
                                                "e.g. 2026-11-01T00:00:00Z"})
        return None
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        errors.append({"field": name, "reason": "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"})
        return None


FILTERS = ("limit", "cursor", "from", "to", "code")


def unknown_parameters(request: web.Request, allowed: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """An error (as ``ValidationFailed`` lists them) for each query parameter not in ``allowed``."""
    return [{"field": name, "reason": "is not a query parameter of this route"}
            for name in request.query if name not in allowed]


def refuse_unknown_parameters(request: web.Request, allowed: tuple[str, ...] = ()) -> None:
    """Raise ``ValidationFailed`` (422) when the query has a parameter not in ``allowed``."""
    if errors := unknown_parameters(request, allowed):
        raise ValidationFailed(errors)


def page_query(request: web.Request, allowed: tuple[str, ...] = ("limit", "cursor")) -> PageQuery:
    """The page a listing asks for: ``limit`` (1..500, default 50), ``cursor`` and, where
    ``allowed``, ``from``/``to`` (RFC 3339) and ``code``; anything else is refused (422)."""
    errors, query = unknown_parameters(request, allowed), request.query
    limit = HISTORY_DEFAULT_LIMIT
    if "limit" in query:
        found = bounded_int(query["limit"], HISTORY_MAX_LIMIT)
        if found is not None:
            limit = found
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
    return PageQuery(before, limit, code, created_from, created_to)


def split_page(items: list, position: Callable[[object], int], limit: int) -> tuple[list, str | None]:
    """Split a fetch of ``limit + 1`` rows into the page and the next cursor (None on the last)."""
    page = items[:limit]
    return page, encode_cursor(position(page[-1])) if len(items) > limit else None
