"""The OpenAPI 3.1 description of the API, served at ``GET /api/openapi.json``.

Request-body schemas are generated from the pydantic models that validate them (JSON Schema
2020-12, the dialect of OpenAPI 3.1), so the document and the validation cannot drift apart.
``tests/test_openapi.py`` checks that every served route is described and the reverse, and the
suite validates responses against this document and runs Schemathesis on it.
"""

from __future__ import annotations

import functools
from typing import Any

from .request_bodies import (
    HISTORY_DEFAULT_LIMIT,
    HISTORY_MAX_LIMIT,
    MAX_BIGINT,
    BalanceChange,
    CreditOrDebit,
    NewUser,
    TransferRequest,
)

JSON = "application/json"
PROBLEM = "application/problem+json"

INTEGER_ID = {"type": "integer", "minimum": 1, "maximum": MAX_BIGINT}
MINOR_UNITS = {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT, "description": "minor units"}
TIMESTAMP = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or list(properties),
            "additionalProperties": False}


def _request_schema(model) -> dict:
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


SCHEMAS: dict[str, Any] = {
    "BalanceChange": _request_schema(BalanceChange),
    "CreditOrDebit": _request_schema(CreditOrDebit),
    "TransferRequest": _request_schema(TransferRequest),
    "NewUser": _request_schema(NewUser),
    "BalanceChanged": _object({"userId": INTEGER_ID, "balance": MINOR_UNITS}),
    "EntryApplied": _object({"userId": INTEGER_ID, "balance": MINOR_UNITS, "entryId": INTEGER_ID}),
    "Account": _object({"userId": INTEGER_ID, "balance": MINOR_UNITS, "updatedAt": TIMESTAMP}),
    "Transfer": _object({
        "transferId": INTEGER_ID, "fromUserId": INTEGER_ID, "toUserId": INTEGER_ID,
        "amount": {**INTEGER_ID, "description": "minor units"},
        "description": {"type": ["string", "null"], "maxLength": 500},
        "createdAt": TIMESTAMP,
        "fromBalance": {**MINOR_UNITS, "description": "sender's balance right after the transfer"},
        "toBalance": {**MINOR_UNITS, "description": "receiver's balance right after the transfer"},
    }),
    "LedgerEntry": _object({
        "entryId": INTEGER_ID,
        "amount": {"type": "integer", "minimum": -MAX_BIGINT, "maximum": MAX_BIGINT, "not": {"const": 0},
                   "description": "signed minor units"},
        "balanceAfter": MINOR_UNITS,
        "kind": {"enum": ["opening", "adjustment", "credit", "debit", "transfer_in", "transfer_out"]},
        "description": {"type": ["string", "null"], "maxLength": 500},
        "idempotencyKey": {"type": ["string", "null"], "maxLength": 255},
        "transferId": {"oneOf": [INTEGER_ID, {"type": "null"}]},
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

PROBLEM_CODES = {
    400: "malformed_json: the body is not JSON",
    401: "unauthorized: bearer token missing or wrong (only when the service is configured with tokens)",
    404: "user_not_found / transfer_not_found / route_not_found",
    409: "insufficient_funds / balance_overflow",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error (with errors[]) / same_account / idempotency_key_reused",
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
BODY_PROBLEMS = (400, 401, 413, 415, 422, 503)
READ_PROBLEMS = (401, 404, 422, 503)


def _mutation(summary: str, body: str, ok: dict, *problems: int, parameters: list | None = None) -> dict:
    return {
        "summary": summary,
        "parameters": [*(parameters or []), IDEMPOTENCY_KEY],
        "requestBody": _body(body),
        "responses": {**ok, **_problems(*sorted({*problems, *BODY_PROBLEMS}))},
    }


@functools.cache
def openapi_document() -> dict:
    """The OpenAPI 3.1 document (built once per process)."""
    user_id = _path_id("user id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "balance-api",
            "version": "1",
            "description": "Account balances in minor units, each change one atomic PostgreSQL statement, "
                           "with a ledger entry per accepted change. Errors are RFC 9457 problem details.",
        },
        "paths": {
            "/api/balance": {"patch": _mutation(
                "Apply a signed change to a user's balance", "BalanceChange",
                _ok(200, "BalanceChanged", "applied; the new balance", replay=True), 404, 409,
            )},
            "/api/users": {"post": {
                "summary": "Open a user with balance 0",
                "requestBody": _body("NewUser", required=False),
                "responses": {**_ok(201, "Account", "created", location=True), **_problems(*BODY_PROBLEMS)},
            }},
            "/api/users/{id}": {"get": {
                "summary": "Read a user's balance",
                "parameters": [user_id],
                "responses": {**_ok(200, "Account", "the user"), **_problems(*READ_PROBLEMS)},
            }},
            "/api/users/{id}/history": {"get": {
                "summary": "A user's ledger entries, newest first (keyset pagination)",
                "parameters": [
                    user_id,
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": HISTORY_MAX_LIMIT,
                                "default": HISTORY_DEFAULT_LIMIT}},
                    {"name": "cursor", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{11}$"},
                     "description": "`nextCursor` of the previous page; other values are refused (422)"},
                ],
                "responses": {**_ok(200, "History", "one page of entries"), **_problems(*READ_PROBLEMS)},
            }},
            "/api/users/{id}/credit": {"post": _mutation(
                "Credit a user (add a positive amount)", "CreditOrDebit",
                _ok(200, "EntryApplied", "applied; the new balance", replay=True), 404, 409,
                parameters=[user_id],
            )},
            "/api/users/{id}/debit": {"post": _mutation(
                "Debit a user (take a positive amount; refused if it would overdraw)", "CreditOrDebit",
                _ok(200, "EntryApplied", "applied; the new balance", replay=True), 404, 409,
                parameters=[user_id],
            )},
            "/api/transfers": {"post": _mutation(
                "Move money between two users atomically", "TransferRequest",
                _ok(201, "Transfer", "transferred", location=True, replay=True), 404, 409,
            )},
            "/api/transfers/{id}": {"get": {
                "summary": "Read a transfer",
                "parameters": [_path_id("transfer id")],
                "responses": {**_ok(200, "Transfer", "the transfer"), **_problems(*READ_PROBLEMS)},
            }},
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
        # Authentication is optional (API_TOKEN / API_TOKENS_FILE): either no credentials or a token.
        "security": [{}, {"bearerAuth": []}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "when the service is configured with API_TOKEN"}},
        },
    }
