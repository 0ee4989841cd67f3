"""RFC 9457 problem details: the one error format of the API, and the middleware that renders it.

Every error response is ``application/problem+json`` with ``type``, ``title``, ``status``,
``detail``, ``instance`` and the extension member ``code``, a stable machine-readable identifier
(``insufficient_funds``, ``validation_error``...). ``type`` is the relative URI
``/problems/<code>`` (RFC 9457 §3.1.1 allows a relative reference).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """An error the API reports to the client as problem details.

    Subclasses fix ``status``, ``code`` and ``title``; an instance carries the ``detail`` sentence
    and optional extension members (``extensions``) such as ``errors`` or ``userId``.
    """

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None, **extensions: Any):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def body(self, instance: str) -> dict[str, Any]:
        """The problem document for request path ``instance``."""
        return {
            "type": f"/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            "code": self.code,
            **self.extensions,
        }

    def response(self, instance: str) -> web.Response:
        """Render as an ``application/problem+json`` response for request path ``instance``."""
        return web.Response(
            status=self.status,
            body=json.dumps(self.body(instance)).encode(),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )


class MalformedJson(Problem):
    status, code, title = 400, "malformed_json", "Malformed JSON"


class RouteNotFound(Problem):
    status, code, title = 404, "route_not_found", "No such route"


class UserNotFound(Problem):
    status, code, title = 404, "user_not_found", "User not found"

    def __init__(self, user_id: int, role: str | None = None):
        """``role`` says which side of a transfer is missing: ``"from"`` or ``"to"``."""
        side = {"from": " (the sender)", "to": " (the receiver)"}.get(role or "", "")
        extensions = {"userId": user_id, "role": role} if role else {"userId": user_id}
        super().__init__(f"There is no user with id {user_id}{side}.", **extensions)


class TransferNotFound(Problem):
    status, code, title = 404, "transfer_not_found", "Transfer not found"

    def __init__(self, transfer_id: int):
        super().__init__(f"There is no transfer with id {transfer_id}.", transferId=transfer_id)


class MethodNotAllowed(Problem):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class InsufficientFunds(Problem):
    status, code, title = 409, "insufficient_funds", "Insufficient funds"

    def __init__(self, user_id: int, amount: int):
        super().__init__(
            f"Applying {amount} to user {user_id} would make the balance negative; nothing was changed.",
            userId=user_id,
            amount=amount,
        )


class BalanceOverflow(Problem):
    status, code, title = 409, "balance_overflow", "Balance would overflow"

    def __init__(self, user_id: int, amount: int):
        super().__init__(
            f"Applying {amount} to user {user_id} would take the balance past the largest storable "
            "value (9223372036854775807 minor units); nothing was changed.",
            userId=user_id,
            amount=amount,
        )


class PayloadTooLarge(Problem):
    status, code, title = 413, "payload_too_large", "Request body too large"


class UnsupportedMediaType(Problem):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class ValidationFailed(Problem):
    """422 with ``errors``: a list of ``{"field": <name or "(body)">, "reason": <sentence>}``."""

    status, code, title = 422, "validation_error", "Request body is invalid"

    def __init__(self, errors: list[dict[str, str]]):
        summary = "; ".join(f"{error['field']}: {error['reason']}" for error in errors)
        super().__init__(summary, errors=errors)


class SameAccount(Problem):
    status, code, title = 422, "same_account", "Transfer to the same account"

    def __init__(self, user_id: int):
        super().__init__(f"fromUserId and toUserId are both {user_id}; a transfer needs two accounts.",
                         userId=user_id)


class IdempotencyKeyReused(Problem):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"

    def __init__(self, key: str):
        super().__init__(
            "This Idempotency-Key was first used with a different route or body; nothing was changed. "
            "Use a new key for a new request.", idempotencyKey=key,
        )


class DatabaseUnavailable(Problem):
    status, code, title = 503, "database_unavailable", "Database unavailable"

    def __init__(self, detail: str = "The database did not answer; retry later."):
        super().__init__(detail, headers={"Retry-After": "1"})


class Unauthorized(Problem):
    """401 with ``WWW-Authenticate: Bearer realm="balance-api"`` (RFC 6750 §3), plus
    ``error="invalid_token"`` when credentials were sent but are not a valid token (§3.1)."""

    status, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, credentials_sent: bool):
        challenge = 'Bearer realm="balance-api"' + (', error="invalid_token"' if credentials_sent else "")
        detail = ("The bearer token is not valid." if credentials_sent
                  else "This route needs an Authorization: Bearer <token> header.")
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class ServiceOverloaded(Problem):
    status, code, title = 503, "service_overloaded", "Service overloaded"

    def __init__(self, max_pending: int):
        super().__init__(
            f"{max_pending} requests are already waiting for the database in this worker; nothing was "
            "changed. Retry later.", headers={"Retry-After": "1"},
        )


def _from_http_exception(error: web.HTTPException) -> Problem:
    """Map aiohttp's own HTTP errors (unknown route, wrong method, body too large) to problems."""
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return MethodNotAllowed(
            f"{error.method} is not allowed here; allowed: {allowed}.", headers={"Allow": allowed}
        )
    if isinstance(error, web.HTTPNotFound):
        return RouteNotFound("No route matches this path.")
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(error.text or "The request body is too large.")
    generic = Problem(error.reason)
    generic.status, generic.code, generic.title = error.status, "http_error", error.reason
    return generic


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Errors meaning "the database is not reachable right now", as opposed to a bug in our SQL.
DATABASE_UNAVAILABLE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.QueryCanceledError,  # statement_timeout: PostgreSQL cancelled and rolled back the statement
    # A pooled connection left unusable by a server that died (e.g. a FATAL message arrived while it
    # was idle): asyncpg refuses to start the statement, so nothing was sent.
    asyncpg.InternalClientError,
)


def instance(request: web.Request) -> str:
    """The problem's ``instance``: the request path as sent, percent-encoded (a URI reference)."""
    return request.rel_url.raw_path


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error raised by a handler or by aiohttp into a problem-details response.

    A :class:`Problem` is rendered as is; aiohttp's HTTP errors are mapped; a lost database is
    503 ``database_unavailable``; anything else is logged and answered 500 ``internal_error``.
    """
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response(instance(request))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _from_http_exception(error).response(instance(request))
    except DATABASE_UNAVAILABLE_ERRORS as error:
        log.warning("database unavailable: %r", error)
        return DatabaseUnavailable().response(instance(request))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return Problem("An unexpected error occurred.").response(instance(request))
