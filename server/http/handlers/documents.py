"""JSON documents of the API: camelCase fields, amounts in minor units, RFC 3339 times."""

from __future__ import annotations

import datetime as dt

from server.ledger.accounts import Account, User
from server.ledger.events import Event
from server.ledger.history import LedgerEntry
from server.ledger.records import AppliedChange, Asset, Transfer


def timestamp(value: dt.datetime) -> str:
    """A time as RFC 3339 with its UTC offset."""
    return value.isoformat()


def asset_json(asset: Asset) -> dict:
    return {"code": asset.code, "scale": asset.scale, "name": asset.name, "default": asset.default,
            "systemAccountId": asset.system_account_id, "createdAt": timestamp(asset.created_at)}


def account_json(account: Account) -> dict:
    return {
        "accountId": account.account_id, "asset": account.asset, "userId": account.user_id, "name": account.name,
        "system": account.system, "balance": account.balance, "available": account.available,
        "pendingDebits": account.pending_debits, "pendingCredits": account.pending_credits,
        "overdraftLimit": account.overdraft_limit, "maxBalance": account.max_balance, "status": account.status,
        "metadata": account.metadata, "createdAt": timestamp(account.created_at), "updatedAt": timestamp(account.updated_at),
        "headHash": account.head_hash,
    }


def user_json(user: User) -> dict:
    default = user.default_account
    return {"userId": user.user_id, "balance": default.balance if default else 0,
            "updatedAt": timestamp(default.updated_at) if default else None,
            "accounts": [account_json(account) for account in user.accounts]}


def transfer_json(transfer: Transfer) -> dict:
    return {
        "transferId": transfer.transfer_id, "fromAccountId": transfer.from_account_id,
        "toAccountId": transfer.to_account_id, "fromUserId": transfer.from_user_id, "toUserId": transfer.to_user_id,
        "asset": transfer.asset, "amount": transfer.amount, "code": transfer.code,
        "description": transfer.description, "metadata": transfer.metadata, "createdAt": timestamp(transfer.created_at),
        "fromBalance": transfer.from_balance, "toBalance": transfer.to_balance,
        "status": transfer.status, "expiresAt": timestamp(transfer.expires_at) if transfer.expires_at else None,
        "postedAmount": transfer.posted_amount, "reference": transfer.reference, "reverses": transfer.reverses,
        "reversedAmount": transfer.reversed_amount,
        "createdBy": transfer.created_by.document() if transfer.created_by else None,
    }


def entry_json(entry: LedgerEntry) -> dict:
    return {
        "entryId": entry.entry_id, "transferId": entry.transfer_id, "amount": entry.amount,
        "balanceAfter": entry.balance_after, "counterpartyAccountId": entry.counterparty_account_id,
        "code": entry.code, "description": entry.description, "metadata": entry.metadata,
        "createdAt": timestamp(entry.created_at),
    }


def user_entry_json(entry: LedgerEntry) -> dict:
    """An entry as ``GET /api/users/{id}/history`` has always shown it."""
    return {
        "entryId": entry.entry_id, "amount": entry.amount, "balanceAfter": entry.balance_after, "kind": entry.kind,
        "description": entry.description, "idempotencyKey": entry.idempotency_key,
        "transferId": entry.transfer_id, "createdAt": timestamp(entry.created_at),
    }


def change_json(applied: AppliedChange) -> dict:
    return {"userId": applied.user_id, "balance": applied.balance, "accountId": applied.account_id,
            "transferId": applied.transfer_id}


def entry_applied_json(applied: AppliedChange) -> dict:
    return {**change_json(applied), "entryId": applied.entry_id}


def event_json(event: Event) -> dict:
    """An event of the feed: ``data`` is its subject's document as its GET route shows it."""
    subject = event.subject
    data = (transfer_json(subject) if isinstance(subject, Transfer) else account_json(subject)
            if isinstance(subject, Account) else asset_json(subject))
    return {"id": event.cursor.encode(), "type": event.type, "occurredAt": timestamp(event.occurred_at), "data": data}
