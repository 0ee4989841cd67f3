"""Optional bearer-token authentication (RFC 6750), on when ``API_TOKEN`` or ``API_TOKENS_FILE`` is set.

Every route except :data:`OPEN_PATHS` and the API reference page under :data:`DOCS_PATH` needs ``Authorization: Bearer <token>``. The token is
compared with every configured token in constant time: the SHA-256 digests are compared with
:func:`hmac.compare_digest`, so neither the position of a mismatch nor the token's length shows in
the timing, and all tokens are always compared. A missing or wrong token gets 401 problem details
with a ``WWW-Authenticate: Bearer`` challenge (:class:`server.problems.Unauthorized`).
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from server.problems import Handler, Unauthorized

# Probes and scrapers need no token: health (load balancers) and metrics (Prometheus).
OPEN_PATHS = frozenset({"/api/health", "/metrics"})
# The API reference page (Swagger UI), its assets and the document it renders: they describe the
# API and hold no data, and a browser cannot send a bearer token for a page load; the calls the
# page makes ("Try it out") carry the token entered under its "Authorize" button.
DOCS_PATH = "/api/docs"


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def bearer_auth_middleware(tokens: list[bytes]) -> web.middleware:
    """The middleware admitting requests that carry one of ``tokens`` (non-empty list of bytes)."""
    if not tokens:
        raise ValueError("bearer_auth_middleware needs at least one token")
    digests = [_digest(token) for token in tokens]

    def authorized(header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials:  # the scheme is case-insensitive (RFC 9110 §11.1)
            return False
        given = _digest(credentials.strip().encode("utf-8", "surrogateescape"))
        matched = False
        for digest in digests:  # no early exit: the time does not depend on which token matched
            matched |= hmac.compare_digest(given, digest)
        return matched

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path not in OPEN_PATHS and not (path.startswith(DOCS_PATH) and path[len(DOCS_PATH):][:1] in ("", "/")):
            header = request.headers.get("Authorization")
            if header is None or not authorized(header):
                raise Unauthorized(credentials_sent=header is not None)
        return await handler(request)

    return middleware
