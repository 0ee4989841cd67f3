"""Read-only routes served from a streaming replica when one is configured (``DATABASE_REPLICA_URL``).

A handler decorated with :func:`read_only` reads through :func:`reading` instead of the primary;
:class:`server.running.replica.ReplicaRouting` picks the server per request. Every write, and every
read a write needs, stays on the primary. Headers (documented in docs/scaling.md, "What runs today"):

* request ``X-Read-From: primary``: read from the primary, e.g. right after one's own write, which a
  replica may not have replayed yet (read-your-writes);
* response ``X-Read-Source: replica`` or ``primary`` (only when a replica is configured);
* response ``X-Possibly-Stale: true``: answered by the replica while the primary does not answer,
  so how far behind it is cannot be known.
"""

from __future__ import annotations

import functools

from aiohttp import web

from server.http.app_keys import READS
from server.problems import DATABASE_UNAVAILABLE_ERRORS, DatabaseUnavailable, Handler
from server.running.database import Database
from server.running.replica import ReadSource

READ_FROM_HEADER = "X-Read-From"
READ_SOURCE_HEADER = "X-Read-Source"
POSSIBLY_STALE_HEADER = "X-Possibly-Stale"
_SOURCE = web.RequestKey("read_source", ReadSource)


def read_only(handler: Handler) -> Handler:
    """Serve ``handler`` (which reads through :func:`reading` and writes nothing) from the source
    the app's routing picks; if the primary turns out not to answer, once more from the replica."""

    @functools.wraps(handler)
    async def serve(request: web.Request) -> web.StreamResponse:
        routing = request.app[READS]
        source = routing.choose(request.headers.get(READ_FROM_HEADER, "").lower() == "primary")
        try:
            response = await _from(source, request, handler)
        except (DatabaseUnavailable, *DATABASE_UNAVAILABLE_ERRORS):
            if source.replica or (source := routing.fallback()) is None:
                raise
            response = await _from(source, request, handler)
        if routing.replica is not None:
            response.headers[READ_SOURCE_HEADER] = "replica" if source.replica else "primary"
            if source.possibly_stale:
                response.headers[POSSIBLY_STALE_HEADER] = "true"
        return response

    return serve


async def _from(source: ReadSource, request: web.Request, handler: Handler) -> web.StreamResponse:
    request[_SOURCE] = source
    return await handler(request)


def reading(request: web.Request) -> Database:
    """The database a :func:`read_only` handler reads from for this request."""
    return request[_SOURCE].database
