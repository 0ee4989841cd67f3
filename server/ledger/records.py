"""The values the ledger's functions take and return, shared by its modules (no SQL here).

Balances and amounts are integers in minor units (PostgreSQL ``bigint``). ``Db`` is what every
ledger function takes: an asyncpg pool, or a connection (inside a caller's transaction).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

Db = asyncpg.Pool | asyncpg.Connection


# The three types below are made for every balance change on the hot path: NamedTuples, whose
# construction and hashing run in C (a frozen dataclass's run Python code per field; measured).
class AccountRef(NamedTuple):
    """An account named by its id, or as user ``user_id``'s account in asset ``asset_id``."""

    account_id: int | None = None
    user_id: int | None = None
    asset_id: int | None = None


class BalanceChangeOrder(NamedTuple):
    """A signed change (minor units, not 0) between an account and its asset's system account.

    ``kind`` is the account's ledger entry kind (``adjustment``, ``credit`` or ``debit``), ``code``
    the transfer's code.
    """

    amount: int
    kind: str = "adjustment"
    code: str = "adjustment"
    description: str | None = None
    idempotency_key: str | None = None
    # the API key that sends it: refused when revoked (server/ledger/batching.py); the change's creator
    key_id: int | None = None


class AppliedChange(NamedTuple):
    """An accepted change: the account (and its user), its new balance, the transfer and the
    account's ledger entry."""

    account_id: int
    user_id: int | None
    balance: int
    transfer_id: int
    entry_id: int


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer (amount > 0, minor units) and the balances of its two sides right after it
    (None for a system account, whose entries carry no running balance)."""

    transfer_id: int
    asset: str
    from_account_id: int
    to_account_id: int
    from_user_id: int | None
    to_user_id: int | None
    amount: int
    code: str
    description: str | None
    metadata: dict[str, str]
    created_at: dt.datetime
    from_balance: int | None
    to_balance: int | None
    status: str = "posted"
    expires_at: dt.datetime | None = None
    posted_amount: int | None = None
    reference: str | None = None
    reverses: int | None = None
    reversed_amount: int = 0
    made_pending: bool = False  # made as a hold (whatever became of it)
    replayed: bool = False  # answered from its reference: made before, not now
    created_by: Actor | None = None  # the API key that made it (key id and name); None without authentication


def transfer_from_row(row) -> Transfer:
    """A :class:`Transfer` from a row (or composite value) of the view ``transfer_documents``
    (server/ledger/sql/documents.sql)."""
    return Transfer(row["id"], row["asset"], row["from_account_id"], row["to_account_id"], row["from_user_id"],
                    row["to_user_id"], row["amount"], row["code"], row["description"],
                    json.loads(row["metadata"]) if row["metadata"] else {}, row["created_at"],
                    row["from_balance"], row["to_balance"], row["status"], row["expires_at"], row["posted_amount"],
                    row["reference"], row["reverses"], row["reversed_amount"], row["made_pending"],
                    created_by=None if row["created_by"] is None else Actor(row["created_by"], row["created_by_name"]))


@dataclass(frozen=True, slots=True)
class TransferOrder:
    """What ``POST /api/transfers`` asks: the two sides (:class:`AccountRef`; a side named by user
    is that user's account in ``source.asset_id``, which both sides carry), amount > 0 (minor
    units), the transfer code, description and metadata."""

    source: AccountRef
    destination: AccountRef
    amount: int
    code: str = "transfer"
    description: str | None = None
    metadata: dict[str, str] | None = None
    pending: bool = False
    timeout_seconds: int | None = None
    reference: str | None = None
    key_id: int | None = None  # the API key that sends it: the transfer's creator (createdBy)


@dataclass(frozen=True, slots=True)
class ResolvePending:
    """Post (``post``; ``amount`` minor units, None for all) or void the hold ``transfer_id``."""

    transfer_id: int
    post: bool
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One page of a newest-first listing: ids below ``before``, at most ``limit`` rows, optional
    filters on the transfer code and on ``created_from <= created_at < created_to``."""

    before: int
    limit: int
    code: str | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Asset:
    """An asset: ``code``, ``scale`` (decimal places of one minor unit), its system account."""

    asset_id: int
    code: str
    scale: int
    name: str | None
    default: bool
    created_at: dt.datetime
    system_account_id: int


class Actor(NamedTuple):
    """Who makes a change: an API key (``key_id``, ``name``), an ``API_TOKEN`` (``key_id`` None,
    ``name`` "API_TOKEN"), or nobody (all None: authentication off); ``request_id`` is the HTTP
    request's ``X-Request-ID`` (None from the command line)."""

    key_id: int | None = None
    name: str | None = None
    request_id: str | None = None

    def parameters(self) -> tuple[int | None, str | None, str | None]:
        """The actor parameters of record_audit() (server/ledger/sql/audit.sql), in its order."""
        return self.key_id, self.name, self.request_id

    def document(self) -> dict[str, Any] | None:
        """``{"keyId", "name"}``, or None for nobody (the API's ``actor`` and ``createdBy``)."""
        return None if self.name is None else {"keyId": self.key_id, "name": self.name}


NOBODY = Actor()
COMMAND_LINE = Actor(None, "balance-api (command line)")
CONFIGURATION = Actor(None, "balance-api (API_TOKEN / API_TOKENS_FILE)")  # a configured token made a key
