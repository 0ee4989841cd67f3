"""One request of every kind the service answers on a per-request path, for the plan-stability test.

Each kind is an async function ``(http, world) -> None`` that sends its request(s) and asserts the
answer it expects; :class:`World` is what the kinds work on (accounts with money, a user, holds to
post or void, a transfer to read or reverse). The kinds cover every route that moves money or reads
one thing by its id, keyed and unkeyed, single and batched; what they leave out is said in
:data:`LEFT_OUT`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from tests.ledger_api import send

_serial = itertools.count(1)


@dataclass
class World:
    """What the request kinds act on: ``accounts`` (ids of open default-asset accounts with a large
    balance), ``users`` (their users, same order), ``transfers`` (ids of transfers made by the kinds,
    newest last)."""

    accounts: list[int]
    users: list[int]
    transfers: list[int] = field(default_factory=list)

    def pair(self) -> tuple[int, int]:
        """Two different accounts, a different pair on each call."""
        i = next(_serial)
        return self.accounts[i % len(self.accounts)], self.accounts[(i + 1) % len(self.accounts)]

    def user(self) -> int:
        return self.users[next(_serial) % len(self.users)]


async def open_world(http: aiohttp.ClientSession, users: int = 6) -> World:
    """``users`` new users, each with a default-asset account credited 10^12 minor units."""
    accounts, user_ids = [], []
    for _ in range(users):
        status, user = await send(http, "POST", "/api/users")
        assert status == 201, user
        status, credited = await send(http, "POST", f"/api/users/{user['userId']}/credit", {"amount": 10**12})
        assert status == 200, credited
        user_ids.append(user["userId"])
        accounts.append(credited["accountId"])
    return World(accounts, user_ids)


async def _ok(http: aiohttp.ClientSession, method: str, path: str, body: dict | None = None,
              expected: int = 200, **options) -> dict:
    status, answer = await send(http, method, path, body, **options)
    assert status == expected, (method, path, status, answer)
    return answer


async def patch_balance(http, world: World) -> None:
    await _ok(http, "PATCH", "/api/balance", {"userId": world.user(), "amount": 1})


async def user_credit_and_debit(http, world: World) -> None:
    user = world.user()
    await _ok(http, "POST", f"/api/users/{user}/credit", {"amount": 2})
    await _ok(http, "POST", f"/api/users/{user}/debit", {"amount": 1})


async def account_credit_and_debit(http, world: World) -> None:
    account, _ = world.pair()
    await _ok(http, "POST", f"/api/accounts/{account}/credit", {"amount": 2})
    await _ok(http, "POST", f"/api/accounts/{account}/debit", {"amount": 1})


async def transfer_by_account(http, world: World) -> None:
    source, destination = world.pair()
    made = await _ok(http, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination,
                                                      "amount": 1}, 201)
    world.transfers.append(made["transferId"])


async def transfer_by_user(http, world: World) -> None:
    source, destination = world.user(), world.user()
    if source == destination:
        destination = world.user()
    await _ok(http, "POST", "/api/transfers", {"fromUserId": source, "toUserId": destination, "amount": 1}, 201)


async def transfer_with_reference_and_its_retry(http, world: World) -> None:
    source, destination = world.pair()
    body = {"fromAccountId": source, "toAccountId": destination, "amount": 1, "reference": uuid.uuid4().hex}
    made = await _ok(http, "POST", "/api/transfers", body, 201)
    again = await _ok(http, "POST", "/api/transfers", body, 200)
    assert again["transferId"] == made["transferId"]


async def refused_transfer(http, world: World) -> None:
    source, destination = world.pair()
    status, body = await send(http, "POST", "/api/transfers",
                              {"fromAccountId": source, "toAccountId": destination, "amount": 2**62})
    assert (status, body["code"]) == (409, "insufficient_funds"), body


async def keyed_transfer_and_its_replay(http, world: World) -> None:
    source, destination = world.pair()
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"fromAccountId": source, "toAccountId": destination, "amount": 1}
    made = await _ok(http, "POST", "/api/transfers", body, 201, headers=headers)
    replayed = await _ok(http, "POST", "/api/transfers", body, 201, headers=headers)
    assert replayed["transferId"] == made["transferId"]


async def keyed_balance_change(http, world: World) -> None:
    await _ok(http, "PATCH", "/api/balance", {"userId": world.user(), "amount": 1},
              headers={"Idempotency-Key": uuid.uuid4().hex})


async def hold_then_post(http, world: World) -> None:
    source, destination = world.pair()
    hold = await _ok(http, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination,
                                                      "amount": 3, "pending": True}, 201)
    await _ok(http, "POST", f"/api/transfers/{hold['transferId']}/post", {"amount": 2})


async def hold_then_void(http, world: World) -> None:
    source, destination = world.pair()
    hold = await _ok(http, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination,
                                                      "amount": 3, "pending": True, "timeoutSeconds": 3600}, 201)
    await _ok(http, "POST", f"/api/transfers/{hold['transferId']}/void", {})


async def reversal(http, world: World) -> None:
    source, destination = world.pair()
    made = await _ok(http, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination,
                                                      "amount": 2}, 201)
    await _ok(http, "POST", f"/api/transfers/{made['transferId']}/reverse", {"amount": 1}, 201)


async def atomic_batch_with_a_post(http, world: World) -> None:
    source, destination = world.pair()
    hold = await _ok(http, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination,
                                                      "amount": 5, "pending": True}, 201)
    await _ok(http, "POST", "/api/transfers/batch", {"atomic": True, "transfers": [
        {"post": hold["transferId"]},
        {"fromAccountId": destination, "toAccountId": source, "amount": 1, "code": "fee"},
    ]})


async def bulk_batch(http, world: World) -> None:
    """Ten plain transfers: the set-based path (from 6 items)."""
    items = []
    for _ in range(10):
        source, destination = world.pair()
        items.append({"fromAccountId": source, "toAccountId": destination, "amount": 1})
    await _ok(http, "POST", "/api/transfers/batch", {"atomic": False, "transfers": items})


async def mixed_concurrent_movements(http, world: World) -> None:
    """Changes and transfers at once, so that the batcher sends mixed batches (apply_ledger_batch())."""
    async def one(i: int) -> None:
        if i % 2:
            await transfer_by_account(http, world)
        else:
            await account_credit_and_debit(http, world)
    await asyncio.gather(*(one(i) for i in range(12)))


async def open_user_and_account(http, world: World) -> None:
    user = await _ok(http, "POST", "/api/users", None, 201)
    await _ok(http, "POST", "/api/accounts", {"asset": "default", "name": f"operator {next(_serial)}"}, 201)
    await _ok(http, "GET", f"/api/users/{user['userId']}")


async def read_account_and_user(http, world: World) -> None:
    account, _ = world.pair()
    await _ok(http, "GET", f"/api/accounts/{account}")
    await _ok(http, "GET", f"/api/users/{world.user()}")


async def read_transfer(http, world: World) -> None:
    await _ok(http, "GET", f"/api/transfers/{world.transfers[-1]}")


async def read_histories(http, world: World) -> None:
    account, _ = world.pair()
    await _ok(http, "GET", f"/api/accounts/{account}/history", limit="5")
    await _ok(http, "GET", f"/api/users/{world.user()}/history", limit="5")
    await _ok(http, "GET", "/api/transfers", accountId=str(account), limit="5")
    await _ok(http, "GET", "/api/transfers", limit="5")


async def balance_at_a_moment(http, world: World) -> None:
    account, _ = world.pair()
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    await _ok(http, "GET", f"/api/accounts/{account}/balance", at=at)


async def read_system_balances_and_listings(http, world: World) -> None:
    """The reads issue 23 made independent of the ledger's size: the system account, its balance
    at a moment and its history, the supply, listings by code and in a time window, recent and old."""
    asset = await _ok(http, "GET", "/api/assets/default")
    system = asset["systemAccountId"]
    await _ok(http, "GET", f"/api/accounts/{system}")
    a_second_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await _ok(http, "GET", f"/api/accounts/{system}/balance", at=a_second_ago.isoformat())
    await _ok(http, "GET", f"/api/accounts/{system}/history", limit="5")
    await _ok(http, "GET", "/api/transfers", code="transfer", limit="5")
    for start, end in ((a_second_ago.isoformat(), dt.datetime.now(dt.UTC).isoformat()),
                       ("2000-01-01T00:00:00Z", "2000-01-02T00:00:00Z")):
        await _ok(http, "GET", "/api/transfers", limit="5", **{"from": start, "to": end})


async def account_changes(http, world: World) -> None:
    account, _ = world.pair()
    await _ok(http, "PATCH", f"/api/accounts/{account}", {"overdraftLimit": 0, "metadata": {"n": str(next(_serial))}})
    await _ok(http, "POST", f"/api/accounts/{account}/freeze")
    await _ok(http, "POST", f"/api/accounts/{account}/unfreeze")


async def read_the_change_feed(http, world: World) -> None:
    """A page of the feed from its start and from the cursor it gave, and the webhook endpoints (the
    feed's reads reach events by their primary key, a transfer event's document by the transfer's)."""
    page = await _ok(http, "GET", "/api/events", limit="5")
    await _ok(http, "GET", "/api/events", after=page["nextCursor"], limit="5", types="transfer.created")
    await _ok(http, "GET", "/api/webhooks")


RequestKind = Callable[[aiohttp.ClientSession, World], Awaitable[None]]

KINDS: tuple[RequestKind, ...] = (
    patch_balance, user_credit_and_debit, account_credit_and_debit, transfer_by_account, transfer_by_user,
    transfer_with_reference_and_its_retry, refused_transfer, keyed_transfer_and_its_replay, keyed_balance_change,
    hold_then_post, hold_then_void, reversal, atomic_batch_with_a_post, bulk_batch, mixed_concurrent_movements,
    open_user_and_account, read_account_and_user, read_transfer, read_histories, balance_at_a_moment,
    read_system_balances_and_listings, account_changes, read_the_change_feed,
)

# `balance-api check` reads everything on purpose. (Until issue 23 the system account's balance and
# an asset's supply were sums over the asset's accounts or transfers, and were left out too.)
LEFT_OUT = ("balance-api check",)
