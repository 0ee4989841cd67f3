"""``GET /api/events`` (pages, with long polling) and ``GET /api/events/stream`` (Server-Sent Events):
the change feed (server/ledger/events.py), always read from the primary."""

from __future__ import annotations

import asyncio
import re

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from server.http.app_keys import DATABASE, GRANT, SETTINGS
from server.http.handlers.documents import event_json
from server.http.handlers.lookups import asset_id_of
from server.http.handlers.paths import bounded_int, unknown_parameters
from server.http.request_bodies import ASSET_CODE_PATTERN, MAX_BIGINT
from server.ledger.events import EVENT_TYPES, START, Event, FeedCursor, FeedFilter, read_events
from server.problems import Forbidden, ValidationFailed

EVENTS_DEFAULT_LIMIT = 100
EVENTS_MAX_LIMIT = 1000
MAX_WAIT_SECONDS = 30
STREAM_PAGE = 500  # events read per query by a stream
_FILTERS = ("types", "asset", "accountId")
_ASSET_CODE = re.compile(ASSET_CODE_PATTERN)


async def _query(request: web.Request, allowed: tuple[str, ...]) -> tuple[FeedCursor, FeedFilter, dict[str, int]]:
    """The cursor (``after``), the filters and the integer parameters (``limit``, ``wait``) of a
    feed request; anything unknown or malformed is refused (422 ``validation_error``), an unknown
    ``asset`` is 404 ``asset_not_found``."""
    query, errors, numbers = request.query, unknown_parameters(request, allowed), {}
    after = START
    if "after" in query and (after := FeedCursor.decode(query["after"])) is None:
        errors.append({"field": "after", "reason": "is not a cursor returned by this API"})
    for name, low, high, default in (("limit", 1, EVENTS_MAX_LIMIT, EVENTS_DEFAULT_LIMIT),
                                     ("wait", 0, MAX_WAIT_SECONDS, 0)):
        if name not in allowed:
            continue
        raw = query.get(name)
        value = default if raw is None else (0 if raw == "0" else bounded_int(raw, high))
        if value is None or value < low:
            errors.append({"field": name, "reason": f"must be an integer from {low} to {high}"})
        numbers[name] = value
    types = None
    if "types" in query:
        types = tuple(query["types"].split(","))
        if unknown := [t for t in types if t not in EVENT_TYPES]:
            errors.append({"field": "types", "reason": f"{unknown[0]!r} is not an event type; "
                                                       f"the types are {', '.join(EVENT_TYPES)}"})
    account_id = None
    if "accountId" in query and (account_id := bounded_int(query["accountId"], MAX_BIGINT)) is None:
        errors.append({"field": "accountId", "reason": f"must be an integer from 1 to {MAX_BIGINT}"})
    code = query.get("asset")
    if code is not None and not _ASSET_CODE.fullmatch(code):
        errors.append({"field": "asset", "reason": f"must match {ASSET_CODE_PATTERN.strip('^$')}"})
    if errors:
        raise ValidationFailed(errors)
    asset_id = await asset_id_of(request, code) if code is not None else None
    if (allowed := request[GRANT].asset_ids) is not None:  # a key limited to assets reads theirs only
        if asset_id is None and len(allowed) > 1:
            raise ValidationFailed([{"field": "asset", "reason": "a key limited to several assets must name one"}])
        if asset_id is None:
            asset_id = next(iter(allowed))
        elif asset_id not in allowed:
            raise Forbidden(required_asset=code)
    return after, FeedFilter(types, asset_id, account_id), numbers


async def _read(request: web.Request, after: FeedCursor, limit: int, wanted: FeedFilter) -> tuple[list[Event],
                                                                                                   FeedCursor]:
    async with request.app[DATABASE].connection() as db:
        return await read_events(db, after, limit, wanted)


async def list_events(request: web.Request) -> web.Response:
    """``GET /api/events?after=&limit=&types=&asset=&accountId=&wait=`` → 200 ``{"events",
    "nextCursor"}``, oldest first. With ``wait`` (seconds) it answers as soon as there is an event
    that passes the filters, or with none after ``wait`` seconds (long polling); ``nextCursor`` is
    where to read on, never null."""
    after, wanted, numbers = await _query(request, ("after", "limit", "wait", *_FILTERS))
    loop = asyncio.get_running_loop()
    deadline, interval = loop.time() + numbers["wait"], request.app[SETTINGS].events_poll_interval
    while True:
        events, cursor = await _read(request, after, numbers["limit"], wanted)
        if events or loop.time() >= deadline:
            break
        if cursor == after:  # nothing new below the horizon: look again a moment later
            await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
        after = cursor
    # orjson: a page holds up to 1,000 documents (as Outcome.of does for batches' answers)
    return web.json_response({"events": [event_json(e) for e in events], "nextCursor": cursor.encode()},
                             dumps=lambda document: orjson.dumps(document).decode())


async def stream_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/events/stream?after=&types=&asset=&accountId=`` → ``text/event-stream``: each event
    as an SSE event (``id:`` its cursor, ``event:`` its type, ``data:`` the event as GET /api/events
    shows it), from ``Last-Event-ID`` when the client resumes (it wins over ``after``), with a
    comment line every 15 s while there is nothing to send (aiohttp-sse's ping)."""
    after, wanted, _ = await _query(request, ("after", *_FILTERS))
    resumed = request.headers.get("Last-Event-ID")
    if resumed is not None and (after := FeedCursor.decode(resumed)) is None:
        raise ValidationFailed([{"field": "Last-Event-ID", "reason": "is not an event id sent by this API"}])
    interval = request.app[SETTINGS].events_poll_interval
    async with sse_response(request) as stream:
        while stream.is_connected():
            events, after = await _read(request, after, STREAM_PAGE, wanted)
            for event in events:
                await stream.send(orjson.dumps(event_json(event)).decode(), id=event.cursor.encode(), event=event.type)
            if len(events) < STREAM_PAGE:
                await asyncio.sleep(interval)
    return stream
