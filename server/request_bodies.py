"""Request bodies: reading, JSON parsing and validation into typed models.

Parsing follows RFC 8259 with Python's ``json`` module; validation uses pydantic in strict mode, so
``true``, ``"2"``, ``2.5``, ``2.0``, ``NaN`` and ``1e400`` are not integers, unknown fields are
refused, and every error names its field.
"""

from __future__ import annotations

import json
from typing import Annotated, TypeVar

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .problems import MalformedJson, UnsupportedMediaType, ValidationFailed

# PostgreSQL bigint holds -9223372036854775808..9223372036854775807 (PostgreSQL docs §8.1.1);
# amounts stay within ±MAX_BIGINT so that negating one never overflows.
MAX_BIGINT = 2**63 - 1
# An integer literal longer than this cannot fit in a bigint; parsing stops there (and never hits
# Python's 4300-digit int conversion limit), handing pydantic a value it reports as out of range.
_MAX_INT_DIGITS = 20
_OUT_OF_RANGE = 10**_MAX_INT_DIGITS

HISTORY_DEFAULT_LIMIT = 50  # GET /api/users/{id}/history?limit=
HISTORY_MAX_LIMIT = 500

Amount = Annotated[int, Field(ge=-MAX_BIGINT, le=MAX_BIGINT, description="signed, minor units, not 0")]
UserId = Annotated[int, Field(ge=1, le=MAX_BIGINT)]


class StrictBody(BaseModel):
    """Base of request bodies: strict types, no unknown fields, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=False)


class BalanceChange(StrictBody):
    """Body of ``PATCH /api/balance``: ``{"userId": <int >= 1>, "amount": <signed int, not 0>}``."""

    user_id: UserId = Field(alias="userId")
    amount: Annotated[Amount, Field(json_schema_extra={"not": {"const": 0}})]

    @field_validator("amount")
    @classmethod
    def _amount_is_not_zero(cls, amount: int) -> int:
        if amount == 0:
            raise ValueError("must not be zero")
        return amount


PositiveAmount = Annotated[int, Field(ge=1, le=MAX_BIGINT, description="minor units, > 0")]


def _storable_text(text: str) -> str:
    # PostgreSQL text holds neither NUL nor unpaired surrogates (JSON allows "\u0000", "\ud800").
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (U+0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no unpaired surrogate code points)") from None
    return text


Description = Annotated[
    str,
    Field(min_length=1, max_length=500, pattern="^[^\\x00]*$",
          description="1-500 characters of valid Unicode text: no NUL, no unpaired surrogate escapes"),
    AfterValidator(_storable_text),
]


class NewUser(StrictBody):
    """Body of ``POST /api/users``: ``{}`` (or no body at all); a new user starts at balance 0."""


class CreditOrDebit(StrictBody):
    """Body of ``POST /api/users/{id}/credit`` and ``.../debit``: ``{"amount": > 0, "description"?}``."""

    amount: PositiveAmount
    description: Description | None = None


class TransferRequest(StrictBody):
    """Body of ``POST /api/transfers``: ``{"fromUserId", "toUserId", "amount": > 0, "description"?}``."""

    from_user_id: UserId = Field(alias="fromUserId")
    to_user_id: UserId = Field(alias="toUserId")
    amount: PositiveAmount
    description: Description | None = None


Body = TypeVar("Body", bound=StrictBody)


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) <= _MAX_INT_DIGITS:
        return int(literal)
    return -_OUT_OF_RANGE if literal.startswith("-") else _OUT_OF_RANGE


def _reason(message: str) -> str:
    return message.removeprefix("Value error, ")


def parse_body(raw: bytes, model: type[Body]) -> Body:
    """Parse ``raw`` (a UTF-8 JSON document) into ``model``.

    Raises :class:`~server.problems.MalformedJson` (400) when ``raw`` is not JSON and
    :class:`~server.problems.ValidationFailed` (422) listing each field that is missing, unknown,
    of the wrong type or out of range.
    """
    try:
        document = json.loads(raw, parse_int=_parse_int)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError included
        raise MalformedJson(f"The body is not valid JSON: {error}.") from None
    try:
        return model.model_validate(document)
    except ValidationError as error:
        errors = [
            {"field": ".".join(str(part) for part in problem["loc"]) or "(body)", "reason": _reason(problem["msg"])}
            for problem in error.errors(include_url=False)
        ]
        raise ValidationFailed(errors) from None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def canonical_json(body: StrictBody) -> str:
    """The validated body as canonical JSON (aliases, sorted keys): what an idempotency key's
    fingerprint compares, so ``{"a":1,"b":2}`` and ``{ "b": 2, "a": 1 }`` are the same request."""
    return json.dumps(body.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))


async def read_json_body(request: web.Request, model: type[Body]) -> Body:
    """Read and validate ``request``'s body as ``model``.

    Raises :class:`~server.problems.UnsupportedMediaType` (415) unless the Content-Type is JSON,
    aiohttp's ``HTTPRequestEntityTooLarge`` (rendered 413) past ``MAX_BODY_BYTES``, and whatever
    :func:`parse_body` raises.
    """
    if not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"Send the body as application/json, not {request.content_type or 'no content type'}."
        )
    return parse_body(await request.read(), model)
