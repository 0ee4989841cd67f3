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
    closes_connection = False  # True: answered with Connection: close (what follows cannot be trusted)

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
        response = web.Response(
            status=self.status,
            body=json.dumps(self.body(instance)).encode(),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )
        if self.closes_connection:
            response.force_close()
        return response


class MalformedJson(Problem):
    status, code, title = 400, "malformed_json", "Malformed JSON"


class RouteNotFound(Problem):
    status, code, title = 404, "route_not_found", "No such route"


def _named(**members: Any) -> dict[str, Any]:
    """Extension members that are known (not None), in the given order."""
    return {name: value for name, value in members.items() if value is not None}


_SIDES = {"from": " (the sending side)", "to": " (the receiving side)"}


class UserNotFound(Problem):
    status, code, title = 404, "user_not_found", "User not found"

    def __init__(self, user_id: int, role: str | None = None):
        """``role`` says which side of a transfer is missing: ``"from"`` or ``"to"``."""
        super().__init__(f"There is no user with id {user_id}{_SIDES.get(role or '', '')}.",
                         **_named(userId=user_id, role=role))


class AccountNotFound(Problem):
    status, code, title = 404, "account_not_found", "Account not found"

    def __init__(self, account_id: int | None, user_id: int | None = None, role: str | None = None):
        """The account ``account_id``, or (``account_id`` None) user ``user_id``'s account in the
        asset asked for; ``role`` as for :class:`UserNotFound`."""
        what = f"no account with id {account_id}" if account_id is not None else (
            f"no account of user {user_id} in this asset")
        super().__init__(f"There is {what}{_SIDES.get(role or '', '')}.",
                         **_named(accountId=account_id, userId=user_id, role=role))


class AssetNotFound(Problem):
    status, code, title = 404, "asset_not_found", "Asset not found"

    def __init__(self, code: str):
        super().__init__(f"There is no asset with code {code!r}.", asset=code)


class AssetExists(Problem):
    status, code, title = 409, "asset_exists", "Asset exists"

    def __init__(self, code: str):
        super().__init__(f"An asset with code {code!r} exists already; nothing was changed.", asset=code)


class AccountExists(Problem):
    status, code, title = 409, "account_exists", "Account exists"

    def __init__(self, account_id: int, asset: str):
        super().__init__(f"This user already has an account in {asset}: account {account_id}. A user has at most "
                         "one account per asset; nothing was changed.", accountId=account_id, asset=asset)


class TransferNotFound(Problem):
    status, code, title = 404, "transfer_not_found", "Transfer not found"

    def __init__(self, transfer_id: int):
        super().__init__(f"There is no transfer with id {transfer_id}.", transferId=transfer_id)


class PendingTransferProblem(Problem):
    """A post or void of transfer ``transferId`` that cannot be done; nothing was changed."""

    sentence = ""

    def __init__(self, transfer_id: int, **extensions: Any):
        super().__init__(f"Transfer {transfer_id} {self.sentence}; nothing was changed.", transferId=transfer_id,
                         **extensions)


class TransferNotPending(PendingTransferProblem):
    status, code, title = 409, "transfer_not_pending", "Transfer not pending"
    sentence = "is not a pending transfer (a hold): there is nothing to post or void"


class PendingTransferAlreadyPosted(PendingTransferProblem):
    status, code, title = 409, "pending_transfer_already_posted", "Pending transfer already posted"
    sentence = "was already posted"


class PendingTransferAlreadyVoided(PendingTransferProblem):
    status, code, title = 409, "pending_transfer_already_voided", "Pending transfer already voided"
    sentence = "was already voided"


class PendingTransferExpired(PendingTransferProblem):
    status, code, title = 409, "pending_transfer_expired", "Pending transfer expired"
    sentence = "expired: its hold no longer counts and it can be neither posted nor voided"


class ExceedsPendingAmount(PendingTransferProblem):
    status, code, title = 422, "exceeds_pending_amount", "Exceeds pending amount"
    sentence = "holds less than the amount to post"


class TransferNotPosted(PendingTransferProblem):
    status, code, title = 409, "transfer_not_posted", "Transfer not posted"
    sentence = "moved nothing (a hold still pending, voided or expired): there is nothing to reverse; void a hold"


class ExceedsReversibleAmount(PendingTransferProblem):
    status, code, title = 422, "exceeds_reversible_amount", "Exceeds reversible amount"
    sentence = "has less left to reverse than asked (a transfer is reversed at most by what it moved)"


class ReferenceReused(Problem):
    status, code, title = 409, "reference_reused", "Reference reused"

    def __init__(self, reference: str, transfer_id: int, fields: list[str]):
        super().__init__(f"Reference {reference!r} belongs to transfer {transfer_id}, which differs in "
                         f"{', '.join(fields)}; nothing was changed. Use a new reference for a new transfer.",
                         reference=reference, transferId=transfer_id, fields=fields)


class LinkedTransferFailed(Problem):
    status, code, title = 409, "linked_transfer_failed", "Linked transfer failed"

    def __init__(self, failed_index: int):
        super().__init__(f"Item {failed_index} of this atomic batch failed, so none of the batch was committed; "
                         "this item was not applied.", failedItem=failed_index)


class ExpectationFailed(Problem):
    """417: an ``Expect`` header other than ``100-continue`` (RFC 9110 §10.1.1)."""

    status, code, title = 417, "expectation_failed", "Expectation failed"

    def __init__(self) -> None:
        super().__init__("The only expectation this service meets is Expect: 100-continue.")


class MethodNotAllowed(Problem):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class Refusal(Problem):
    """A change of a balance refused by the account's state or limits; nothing was changed.

    Extension members: ``accountId`` and ``userId`` (when known), ``amount`` (the signed change the
    account would have seen) and ``role`` (``from``/``to``, on transfers).
    """

    status = 409
    reason = "is refused"

    def __init__(self, account_id: int | None = None, user_id: int | None = None, amount: int | None = None,
                 role: str | None = None):
        who = f"account {account_id}" if account_id is not None else f"user {user_id}"
        change = f"Applying {amount} to {who}" if amount is not None else f"A transfer touching {who}"
        super().__init__(f"{change}{_SIDES.get(role or '', '')} {self.reason}; nothing was changed.",
                         **_named(accountId=account_id, userId=user_id, amount=amount, role=role))


class InsufficientFunds(Refusal):
    code, title = "insufficient_funds", "Insufficient funds"
    reason = ("would take the available balance (the balance minus open holds) below its lower limit (0, or minus "
              "the overdraft limit)")


class BalanceOverflow(Refusal):
    code, title = "balance_overflow", "Balance would overflow"
    reason = "would take the balance past the largest storable value (9223372036854775807 minor units)"


class MaxBalanceExceeded(Refusal):
    code, title = "max_balance_exceeded", "Maximum balance exceeded"
    reason = "would take the balance above the account's maxBalance"


class AccountFrozen(Refusal):
    code, title = "account_frozen", "Account frozen"
    reason = "is refused: the account is frozen"


class AccountClosed(Refusal):
    code, title = "account_closed", "Account closed"
    reason = "is refused: the account is closed"


class AccountNotEmpty(Problem):
    status, code, title = 409, "account_not_empty", "Account not empty"

    def __init__(self, account_id: int, balance: int):
        super().__init__(f"Account {account_id} has balance {balance}; only an account with balance 0 and no "
                         "open holds can be closed. Nothing was changed.", accountId=account_id, balance=balance)


class LimitViolated(Problem):
    status, code, title = 409, "limit_violated", "Limit violated"

    def __init__(self, account_id: int, balance: int):
        super().__init__(f"Account {account_id} has balance {balance}, which the new limits would not allow; "
                         "nothing was changed.", accountId=account_id, balance=balance)


class SystemAccount(Problem):
    status, code, title = 422, "system_account", "System account"

    def __init__(self, account_id: int, what: str):
        super().__init__(f"Account {account_id} is its asset's system account and {what}; nothing was changed.",
                         accountId=account_id)


class AssetMismatch(Problem):
    status, code, title = 422, "asset_mismatch", "Assets differ"

    def __init__(self, from_account_id: int, to_account_id: int):
        super().__init__(f"Accounts {from_account_id} and {to_account_id} hold different assets; a transfer moves "
                         "one asset. Nothing was changed.", fromAccountId=from_account_id,
                         toAccountId=to_account_id)


class HeaderRepeated(Problem):
    """400: a header that takes one value (``Idempotency-Key``) was given more than once."""

    status, code, title = 400, "header_repeated", "Header repeated"

    def __init__(self, header: str):
        super().__init__(f"The {header} header was given more than once; give it once.", header=header)


class RequestTimeout(Problem):
    """408: the body did not all arrive within ``BODY_READ_TIMEOUT`` (RFC 9110 §15.5.9); the
    connection is closed after the answer."""

    status, code, title = 408, "request_timeout", "Request body timed out"
    closes_connection = True

    def __init__(self, seconds: float):
        super().__init__(f"The request body did not arrive within {seconds:g} seconds.")


class MalformedHttpRequest(Problem):
    """400 answered by the HTTP layer: the request is not HTTP/1.1 as RFC 9112 frames it (request
    line, header syntax, Content-Length with chunked, lines over 8,190 bytes). Nothing of it ran."""

    status, code, title = 400, "malformed_http_request", "Malformed HTTP request"
    closes_connection = True


class UnsupportedTransferCoding(Problem):
    """501: a ``Transfer-Encoding`` other than ``chunked`` (RFC 9112 §6.1: a server that receives
    a transfer coding it does not understand SHOULD answer 501 and close the connection)."""

    status, code, title = 501, "unsupported_transfer_coding", "Unsupported transfer coding"
    closes_connection = True

    def __init__(self) -> None:
        super().__init__("The only transfer coding this service reads is chunked.")


class PayloadTooLarge(Problem):
    status, code, title = 413, "payload_too_large", "Request body too large"


class UnsupportedMediaType(Problem):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class ValidationFailed(Problem):
    """422 with ``errors``: a list of ``{"field": <name or "(body)">, "reason": <sentence>}``; the field
    may be a member of the body, a path or query parameter or a header. One title for every
    occurrence (RFC 9457 §3.1.3: the title does not change from occurrence to occurrence)."""

    status, code, title = 422, "validation_error", "Request is invalid"

    def __init__(self, errors: list[dict[str, str]]):
        summary = "; ".join(f"{error['field']}: {error['reason']}" for error in errors)
        super().__init__(summary, errors=errors)


class SameAccount(Problem):
    status, code, title = 422, "same_account", "Transfer to the same account"

    def __init__(self, account_id: int | None = None, user_id: int | None = None):
        both = f"account {account_id}" if account_id is not None else f"user {user_id}"
        super().__init__(f"Both sides are {both}; a transfer needs two accounts.",
                         **_named(accountId=account_id, userId=user_id))


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


class Forbidden(Problem):
    """403: the API key is valid but lacks the scope the route needs (``requiredScope``), or is
    limited to assets that do not include the one the request reads or changes (``requiredAsset``)."""

    status, code, title = 403, "forbidden", "Forbidden"

    def __init__(self, required_scope: str | None = None, required_asset: str | None = None):
        if required_asset is not None:
            super().__init__(f"This API key may not read or change accounts of asset {required_asset}.",
                             requiredAsset=required_asset)
        else:
            super().__init__(f"This API key does not have the scope {required_scope!r} this route needs.",
                             requiredScope=required_scope)


class ApiKeyNotFound(Problem):
    status, code, title = 404, "api_key_not_found", "API key not found"

    def __init__(self, key_id: int):
        super().__init__(f"There is no API key with id {key_id}.", keyId=key_id)


class WebhookNotFound(Problem):
    status, code, title = 404, "webhook_not_found", "Webhook not found"

    def __init__(self, webhook_id: int):
        super().__init__(f"There is no webhook endpoint with id {webhook_id}.", webhookId=webhook_id)


class WebhookTargetNotAllowed(Problem):
    """A webhook URL whose host is, or resolves to, a loopback, private, link-local or otherwise
    non-public address (refused unless ``WEBHOOK_ALLOW_PRIVATE_TARGETS=true``), or does not resolve."""

    status, code, title = 422, "webhook_target_not_allowed", "Webhook target not allowed"

    def __init__(self, url: str, reason: str):
        super().__init__(f"Webhooks are not sent to {url}: {reason}; nothing was changed.", url=url)


class ServiceOverloaded(Problem):
    status, code, title = 503, "service_overloaded", "Service overloaded"

    def __init__(self, max_pending: int = 0, detail: str | None = None):
        super().__init__(
            detail or f"{max_pending} requests are already waiting for the database in this worker; nothing "
            "was changed. Retry later.", headers={"Retry-After": "1"},
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
