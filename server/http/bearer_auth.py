"""Bearer-token authentication (RFC 6750) and authorization by scope, on when ``API_TOKEN``,
``API_TOKENS_FILE`` or ``REQUIRE_API_KEY`` is set.

Every route except :data:`OPEN_PATHS` and the API reference page under :data:`DOCS_PATH` needs
``Authorization: Bearer <token>``, where the token is an API key (server/ledger/api_keys.py) or one
of the configured tokens, which have every scope. A configured token is compared with each of them
in constant time (SHA-256 digests, :func:`hmac.compare_digest`, all compared, no early exit). Any
other token is looked up by its digest in ``api_keys``, per request, so a revoke or an expiry counts
on every worker and instance from its commit on; the look-ups of the requests that arrive in one
turn of the event loop go in one statement (:class:`KeyLookups`). Every wrong token, however close to
a real one, takes the same path: one descent of a unique index to no row.

A missing or wrong token gets 401 (:class:`server.problems.Unauthorized`); a valid key without the
route's scope gets 403 ``forbidden`` with ``requiredScope`` (:class:`server.problems.Forbidden`).
The request's :class:`~server.ledger.api_keys.Grant` is ``request[GRANT]`` for the handlers.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Mapping

from aiohttp import web

from server.http.app_keys import GRANT, REQUEST_ID
from server.ledger.api_keys import SCOPES, Grant, key_digest, valid_grants
from server.ledger.records import NOBODY, Actor
from server.problems import Forbidden, Handler, Unauthorized
from server.running.database import Database

# Probes and scrapers need no token: health (load balancers) and metrics (Prometheus).
OPEN_PATHS = frozenset({"/api/health", "/metrics"})
# The API reference page (Swagger UI), its assets and the document it renders: they describe the
# API and hold no data, and a browser cannot send a bearer token for a page load; the calls the
# page makes ("Try it out") carry the token entered under its "Authorize" button.
DOCS_PATH = "/api/docs"

ALL_SCOPES = frozenset(SCOPES)
# Authentication off: every request may do everything and is made by nobody.
OPEN_GRANT = Grant(NOBODY, ALL_SCOPES)


def actor_of(request: web.Request) -> Actor:
    """Who makes this request's changes, with its request id (for the audit log)."""
    return request[GRANT].actor._replace(request_id=request.get(REQUEST_ID))


class KeyLookups:
    """Looks up API keys by digest: the keys asked for in one turn of the event loop in one
    statement on ``database`` (each distinct digest once), answered to every request that asked."""

    def __init__(self, database: Database):
        self._database = database
        self._waiting: dict[bytes, asyncio.Future[Grant | None]] | None = None
        self._running: set[asyncio.Task] = set()

    async def grant(self, digest: bytes) -> Grant | None:
        """The grant of the valid key with ``digest``, or None; raises what the database raises
        (:class:`~server.problems.DatabaseUnavailable`, ...)."""
        loop = asyncio.get_running_loop()
        if self._waiting is None:
            self._waiting = {}
            loop.call_soon(self._look_up_waiting)
        future = self._waiting.get(digest)
        if future is None:
            future = self._waiting[digest] = loop.create_future()
            future.add_done_callback(_retrieve)  # a failure nobody waits for any more is not "never retrieved"
        return await asyncio.shield(future)

    def _look_up_waiting(self) -> None:
        waiting, self._waiting = self._waiting, None
        task = asyncio.ensure_future(self._look_up(waiting))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _look_up(self, waiting: dict[bytes, asyncio.Future[Grant | None]]) -> None:
        try:
            async with self._database.connection() as db:
                grants = await valid_grants(db, list(waiting))
        except BaseException as error:  # each request answers as the database failed it (e.g. 503)
            for future in waiting.values():
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for digest, future in waiting.items():
            if not future.done():
                future.set_result(grants.get(digest))


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def bearer_auth_middleware(tokens: list[bytes], scope_of: Mapping[Callable, str],
                           key_lookups: Callable[[web.Application], KeyLookups]) -> web.middleware:
    """The middleware admitting requests that carry one of ``tokens`` (bytes; every scope) or a
    valid API key with the scope ``scope_of[handler]`` the matched route needs (a route not in it,
    or no route matched, needs none); ``key_lookups(app)`` is the app's :class:`KeyLookups`."""
    digests = [key_digest(token) for token in tokens]
    token_grants = [Grant(Actor(None, "API_TOKEN" if n == 0 and len(tokens) == 1 else f"API_TOKEN {n + 1}"),
                          ALL_SCOPES) for n in range(len(tokens))]

    async def grant_of(request: web.Request, header: str) -> Grant | None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials:  # the scheme is case-insensitive (RFC 9110 §11.1)
            return None
        given = key_digest(credentials.strip())
        matched = None
        for digest, grant in zip(digests, token_grants, strict=True):  # no early exit: the time does not
            if hmac.compare_digest(given, digest):                    # depend on which token matched
                matched = grant
        return matched or await key_lookups(request.app).grant(given)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS or (path.startswith(DOCS_PATH) and path[len(DOCS_PATH):][:1] in ("", "/")):
            request[GRANT] = OPEN_GRANT
            return await handler(request)
        header = request.headers.get("Authorization")
        grant = None if header is None else await grant_of(request, header)
        if grant is None:
            raise Unauthorized(credentials_sent=header is not None)
        scope = scope_of.get(request.match_info.handler)
        if scope is not None and scope not in grant.scopes:
            raise Forbidden(required_scope=scope)
        request[GRANT] = grant
        return await handler(request)

    return middleware


@web.middleware
async def open_access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication off: every request may do everything, made by nobody."""
    request[GRANT] = OPEN_GRANT
    return await handler(request)
