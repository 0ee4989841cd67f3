"""The OpenAPI 3.1 description of the API, served at ``GET /api/openapi.json``.

Request-body schemas are generated from the pydantic models that validate them (JSON Schema
2020-12, the dialect of OpenAPI 3.1), so the document and the validation cannot drift apart.
``tests/test_openapi.py`` checks that every served route is described and the reverse, and the
suite validates responses against this document and runs Schemathesis on it.
"""

from __future__ import annotations

import functools
from typing import Any

from server.http.request_bodies import (
    ASSET_CODE_PATTERN,
    HISTORY_DEFAULT_LIMIT,
    HISTORY_MAX_LIMIT,
    MAX_BIGINT,
    AccountCreditOrDebit,
    AccountPatch,
    BalanceChange,
    CreditOrDebit,
    EmptyBody,
    NewAccount,
    NewApiKey,
    NewAsset,
    NewWebhook,
    PostPendingTransfer,
    ReverseTransfer,
    TransferBatch,
    TransferRequest,
    WebhookPatch,
)
from server.ledger.api_keys import SCOPES
from server.ledger.audit import ACTIONS as AUDIT_ACTIONS
from server.ledger.events import EVENT_TYPES

JSON = "application/json"
PROBLEM = "application/problem+json"

INTEGER_ID = {"type": "integer", "minimum": 1, "maximum": MAX_BIGINT}
NULLABLE_ID = {"oneOf": [INTEGER_ID, {"type": "null"}]}
SIGNED = {"type": "integer", "description": "signed minor units"}
MINOR_UNITS = {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT, "description": "minor units"}
TIMESTAMP = {"type": "string", "format": "date-time"}
TEXT_OR_NULL = {"type": ["string", "null"], "maxLength": 500}
METADATA = {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 16}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or list(properties),
            "additionalProperties": False}


_NESTED: dict[str, Any] = {}  # pydantic's $defs of the request models, lifted into components/schemas


def _request_schema(model) -> dict:
    """``model``'s JSON Schema; the models it nests (pydantic's ``$defs``) go to :data:`_NESTED`,
    since ``ref_template`` points every reference at ``components/schemas``, where they must be."""
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    for name, nested in schema.pop("$defs", {}).items():
        _NESTED[name] = _untitled(nested)
    return _untitled(schema)


def _untitled(schema: dict) -> dict:
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


_ASSET = {"code": {"type": "string", "pattern": ASSET_CODE_PATTERN},
          "scale": {"type": "integer", "minimum": 0, "maximum": 18},
          "name": {"type": ["string", "null"]}, "default": {"type": "boolean"},
          "systemAccountId": INTEGER_ID, "createdAt": TIMESTAMP}
_ACCOUNT = {
    "accountId": INTEGER_ID, "asset": {"type": "string"}, "userId": NULLABLE_ID, "name": {"type": ["string", "null"]},
    "system": {"type": "boolean"},
    "balance": {**SIGNED, "description": "minor units; a system account's may be any integer"},
    "available": {**SIGNED, "description": "what can be spent now: the balance minus pendingDebits"},
    "pendingDebits": {**MINOR_UNITS, "description": "open holds on it as sender (expired ones excluded)"},
    "pendingCredits": {**MINOR_UNITS, "description": "open holds on it as receiver (expired ones excluded)"},
    "overdraftLimit": MINOR_UNITS, "maxBalance": {"oneOf": [MINOR_UNITS, {"type": "null"}]},
    "status": {"enum": ["open", "frozen", "closed"]}, "metadata": METADATA,
    "createdAt": TIMESTAMP, "updatedAt": TIMESTAMP,
    "headHash": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$",
                 "description": "SHA-256 (hex) of its last ledger entry, chained to every entry before it: a client "
                                "that keeps it can tell later whether the history up to it was rewritten; null "
                                "before its first entry (a system account has none)"},
}
# who made a change: an API key, or null (authentication off)
_ACTOR = {"oneOf": [_object({"keyId": NULLABLE_ID, "name": {"type": "string"}}), {"type": "null"}]}
_CHANGE = {"userId": NULLABLE_ID, "balance": SIGNED, "accountId": INTEGER_ID, "transferId": INTEGER_ID}

SCHEMAS: dict[str, Any] = {
    "BalanceChange": _request_schema(BalanceChange),
    "CreditOrDebit": _request_schema(CreditOrDebit),
    "AccountCreditOrDebit": _request_schema(AccountCreditOrDebit),
    "TransferRequest": _request_schema(TransferRequest),
    "PostPendingTransfer": _request_schema(PostPendingTransfer),
    "ReverseTransfer": _request_schema(ReverseTransfer),
    "TransferBatch": _request_schema(TransferBatch),
    "TransferBatchResult": _object({
        "committed": {"type": "boolean", "description": "false when an atomic batch failed: nothing was applied"},
        "results": {"type": "array", "description": "one per item, in order", "items": {
            "type": "object", "required": ["status"], "additionalProperties": False,
            "properties": {"status": {"type": "integer", "minimum": 200, "maximum": 599},
                           "transfer": _ref("Transfer"), "problem": _ref("Problem"),
                           "replayed": {"type": "boolean",
                                        "description": "present (true) when the item's transfer existed already"}}}},
    }),
    "NewAsset": _request_schema(NewAsset),
    "NewAccount": _request_schema(NewAccount),
    "AccountPatch": _request_schema(AccountPatch),
    "EmptyBody": _request_schema(EmptyBody),
    "BalanceChanged": _object(_CHANGE),
    "EntryApplied": _object({**_CHANGE, "entryId": INTEGER_ID}),
    "Asset": _object(_ASSET),
    "AssetWithSupply": _object({**_ASSET, "supply": {**SIGNED, "description": "sum of all non-system balances"}}),
    "Assets": _object({"assets": {"type": "array", "items": _ref("Asset")}}),
    "Account": _object(_ACCOUNT),
    "User": _object({"userId": INTEGER_ID, "balance": {**SIGNED, "description": "in the default asset"},
                     "updatedAt": {"type": ["string", "null"], "format": "date-time"},
                     "accounts": {"type": "array", "items": _ref("Account")}}),
    "Transfer": _object({
        "transferId": INTEGER_ID, "fromAccountId": INTEGER_ID, "toAccountId": INTEGER_ID,
        "fromUserId": NULLABLE_ID, "toUserId": NULLABLE_ID, "asset": {"type": "string"},
        "amount": {**INTEGER_ID, "description": "minor units"},
        "code": {"type": "string", "pattern": "^[a-z0-9_]{1,32}$"},
        "description": TEXT_OR_NULL, "metadata": METADATA, "createdAt": TIMESTAMP,
        "fromBalance": {"type": ["integer", "null"],
                        "description": "sending account's balance right after; null for a system account"},
        "toBalance": {"type": ["integer", "null"],
                      "description": "receiving account's balance right after; null for a system account"},
        "status": {"enum": ["pending", "posted", "voided", "expired"],
                   "description": "a plain transfer is posted when made; a hold is pending until posted, voided "
                                  "or expired"},
        "expiresAt": {"type": ["string", "null"], "format": "date-time",
                      "description": "when a hold stops counting; null without a timeout"},
        "postedAmount": {**MINOR_UNITS, "description": "what moved: the amount, or a posted hold's captured part"},
        "reference": {"type": ["string", "null"], "description": "the client's own id, unique among transfers"},
        "reverses": {**NULLABLE_ID, "description": "the transfer this one reverses"},
        "reversedAmount": {**MINOR_UNITS, "description": "how much of this transfer has been reversed"},
        "createdBy": {**_ACTOR, "description": "the API key that made it (id and name); null when made without "
                                               "authentication"},
    }),
    "Transfers": _object({"transfers": {"type": "array", "items": _ref("Transfer"), "maxItems": HISTORY_MAX_LIMIT},
                          "nextCursor": {"type": ["string", "null"]}}),
    "AccountEntry": _object({
        "entryId": INTEGER_ID, "transferId": INTEGER_ID,
        "amount": {**SIGNED, "not": {"const": 0}}, "balanceAfter": {"type": ["integer", "null"]},
        "counterpartyAccountId": INTEGER_ID, "code": {"type": "string"}, "description": TEXT_OR_NULL,
        "metadata": METADATA, "createdAt": TIMESTAMP,
    }),
    "AccountHistory": _object({
        "accountId": INTEGER_ID,
        "entries": {"type": "array", "items": _ref("AccountEntry"), "maxItems": HISTORY_MAX_LIMIT},
        "nextCursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
    }),
    "BalanceAt": _object({"accountId": INTEGER_ID, "asset": {"type": "string"}, "at": TIMESTAMP, "balance": SIGNED}),
    "LedgerEntry": _object({
        "entryId": INTEGER_ID,
        "amount": {"type": "integer", "minimum": -MAX_BIGINT, "maximum": MAX_BIGINT, "not": {"const": 0},
                   "description": "signed minor units"},
        "balanceAfter": SIGNED,
        "kind": {"enum": ["opening", "adjustment", "credit", "debit", "transfer_in", "transfer_out"]},
        "description": TEXT_OR_NULL,
        "idempotencyKey": {"type": ["string", "null"], "maxLength": 255},
        "transferId": NULLABLE_ID,
        "createdAt": TIMESTAMP,
    }),
    "History": _object({
        "userId": INTEGER_ID,
        "entries": {"type": "array", "items": _ref("LedgerEntry"), "maxItems": HISTORY_MAX_LIMIT},
        "nextCursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
    }),
    "Health": _object({"status": {"const": "ok"}, "database": {"const": "ok"}}),
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details, with the stable machine-readable `code`",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "format": "uri-reference"},
            "code": {"type": "string", "pattern": "^[a-z_]+$"},
            "errors": {"type": "array", "items": _object({"field": {"type": "string"}, "reason": {"type": "string"}})},
        },
        "additionalProperties": True,
    },
}
_FEED_CURSOR = {"type": "string", "pattern": "^[A-Za-z0-9_-]{32}$", "description": "an event's id: an opaque cursor"}
_WEBHOOK = {
    "webhookId": INTEGER_ID, "url": {"type": "string"},
    "types": {"type": ["array", "null"], "items": {"enum": list(EVENT_TYPES)}, "description": "null: every type"},
    "description": TEXT_OR_NULL, "status": {"enum": ["enabled", "disabled"]},
    "failures": {"type": "integer", "minimum": 0, "description": "attempts failed in a row"},
    "nextAttemptAt": {"type": ["string", "null"], "format": "date-time"},
    "disabledAt": {"type": ["string", "null"], "format": "date-time"},
    "cursor": {**_FEED_CURSOR, "description": "the last event it has got past (delivered, or not of its types)"},
    "createdAt": TIMESTAMP, "updatedAt": TIMESTAMP,
}
SCHEMAS.update({
    "Event": _object({
        "id": _FEED_CURSOR, "type": {"enum": list(EVENT_TYPES)}, "occurredAt": TIMESTAMP,
        "data": {"oneOf": [_ref("Transfer"), _ref("Account"), _ref("Asset")],
                 "description": "the document its GET route returns, as it was right after the change"},
    }),
    "Events": _object({"events": {"type": "array", "items": _ref("Event"), "maxItems": 1000},
                       "nextCursor": {**_FEED_CURSOR, "description": "pass as `after` to read on"}}),
    "NewWebhook": _request_schema(NewWebhook),
    "WebhookPatch": _request_schema(WebhookPatch),
    "Webhook": _object(_WEBHOOK),
    "NewWebhookSecret": _object({**_WEBHOOK, "secret": {
        "type": "string", "pattern": "^whsec_", "description": "the signing secret (Standard Webhooks), shown once"}}),
    "Webhooks": _object({"webhooks": {"type": "array", "items": _ref("Webhook")}}),
    "WebhookDeliveries": _object({
        "webhookId": INTEGER_ID,
        "deliveries": {"type": "array", "maxItems": HISTORY_MAX_LIMIT, "items": _object({
            "deliveryId": INTEGER_ID, "eventId": _FEED_CURSOR, "attempt": {"type": "integer", "minimum": 1},
            "statusCode": {"type": ["integer", "null"], "description": "null: no HTTP answer"},
            "latencyMs": {"type": "number", "minimum": 0}, "error": {"type": ["string", "null"]},
            "nextRetryAt": {"type": ["string", "null"], "format": "date-time"}, "at": TIMESTAMP})},
        "nextCursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
    }),
})
_API_KEY = {
    "keyId": INTEGER_ID, "name": {"type": "string"},
    "hint": {"type": "string", "description": "the key's last four characters, to tell keys apart"},
    "scopes": {"type": "array", "items": {"enum": list(SCOPES)}},
    "assets": {"type": ["array", "null"], "items": {"type": "string"}, "description": "null: every asset"},
    "expiresAt": {"type": ["string", "null"], "format": "date-time", "description": "null: never"},
    "createdAt": TIMESTAMP, "revokedAt": {"type": ["string", "null"], "format": "date-time"},
}
_STORED_ROW = {"type": ["object", "null"], "description": "the target's row as stored (no secret, no digest); "
                                                          "null: it did not exist before / no longer does"}
SCHEMAS.update({
    "NewApiKey": _request_schema(NewApiKey),
    "ApiKey": _object(_API_KEY),
    "NewApiKeyText": _object({**_API_KEY, "key": {"type": ["string", "null"], "pattern": "^bak_[A-Za-z0-9_-]{43}$",
                                                  "description": "the key, shown in this answer only (null in an "
                                                                 "idempotent replay: its text is never stored)"}},
                             ["keyId", "key", "name", "scopes", "assets", "expiresAt", "createdAt"]),
    "ApiKeys": _object({"keys": {"type": "array", "items": _ref("ApiKey")}}),
    "AuditEntry": _object({
        "id": INTEGER_ID, "cursor": _FEED_CURSOR, "at": TIMESTAMP,
        "actor": {**_ACTOR, "description": "the API key (keyId null: the command line or the configuration); "
                                           "null without authentication"},
        "requestId": {"type": ["string", "null"], "description": "the request's X-Request-ID"},
        "action": {"enum": list(AUDIT_ACTIONS)},
        "target": {"type": "string", "description": "kind:id, e.g. account:9, asset:USD, key:3, webhook:2"},
        "before": _STORED_ROW, "after": _STORED_ROW,
    }),
    "AuditLog": _object({"entries": {"type": "array", "items": _ref("AuditEntry"), "maxItems": 1000},
                         "nextCursor": {**_FEED_CURSOR, "description": "pass as `after` to read on"}}),
})
SCHEMAS.update(_NESTED)  # PostItem, VoidItem: referenced from TransferBatch

PROBLEM_CODES = {
    400: "malformed_json: the body is not UTF-8 JSON, or an object repeats a member name (RFC 7493 §2.3) / "
         "header_repeated: Idempotency-Key given more than once",
    401: "unauthorized: API key or token missing, wrong, revoked or expired (only when authentication is on)",
    403: "forbidden: the API key lacks the route's scope (requiredScope), or is limited to other assets "
         "(requiredAsset)",
    404: "user_not_found / account_not_found / asset_not_found / transfer_not_found / webhook_not_found / "
         "api_key_not_found / route_not_found",
    409: "insufficient_funds / max_balance_exceeded / balance_overflow / account_frozen / account_closed / "
         "account_not_empty / limit_violated / asset_exists / account_exists",
    405: "method_not_allowed (with Allow)",
    408: "request_timeout: the body did not arrive within BODY_READ_TIMEOUT (the connection is closed)",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error (with errors[]) / same_account / asset_mismatch / system_account / idempotency_key_reused / "
         "webhook_target_not_allowed",
    503: "database_unavailable / service_overloaded (with Retry-After)",
}


def _problems(*statuses: int) -> dict:
    return {str(status): {"description": PROBLEM_CODES[status], "content": {PROBLEM: {"schema": _ref("Problem")}}}
            for status in statuses}


def _ok(status: int, schema: str, description: str, location: bool = False, replay: bool = False) -> dict:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref(schema)}}}
    headers = {}
    if location:
        headers["Location"] = {"schema": {"type": "string"}, "description": "the new resource"}
    if replay:
        headers["Idempotent-Replayed"] = {"schema": {"const": "true"},
                                          "description": "present when this is a stored outcome replayed"}
    if headers:
        response["headers"] = headers
    return {str(status): response}


def _body(schema: str, required: bool = True) -> dict:
    return {"required": required, "content": {JSON: {"schema": _ref(schema)}}}


def _path_id(description: str) -> dict:
    return {"name": "id", "in": "path", "required": True, "schema": INTEGER_ID, "description": description}


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    "description": "Stripe-style: a retry with the same key, route and body replays the stored outcome",
}
BODY_PROBLEMS = (400, 401, 408, 413, 415, 422, 503)
# what the HTTP layer may answer on any route, before a handler runs (server/http/http_edges.py)
HTTP_LAYER_PROBLEMS = {"description": "malformed_http_request (400: not HTTP/1.1 as RFC 9112 frames it) / "
                                      "expectation_failed (417: an Expect other than 100-continue) / "
                                      "unsupported_transfer_coding (501: a Transfer-Encoding other than chunked)",
                       "content": {PROBLEM: {"schema": _ref("Problem")}}}
READ_PROBLEMS = (401, 404, 422, 503)
LIST_PROBLEMS = (401, 422, 503)


def _query(name: str, schema: dict, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            **({"description": description} if description else {})}


PAGE_PARAMETERS = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": HISTORY_MAX_LIMIT, "default": HISTORY_DEFAULT_LIMIT}),
    _query("cursor", {"type": "string", "pattern": "^[A-Za-z0-9_-]{11}$"},
           "`nextCursor` of the previous page; other values are refused (422)"),
]
FILTER_PARAMETERS = [
    _query("from", TIMESTAMP, "RFC 3339: only what was created at or after it"),
    _query("to", TIMESTAMP, "RFC 3339: only what was created before it"),
    _query("code", {"type": "string", "pattern": "^[a-z0-9_]{1,32}$"}, "only transfers with this code"),
]

_ONE_TYPE = "|".join(t.replace(".", "\\.") for t in EVENT_TYPES)
FEED_FILTERS = [
    _query("types", {"type": "string", "pattern": f"^({_ONE_TYPE})(,({_ONE_TYPE}))*$"},
           "comma-separated event types: " + ", ".join(EVENT_TYPES)),
    _query("asset", {"type": "string", "pattern": ASSET_CODE_PATTERN}, "only events of this asset"),
    _query("accountId", INTEGER_ID, "only events of this account (either side of a transfer)"),
]


def _read(summary: str, schema: str, description: str, parameters: list, problems=READ_PROBLEMS) -> dict:
    return {"summary": summary, "parameters": parameters,
            "responses": {**_ok(200, schema, description), **_problems(*problems)}}


def _mutation(summary: str, body: str, ok: dict, *problems: int, parameters: list | None = None,
              body_required: bool = True) -> dict:
    return {
        "summary": summary,
        "parameters": [*(parameters or []), IDEMPOTENCY_KEY],
        "requestBody": _body(body, required=body_required),
        "responses": {**ok, **_problems(*sorted({*problems, *BODY_PROBLEMS}))},
    }


# operationId of every operation (code generators name their functions after them)
OPERATION_IDS = {
    ("patch", "/api/balance"): "changeBalance",
    ("post", "/api/assets"): "createAsset", ("get", "/api/assets"): "listAssets",
    ("get", "/api/assets/{code}"): "getAsset",
    ("post", "/api/accounts"): "createAccount", ("get", "/api/accounts/{id}"): "getAccount",
    ("patch", "/api/accounts/{id}"): "updateAccount", ("post", "/api/accounts/{id}/freeze"): "freezeAccount",
    ("post", "/api/accounts/{id}/unfreeze"): "unfreezeAccount", ("post", "/api/accounts/{id}/close"): "closeAccount",
    ("post", "/api/accounts/{id}/credit"): "creditAccount", ("post", "/api/accounts/{id}/debit"): "debitAccount",
    ("get", "/api/accounts/{id}/history"): "getAccountHistory",
    ("get", "/api/accounts/{id}/balance"): "getAccountBalance",
    ("post", "/api/users"): "createUser", ("get", "/api/users/{id}"): "getUser",
    ("get", "/api/users/{id}/history"): "getUserHistory", ("post", "/api/users/{id}/credit"): "creditUser",
    ("post", "/api/users/{id}/debit"): "debitUser",
    ("post", "/api/transfers"): "createTransfer", ("get", "/api/transfers"): "listTransfers",
    ("get", "/api/transfers/{id}"): "getTransfer", ("post", "/api/transfers/{id}/post"): "postPendingTransfer",
    ("post", "/api/transfers/{id}/void"): "voidPendingTransfer",
    ("post", "/api/transfers/{id}/reverse"): "reverseTransfer",
    ("post", "/api/transfers/batch"): "createTransferBatch",
    ("get", "/api/events"): "listEvents", ("get", "/api/events/stream"): "streamEvents",
    ("post", "/api/webhooks"): "createWebhook", ("get", "/api/webhooks"): "listWebhooks",
    ("get", "/api/webhooks/{id}"): "getWebhook", ("patch", "/api/webhooks/{id}"): "updateWebhook",
    ("delete", "/api/webhooks/{id}"): "deleteWebhook",
    ("get", "/api/webhooks/{id}/deliveries"): "listWebhookDeliveries",
    ("post", "/api/keys"): "createApiKey", ("get", "/api/keys"): "listApiKeys",
    ("delete", "/api/keys/{id}"): "revokeApiKey", ("get", "/api/audit"): "listAuditEntries",
    ("get", "/api/health"): "getHealth", ("get", "/api/openapi.json"): "getOpenApiDocument",
    ("get", "/metrics"): "getMetrics",
}
TAGS = [
    {"name": "balance", "description": "The signed change of a user's balance (`PATCH /api/balance`)"},
    {"name": "assets", "description": "Assets (currencies, points) and their system accounts"},
    {"name": "accounts", "description": "Accounts: open, read, limits, freeze, close, credit, debit, history"},
    {"name": "users", "description": "Users and their default-asset accounts"},
    {"name": "transfers", "description": "Transfers, pending transfers (holds), batches and reversals"},
    {"name": "events", "description": "The change feed: every committed change, once, in an order that never changes"},
    {"name": "webhooks", "description": "Endpoints that get the change feed as signed POSTs (Standard Webhooks)"},
    {"name": "keys", "description": "Scoped API keys: made, listed, revoked"},
    {"name": "audit", "description": "The audit log: every change that is not a transfer, with who made it"},
    {"name": "operations", "description": "Health, metrics and this document"},
]


def _tag(path: str) -> str:
    resource = path.split("/")[2] if path.startswith("/api/") else "metrics"
    return (resource if resource in {"balance", "assets", "accounts", "users", "transfers", "events", "webhooks",
                                     "keys", "audit"}
            else "operations")


@functools.cache
def openapi_document(with_security: bool = True, scopes: frozenset[tuple[str, str, str]] = frozenset()) -> dict:
    """The OpenAPI 3.1 document (built once per process for each argument): ``with_security``,
    bearer authentication is declared (keys are required); without, no operation carries it.
    ``scopes`` holds (method, path, scope) of the routes that need a scope
    (``server.http.app.SCOPED_OPERATIONS``): each such operation names it in ``x-required-scope``
    and its description, and can answer 403."""
    user_id = _path_id("user id")
    account_id = _path_id("account id")
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "balance-api",
            "version": "1",
            "description": "A double-entry ledger in PostgreSQL: assets, accounts and transfers in minor "
                           "units, each movement one atomic statement writing both sides. Errors are RFC 9457 "
                           "problem details.",
            "contact": {"name": "balance-api maintainers"},
        },
        # relative: the service that serves this document (RFC 3986 §4.2 reference, OpenAPI 3.1 §4.8.5)
        "servers": [{"url": "/", "description": "the service serving this document"}],
        "tags": TAGS,
        "paths": {
            "/api/balance": {"patch": _mutation(
                "Apply a signed change to a user's account (a transfer with the asset's system account)",
                "BalanceChange", _ok(200, "BalanceChanged", "applied; the new balance", replay=True), 404, 409,
            )},
            "/api/assets": {
                "post": _mutation("Create an asset and its system account", "NewAsset",
                                  _ok(201, "Asset", "created", location=True, replay=True), 409),
                "get": _read("List the assets", "Assets", "every asset", [], LIST_PROBLEMS),
            },
            "/api/assets/{code}": {"get": _read(
                "Read an asset and its supply", "AssetWithSupply", "the asset",
                [{"name": "code", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": ASSET_CODE_PATTERN}}])},
            "/api/accounts": {"post": _mutation(
                "Open an account (a user's, or the operator's without userId)", "NewAccount",
                _ok(201, "Account", "opened", location=True, replay=True), 404, 409,
            )},
            "/api/accounts/{id}": {
                "get": _read("Read an account", "Account", "the account", [account_id]),
                "patch": _mutation("Change an account's name, limits or metadata", "AccountPatch",
                                   _ok(200, "Account", "changed", replay=True), 404, 409, parameters=[account_id]),
            },
            **{f"/api/accounts/{{id}}/{action}": {"post": _mutation(
                summary, "EmptyBody", _ok(200, "Account", "the account", replay=True), 404, 409,
                parameters=[account_id], body_required=False,
            )} for action, summary in (("freeze", "Freeze an account: transfers touching it are refused"),
                                       ("unfreeze", "Unfreeze an account"),
                                       ("close", "Close an account with balance 0, for good"))},
            "/api/accounts/{id}/credit": {"post": _mutation(
                "Credit an account from its asset's system account", "AccountCreditOrDebit",
                _ok(200, "EntryApplied", "applied; the new balance", replay=True), 404, 409, parameters=[account_id],
            )},
            "/api/accounts/{id}/debit": {"post": _mutation(
                "Debit an account to its asset's system account", "AccountCreditOrDebit",
                _ok(200, "EntryApplied", "applied; the new balance", replay=True), 404, 409, parameters=[account_id],
            )},
            "/api/accounts/{id}/history": {"get": _read(
                "An account's ledger entries, newest first (keyset pagination)", "AccountHistory",
                "one page of entries", [account_id, *PAGE_PARAMETERS, *FILTER_PARAMETERS])},
            "/api/accounts/{id}/balance": {"get": _read(
                "An account's balance at a moment", "BalanceAt", "the balance right after the last change at "
                "or before `at` (0 before the first)",
                [account_id, _query("at", TIMESTAMP, "RFC 3339; default: now")])},
            "/api/users": {"post": {
                "summary": "Open a user with its default-asset account at balance 0",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": _body("EmptyBody", required=False),
                "responses": {**_ok(201, "User", "created", location=True), **_problems(*BODY_PROBLEMS)},
            }},
            "/api/users/{id}": {"get": _read("Read a user: its default-asset balance and its accounts", "User",
                                             "the user", [user_id])},
            "/api/users/{id}/history": {"get": _read(
                "A user's default-asset ledger entries, newest first (keyset pagination)", "History",
                "one page of entries", [user_id, *PAGE_PARAMETERS])},
            "/api/users/{id}/credit": {"post": _mutation(
                "Credit a user's account from the asset's system account (opens the account if needed)",
                "CreditOrDebit", _ok(200, "EntryApplied", "applied; the new balance", replay=True), 404, 409,
                parameters=[user_id],
            )},
            "/api/users/{id}/debit": {"post": _mutation(
                "Debit a user's account to the asset's system account (refused if it would overdraw)",
                "CreditOrDebit", _ok(200, "EntryApplied", "applied; the new balance", replay=True), 404, 409,
                parameters=[user_id],
            )},
            "/api/transfers": {
                "post": _mutation("Move money between two accounts of one asset, atomically", "TransferRequest",
                                  {**_ok(201, "Transfer", "transferred", location=True, replay=True),
                                   **_ok(200, "Transfer", "made before with this reference", replay=True)},
                                  404, 409),
                "get": _read("List transfers, newest first (keyset pagination)", "Transfers", "one page",
                             [_query("accountId", INTEGER_ID, "only this account's transfers"),
                              _query("reference", {"type": "string", "pattern": "^[ -~]{1,128}$"},
                                     "the transfer with this client reference (at most one)"),
                              *PAGE_PARAMETERS, *FILTER_PARAMETERS], READ_PROBLEMS),
            },
            "/api/transfers/{id}": {"get": _read("Read a transfer", "Transfer", "the transfer",
                                                 [_path_id("transfer id")], (401, 404, 405, 422, 503))},
            "/api/transfers/{id}/post": {"post": _mutation(
                "Post a pending transfer (a hold): capture all of it, or `amount` of it and release the rest",
                "PostPendingTransfer", _ok(200, "Transfer", "posted", replay=True), 404, 409,
                parameters=[_path_id("transfer id")], body_required=False,
            )},
            "/api/transfers/batch": {"post": _mutation(
                "Apply up to TRANSFER_BATCH_MAX_ITEMS transfers, posts and voids in order in one transaction; "
                "atomic: all or nothing", "TransferBatch", _ok(200, "TransferBatchResult", "one result per item",
                                                               replay=True),
            )},
            "/api/transfers/{id}/reverse": {"post": _mutation(
                "Reverse a transfer, all that is left of it or `amount`: a transfer the opposite way",
                "ReverseTransfer", {**_ok(201, "Transfer", "reversed", location=True),
                                    **_ok(200, "Transfer", "made before with this reference", replay=True)},
                404, 409, parameters=[_path_id("transfer id")], body_required=False,
            )},
            "/api/transfers/{id}/void": {"post": _mutation(
                "Void a pending transfer (a hold): release all of it", "EmptyBody",
                _ok(200, "Transfer", "voided", replay=True), 404, 409,
                parameters=[_path_id("transfer id")], body_required=False,
            )},
            "/api/events": {"get": _read(
                "The change feed from a cursor, oldest first; with `wait`, a long poll", "Events",
                "at most `limit` events after `after` (none after `wait` seconds: an empty page)",
                [_query("after", _FEED_CURSOR, "an event's id or a `nextCursor`; absent: from the beginning"),
                 _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                 *FEED_FILTERS,
                 _query("wait", {"type": "integer", "minimum": 0, "maximum": 30, "default": 0},
                        "seconds to wait for an event when there is none yet")], READ_PROBLEMS)},
            "/api/events/stream": {"get": {
                "summary": "The change feed as Server-Sent Events; resume with Last-Event-ID",
                "parameters": [_query("after", _FEED_CURSOR, "absent: from the beginning"), *FEED_FILTERS,
                               {"name": "Last-Event-ID", "in": "header", "required": False, "schema": _FEED_CURSOR,
                                "description": "the last event's id a client got; wins over `after`"}],
                "responses": {"200": {"description": "events as they commit: `id:` the event's id, `event:` its "
                                                     "type, `data:` the Event document",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **_problems(*READ_PROBLEMS)},
            }},
            "/api/webhooks": {
                "post": _mutation("Create a webhook endpoint; its signing secret is in this answer only", "NewWebhook",
                                  _ok(201, "NewWebhookSecret", "created", location=True, replay=True)),
                "get": _read("List the webhook endpoints", "Webhooks", "every endpoint", [], LIST_PROBLEMS),
            },
            "/api/webhooks/{id}": {
                "get": _read("Read a webhook endpoint", "Webhook", "the endpoint", [_path_id("webhook id")]),
                "patch": _mutation("Change a webhook endpoint; status enabled starts a disabled one again",
                                   "WebhookPatch", _ok(200, "Webhook", "changed", replay=True), 404,
                                   parameters=[_path_id("webhook id")]),
                "delete": {"summary": "Delete a webhook endpoint: nothing more is sent to it",
                           "parameters": [_path_id("webhook id"), IDEMPOTENCY_KEY],
                           "responses": {"204": {"description": "deleted"}, **_problems(401, 404, 422, 503)}},
            },
            "/api/webhooks/{id}/deliveries": {"get": _read(
                "A webhook endpoint's delivery attempts, newest first (keyset pagination)", "WebhookDeliveries",
                "one page of attempts", [_path_id("webhook id"), *PAGE_PARAMETERS])},
            "/api/keys": {
                "post": _mutation("Make an API key; its text is in this answer only", "NewApiKey",
                                  _ok(201, "NewApiKeyText", "made", location=True, replay=True), 404),
                "get": _read("List every API key ever made (never their text)", "ApiKeys", "every key", [],
                             LIST_PROBLEMS),
            },
            "/api/keys/{id}": {"delete": {
                "summary": "Revoke an API key: refused from this answer on, by every worker",
                "parameters": [_path_id("key id"), IDEMPOTENCY_KEY],
                "responses": {"204": {"description": "revoked (or was already)"}, **_problems(401, 404, 422, 503)}}},
            "/api/audit": {"get": _read(
                "The audit log from a cursor, oldest first (keyset pagination)", "AuditLog",
                "at most `limit` entries after `after`",
                [_query("target", {"type": "string", "pattern": "^(asset|account|key|webhook):[A-Za-z0-9_]{1,32}$"},
                        "only this target's entries, e.g. account:9"),
                 _query("after", _FEED_CURSOR, "an entry's cursor or a `nextCursor`; absent: from the beginning"),
                 _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})],
                READ_PROBLEMS)},
            "/api/health": {"get": {
                "summary": "Liveness and database reachability",
                "security": [],
                "responses": {**_ok(200, "Health", "the database answers"), **_problems(503)},
            }},
            "/api/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}},
                              **_problems(401)},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics of all workers (text exposition format)",
                "security": [],
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }},
        },
        # Authentication is optional (REQUIRE_API_KEY, API_TOKEN, API_TOKENS_FILE): none, or a key.
        "security": [{}, {"bearerAuth": []}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "an API key (balance-api keys create, POST "
                                                              "/api/keys) or a configured API_TOKEN"}},
        },
    }
    scope_of = {(method, path): scope for method, path, scope in scopes}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if scope := scope_of.get((method, path)):
                operation["x-required-scope"] = scope
                operation["summary"] += f" (scope {scope})"
                if with_security:
                    operation["responses"].update(_problems(403))
            operation["operationId"] = OPERATION_IDS[(method, path)]
            operation["tags"] = [_tag(path)]
            operation.setdefault("description", operation["summary"] + ". Every error is RFC 9457 problem "
                                 "details with a stable `code`; the responses list them by status.")
            operation["responses"]["default"] = HTTP_LAYER_PROBLEMS
            if not with_security:
                operation.pop("security", None)
                operation["responses"].pop("401", None)
    if not with_security:
        del document["security"]
        del document["components"]["securitySchemes"]
    return document
