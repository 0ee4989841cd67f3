"""Request bodies: reading, JSON parsing and validation into typed models.

Parsing follows RFC 8259 with Python's ``json`` module, plus I-JSON's rule (RFC 7493 §2.3) that
member names are unique: ``{"amount": 5, "amount": -99999}`` is refused (400 ``malformed_json``) so
that no proxy or validator in front can read another request than the one executed. Validation uses
pydantic in strict mode, so ``true``, ``"2"``, ``2.5``, ``2.0``, ``NaN`` and ``1e400`` are not
integers, unknown fields are refused, and every error names its field.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from server.http.app_keys import SETTINGS
from server.ledger.api_keys import GLOBAL_SCOPES, SCOPES
from server.ledger.events import EVENT_TYPES
from server.problems import (
    MalformedJson,
    RequestTimeout,
    UnsupportedMediaType,
    UnsupportedTransferCoding,
    ValidationFailed,
)

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


def _storable_text(text: str) -> str:
    # PostgreSQL text and jsonb hold neither NUL nor unpaired surrogates (JSON allows "\u0000", "\ud800").
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (U+0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no unpaired surrogate code points)") from None
    return text


def _text(low: int, high: int, what: str):
    return Annotated[str, Field(min_length=low, max_length=high, pattern="^[^\\x00]*$", description=what),
                     AfterValidator(_storable_text)]


Description = _text(1, 500, "1-500 characters of valid Unicode text: no NUL, no unpaired surrogate escapes")
Name = _text(1, 200, "1-200 characters of valid Unicode text")
Reference = Annotated[str, Field(pattern="^[\x20-\x7e]{1,128}$",
                                 description="the client's own id of a transfer: 1-128 printable ASCII "
                                             "characters, unique among transfers")]
ASSET_CODE_PATTERN = "^[A-Za-z0-9_]{1,32}$"  # bodies, the path's {code} (handlers/paths.py), the OpenAPI document
AssetCode = Annotated[str, Field(pattern=ASSET_CODE_PATTERN, description="e.g. USD, gold_coins")]
TransferCode = Annotated[str, Field(pattern="^[a-z0-9_]{1,32}$",
                                    description="the caller's reason, e.g. topup, spend, bonus, fee")]
# at most 16 string keys (1-64 characters) to string values (at most 512 characters)
Metadata = Annotated[
    dict[_text(1, 64, "metadata key"), Annotated[str, Field(max_length=512, pattern="^[^\\x00]*$"),
                                                 AfterValidator(_storable_text)]],
    Field(max_length=16, description="at most 16 string keys (1-64 characters) to strings (at most 512 characters)"),
]
PositiveAmount = Annotated[int, Field(ge=1, le=MAX_BIGINT, description="minor units, > 0")]
Limit = Annotated[int, Field(ge=0, le=MAX_BIGINT, description="minor units, >= 0")]
AccountId = Annotated[int, Field(ge=1, le=MAX_BIGINT)]


class BalanceChange(StrictBody):
    """Body of ``PATCH /api/balance``: ``{"userId": <int >= 1>, "amount": <signed int, not 0>,
    "asset"?: <code>}`` (the default asset when absent)."""

    user_id: UserId = Field(alias="userId")
    amount: Annotated[Amount, Field(json_schema_extra={"not": {"const": 0}})]
    asset: AssetCode | None = None

    @field_validator("amount")
    @classmethod
    def _amount_is_not_zero(cls, amount: int) -> int:
        if amount == 0:
            raise ValueError("must not be zero")
        return amount


class EmptyBody(StrictBody):
    """Body of ``POST /api/users`` and of freeze/unfreeze/close: ``{}`` (or no body at all)."""



class AccountCreditOrDebit(StrictBody):
    """Body of ``POST /api/accounts/{id}/credit`` and ``.../debit``: ``{"amount": > 0, "code"?,
    "description"?}`` (the account's own asset)."""

    amount: PositiveAmount
    code: TransferCode | None = None
    description: Description | None = None


class CreditOrDebit(AccountCreditOrDebit):
    """Body of ``POST /api/users/{id}/credit`` and ``.../debit``: as for accounts, plus ``"asset"?``
    (the default asset when absent)."""

    asset: AssetCode | None = None


class TransferRequest(StrictBody):
    """Body of ``POST /api/transfers``: each side by ``fromAccountId``/``toAccountId`` or by
    ``fromUserId``/``toUserId`` (that user's account in ``asset``, default asset when absent);
    ``amount`` > 0; optional ``code`` (default ``transfer``), ``description`` and ``metadata``."""

    from_account_id: AccountId | None = Field(None, alias="fromAccountId")
    to_account_id: AccountId | None = Field(None, alias="toAccountId")
    from_user_id: UserId | None = Field(None, alias="fromUserId")
    to_user_id: UserId | None = Field(None, alias="toUserId")
    asset: AssetCode | None = None
    amount: PositiveAmount
    code: TransferCode | None = None
    description: Description | None = None
    metadata: Metadata | None = None
    reference: Reference | None = None
    pending: bool = False
    timeout_seconds: Annotated[int, Field(ge=1, le=2_592_000, description="a hold's timeout in seconds (30 days "
                                                                          "at most)")] | None = Field(
        None, alias="timeoutSeconds")

    @model_validator(mode="after")
    def _each_side_named_once(self) -> TransferRequest:
        for side, account, user in (("from", self.from_account_id, self.from_user_id),
                                    ("to", self.to_account_id, self.to_user_id)):
            if (account is None) == (user is None):
                raise ValueError(f"give exactly one of {side}AccountId and {side}UserId")
        if self.asset is not None and self.from_user_id is None and self.to_user_id is None:
            raise ValueError("asset names the asset of fromUserId/toUserId; accounts have their own")
        if self.timeout_seconds is not None and not self.pending:
            raise ValueError("timeoutSeconds is a hold's timeout: it needs \"pending\": true")
        return self


class ReverseTransfer(StrictBody):
    """Body of ``POST /api/transfers/{id}/reverse``: ``{"amount"?, "code"?, "description"?,
    "reference"?}``; without ``amount``, all that is left to reverse; ``code`` defaults to ``reversal``."""

    amount: PositiveAmount | None = None
    code: TransferCode | None = None
    description: Description | None = None
    reference: Reference | None = None


class PostItem(StrictBody):
    """A batch item posting hold ``post`` (its id): ``{"post", "amount"?}``."""

    post: AccountId
    amount: PositiveAmount | None = None


class VoidItem(StrictBody):
    """A batch item voiding hold ``void`` (its id): ``{"void"}``."""

    void: AccountId


def _item_kind(item: Any) -> str:
    if isinstance(item, dict):
        return "post" if "post" in item else "void" if "void" in item else "transfer"
    return "post" if isinstance(item, PostItem) else "void" if isinstance(item, VoidItem) else "transfer"


BatchItem = Annotated[Annotated[TransferRequest, Tag("transfer")] | Annotated[PostItem, Tag("post")]
                      | Annotated[VoidItem, Tag("void")], Discriminator(_item_kind)]
TRANSFER_BATCH_HARD_LIMIT = 10_000  # TRANSFER_BATCH_MAX_ITEMS may be set up to this


class TransferBatch(StrictBody):
    """Body of ``POST /api/transfers/batch``: ``{"atomic", "transfers": [item, ...]}``; an item is a
    transfer body (as for ``POST /api/transfers``), ``{"post": id, "amount"?}`` or ``{"void": id}``."""

    atomic: bool
    transfers: Annotated[list[BatchItem], Field(min_length=1, max_length=TRANSFER_BATCH_HARD_LIMIT)]


class PostPendingTransfer(StrictBody):
    """Body of ``POST /api/transfers/{id}/post``: ``{"amount"?}``, the amount to capture (minor
    units, at most what is held); without it, all of it."""

    amount: PositiveAmount | None = None


class NewAsset(StrictBody):
    """Body of ``POST /api/assets``: ``{"code", "scale": 0..18, "name"?}``."""

    code: AssetCode
    scale: Annotated[int, Field(ge=0, le=18, description="decimal places of one minor unit: USD 2, gold_coins 0")]
    name: Name | None = None


class NewAccount(StrictBody):
    """Body of ``POST /api/accounts``: ``{"asset", "userId"?, "name"?, "overdraftLimit"?: 0,
    "maxBalance"?: null, "metadata"?: {}}``; without ``userId`` the account is the operator's."""

    asset: AssetCode
    user_id: UserId | None = Field(None, alias="userId")
    name: Name | None = None
    overdraft_limit: Limit = Field(0, alias="overdraftLimit")
    max_balance: Limit | None = Field(None, alias="maxBalance")
    metadata: Metadata | None = None


class AccountPatch(StrictBody):
    """Body of ``PATCH /api/accounts/{id}``: any of ``name``, ``overdraftLimit``, ``maxBalance``
    (null: no ceiling), ``metadata`` (replaces the old object)."""

    name: Name | None = None
    overdraft_limit: Limit | None = Field(None, alias="overdraftLimit")
    max_balance: Limit | None = Field(None, alias="maxBalance")
    metadata: Metadata | None = None


EventType = Literal[EVENT_TYPES]
WebhookUrl = Annotated[str, Field(min_length=1, max_length=2048, pattern="^[hH][tT][tT][pP][sS]?://[!-~]+$",
                                  description="an http:// or https:// URL in printable ASCII, at most 2048 "
                                              "characters")]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES),
                                              description="the event types to send; absent or null: every type")]


def _unique_types(types: list[str] | None) -> list[str] | None:
    if types is not None and len(set(types)) != len(types):
        raise ValueError("must not name a type twice")
    return types


class NewWebhook(StrictBody):
    """Body of ``POST /api/webhooks``: ``{"url", "types"?, "description"?}``."""

    url: WebhookUrl
    types: Annotated[EventTypes | None, AfterValidator(_unique_types)] = None
    description: Description | None = None


class WebhookPatch(StrictBody):
    """Body of ``PATCH /api/webhooks/{id}``: any of ``url``, ``types`` (null: every type),
    ``description``, ``status`` (``enabled`` again after it was disabled, or ``disabled``)."""

    url: WebhookUrl | None = None
    types: Annotated[EventTypes | None, AfterValidator(_unique_types)] = None
    description: Description | None = None
    status: Literal["enabled", "disabled"] | None = None


def _unique_scopes(scopes: list[str]) -> list[str]:
    if len(set(scopes)) != len(scopes):
        raise ValueError("must not name a scope twice")
    return scopes


def _unique_codes(codes: list[str]) -> list[str]:
    if len(set(codes)) != len(codes):
        raise ValueError("must not name an asset twice")
    return codes


Scope = Literal[SCOPES]
MAX_KEY_LIFETIME = 10 * 366 * 86400  # ten years, in seconds


class NewApiKey(StrictBody):
    """Body of ``POST /api/keys``: ``{"name", "scopes": [1-8 of SCOPES], "assets"?: [codes] (null or
    absent: every asset), "expiresInSeconds"?: 1..MAX_KEY_LIFETIME (absent: never)}``."""

    name: Name
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=8), AfterValidator(_unique_scopes)]
    assets: Annotated[list[AssetCode], Field(min_length=1, max_length=100), AfterValidator(_unique_codes)] | None = None
    expires_in_seconds: Annotated[int, Field(ge=1, le=MAX_KEY_LIFETIME)] | None = Field(None, alias="expiresInSeconds")

    @model_validator(mode="after")
    def _limited_keys_have_no_global_scope(self) -> NewApiKey:
        if self.assets is not None and (found := [s for s in self.scopes if s in GLOBAL_SCOPES]):
            raise ValueError(f"a key limited to assets cannot have the scope {found[0]!r} "
                             f"(scopes over every asset: {', '.join(GLOBAL_SCOPES)})")
        return self


Body = TypeVar("Body", bound=StrictBody)


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) <= _MAX_INT_DIGITS:
        return int(literal)
    return -_OUT_OF_RANGE if literal.startswith("-") else _OUT_OF_RANGE


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json.loads``'s object hook: refuse a duplicated member name (I-JSON, RFC 7493 §2.3)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        duplicated = next(name for name, _ in pairs if name in seen or seen.add(name))
        raise ValueError(f"the member name {duplicated!r} appears more than once in one object (RFC 7493 §2.3)")
    return document


# json.loads() with these arguments makes a new decoder per call (1% of the worker's CPU, py-spy)
_DECODER = json.JSONDecoder(parse_int=_parse_int, object_pairs_hook=_unique_members)


def _reason(message: str) -> str:
    return message.removeprefix("Value error, ")


def parse_body(raw: bytes, model: type[Body]) -> Body:
    """Parse ``raw`` (a UTF-8 JSON document) into ``model``.

    Raises :class:`~server.problems.MalformedJson` (400) when ``raw`` is not UTF-8 (RFC 8259 §8.1:
    JSON exchanged between systems MUST be UTF-8; a leading byte order mark is ignored, as it
    allows) or not JSON, and
    :class:`~server.problems.ValidationFailed` (422) listing each field that is missing, unknown,
    of the wrong type or out of range.
    """
    try:
        # strict UTF-8 only: json.loads(bytes) would also take UTF-16 and UTF-32 by their first bytes
        document = _DECODER.decode(raw.decode("utf-8-sig"))
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
    aiohttp's ``HTTPRequestEntityTooLarge`` (rendered 413) past ``MAX_BODY_BYTES``,
    :class:`~server.problems.RequestTimeout` (408, the connection then closed) when the body has
    not all arrived within ``BODY_READ_TIMEOUT`` seconds,
    :class:`~server.problems.UnsupportedTransferCoding` (501) for a ``Transfer-Encoding`` other
    than ``chunked`` (RFC 9112 §6.1: aiohttp would hand over the still-encoded body), and whatever
    :func:`parse_body` raises.
    """
    if "Transfer-Encoding" in request.headers and any(
            coding.strip().lower() != "chunked"
            for value in request.headers.getall("Transfer-Encoding") for coding in value.split(",")):
        raise UnsupportedTransferCoding()
    if not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"Send the body as application/json, not {request.content_type or 'no content type'}."
        )
    if request.content.is_eof():  # the whole body came with the headers (most do): no timer to arm
        return parse_body(await request.read(), model)
    seconds = request.app[SETTINGS].body_read_timeout
    try:
        async with asyncio.timeout(seconds):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(seconds) from None
    return parse_body(raw, model)
