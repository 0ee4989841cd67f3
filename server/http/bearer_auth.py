"""Bearer-token authentication (RFC 6750) and authorization by scope, on when ``REQUIRE_API_KEY``,
``API_TOKEN`` or ``API_TOKENS_FILE`` is set.

Every route except :data:`OPEN_PATHS` and the API reference page under :data:`DOCS_PATH` needs
``Authorization: Bearer <key>``: an API key (server/ledger/api_keys.py); a configured token is one
too, with every scope (the service stores it as a key when it starts). The key is looked up by its
SHA-256 in ``api_keys`` on every request, so a revoke or an expiry counts on every worker and
instance from its commit on; the look-ups of the requests that arrive in one turn of the event loop
go in one statement (:class:`KeyLookups`). Every wrong key, however close to a real one, takes the
same path: one descent of a unique index to no row (a digest of a secret shares no prefix with
the real one's that the attacker could steer).

A missing or wrong token gets 401 (:class:`server.problems.Unauthorized`); a valid key without the
route's scope gets 403 ``forbidden`` with ``requiredScope`` (:class:`server.problems.Forbidden`).
The request's :class:`~server.ledger.api_keys.Grant` is ``request[GRANT]`` for the handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

from server.http.app_keys import GRANT, KEY_LOOKUPS, REMEMBERED, REQUEST_ID
from server.http.key_lookups import KeyLookups
from server.ledger.api_keys import SCOPES, Grant, key_digest
from server.ledger.records import NOBODY, Actor
from server.problems import Forbidden, Handler, Unauthorized

# Probes and scrapers need no token: health (load balancers) and metrics (Prometheus).
OPEN_PATHS = frozenset({"/api/health", "/metrics"})
# The API reference page (Swagger UI), its assets and the document it renders: they describe the
# API and hold no data, and a browser cannot send a bearer token for a page load; the calls the
# page makes ("Try it out") carry the token entered under its "Authorize" button.
DOCS_PATH = "/api/docs"

ALL_SCOPES = frozenset(SCOPES)
MAX_REMEMBERED = 10_000  # keys whose grant a process remembers (the first ones seen)
# Authentication off: every request may do everything and is made by nobody.
OPEN_GRANT = Grant(NOBODY, ALL_SCOPES)


def actor_of(request: web.Request) -> Actor:
    """Who makes this request's changes, with its request id (for the audit log)."""
    return request[GRANT].actor._replace(request_id=request.get(REQUEST_ID))


async def confirm_key(request: web.Request) -> None:
    """Look the request's key up again when it was admitted on a remembered grant (below), before
    a write that is not a balance change's statement; raises :class:`Unauthorized` when it is no
    longer valid."""
    if request.get(REMEMBERED):
        digest = key_digest(request.headers["Authorization"].partition(" ")[2].strip())
        if await request.app[KEY_LOOKUPS].grant(digest) is None:
            raise Unauthorized(credentials_sent=True)


def bearer_auth_middleware(scope_of: Mapping[Callable, str], checked_in_statement: frozenset[Callable],
                           key_lookups: Callable[[web.Application], KeyLookups]) -> web.middleware:
    """The middleware admitting requests that carry a valid API key (configured tokens are keys too)
    with the scope ``scope_of[handler]`` the matched route needs (a route not in it, or no route
    matched, needs none); ``key_lookups(app)`` is the app's :class:`KeyLookups`.

    The routes of ``checked_in_statement`` (balance changes) are admitted on the grant a key got
    at its last look-up by this process, with no look-up per request: the batch's statement applies
    the changes only if their keys are still valid, and a change whose key is revoked or expired is
    refused (401); the batch is sent after every change in it arrived (server/ledger/batching.py,
    ``LedgerBatcher._apply``). A grant's scopes and assets never change, only whether the key is
    still valid, so nothing else is remembered.
    """
    remembered: dict[bytes, Grant] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS or (path.startswith(DOCS_PATH) and path[len(DOCS_PATH):][:1] in ("", "/")):
            request[GRANT] = OPEN_GRANT
            return await handler(request)
        header = request.headers.get("Authorization")
        grant = None
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "bearer" and credentials:  # the scheme is case-insensitive (RFC 9110 §11.1)
                digest = key_digest(credentials.strip())
                if request.match_info.handler in checked_in_statement and (grant := remembered.get(digest)):
                    request[REMEMBERED] = True
                else:
                    grant = await key_lookups(request.app).grant(digest)
                    if grant is not None and len(remembered) < MAX_REMEMBERED:
                        remembered[digest] = grant
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
