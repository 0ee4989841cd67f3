"""Reading the change feed in tests: its head (from the database), every page after a cursor, a
Server-Sent Events reader, and a model that replays events into accounts."""

from __future__ import annotations

import dataclasses
import json

import aiohttp

from server.ledger.events import FeedCursor
from tests.ledger_api import send


def feed_head(db) -> str:
    """The cursor after the newest event written so far (committed or not below the horizon yet:
    reading after it returns only what comes later)."""
    row = db.execute("SELECT position, id, coalesce(cardinality(transfer_ids), 1) FROM events "
                     "ORDER BY position DESC, id DESC LIMIT 1").fetchone()
    return FeedCursor(*row).encode() if row else FeedCursor(-1, 0, 0).encode()


async def read_feed(http, after: str, **filters) -> tuple[list[dict], str]:
    """Every event after ``after`` that passes ``filters`` (query parameters), page by page until a
    page comes back empty; and the last cursor."""
    events = []
    while True:
        status, page = await send(http, "GET", "/api/events", after=after, limit="1000", **filters)
        assert status == 200, page
        events += page["events"]
        if not page["events"] and page["nextCursor"] == after:
            return events, after
        after = page["nextCursor"]


async def read_stream(session: aiohttp.ClientSession, url: str, count: int, last_event_id: str | None = None,
                      **query) -> list[dict]:
    """The first ``count`` events of ``GET /api/events/stream`` (resuming from ``last_event_id``),
    each as ``{"id", "event", "data"}`` of its SSE fields (data parsed), then disconnect."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    got, fields = [], {}
    async with session.get(url, params=query, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if "data" in fields:
                    got.append({**fields, "data": json.loads(fields["data"])})
                    if len(got) == count:
                        return got
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return got


@dataclasses.dataclass
class ModelAccount:
    balance: int = 0
    pending_debits: int = 0
    pending_credits: int = 0
    status: str = "open"
    overdraft_limit: int = 0
    max_balance: int | None = None

    def state(self) -> tuple:
        return (self.balance, self.balance - self.pending_debits, self.pending_debits, self.pending_credits,
                self.status, self.overdraft_limit, self.max_balance)


def api_state(account: dict) -> tuple:
    """What :meth:`ModelAccount.state` gives, read from an account document."""
    return (account["balance"], account["available"], account["pendingDebits"], account["pendingCredits"],
            account["status"], account["overdraftLimit"], account["maxBalance"])


class FeedModel:
    """Accounts rebuilt from events alone, from empty: each transfer moves its amount (a hold
    reserves it, its post moves what was posted and releases the rest, its void releases it);
    each account event sets the status and limits it shows."""

    def __init__(self):
        self.accounts: dict[int, ModelAccount] = {}
        self.holds: dict[int, dict] = {}

    def _of(self, account_id: int) -> ModelAccount:
        return self.accounts.setdefault(account_id, ModelAccount())

    def apply(self, event: dict) -> None:
        kind, data = event["type"], event["data"]
        if kind.startswith("account."):
            account = self._of(data["accountId"])
            account.status, account.overdraft_limit, account.max_balance = (
                data["status"], data["overdraftLimit"], data["maxBalance"])
            return
        if not kind.startswith("transfer."):
            return
        source, destination, amount = self._of(data["fromAccountId"]), self._of(data["toAccountId"]), data["amount"]
        if kind == "transfer.created":
            source.balance -= amount
            destination.balance += amount
        elif kind == "transfer.pending":
            source.pending_debits += amount
            destination.pending_credits += amount
        else:
            source.pending_debits -= amount
            destination.pending_credits -= amount
            if kind == "transfer.posted":
                source.balance -= data["postedAmount"]
                destination.balance += data["postedAmount"]
