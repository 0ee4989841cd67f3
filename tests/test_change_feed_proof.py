"""The feed's proof (issue 24), like the 10,000-request proof: while 10,000 concurrent mixed
operations run over two workers (transfers, holds, posts, voids, atomic batches, refusals,
idempotent retries, freezes and limit changes), three consumers follow the feed: a long poll, a
Server-Sent Events reader that disconnects at random and resumes from its last event id, and a
webhook receiver that fails at random and is down for a while. Each ends with every committed
change exactly once (the webhook's after de-duplication by webhook-id, at least once before it),
none that was refused, and applying its events to an empty model gives every account exactly as
GET reads it. Every webhook signature verifies with the standardwebhooks library."""

import asyncio
import collections
import json
import random
import uuid

import aiohttp

from tests.feed_reading import FeedModel, api_state, read_feed
from tests.ledger_api import account, credit, new_account, new_asset, send
from tests.service_process import assert_ledger_consistent, running_service
from tests.webhook_receiver import Receiver

OPERATIONS = 10_000
ACCOUNTS = 20
CONCURRENCY = 100
SETTINGS = {"webhook_allow_private_targets": "true", "events_poll_interval": "0.05",
            "webhook_retry_schedule": "0,0.05,0.1,0.2,0.5,1,2,2,2,2,2,2"}


class Expected:
    """What the answers say was committed: one (type, subject id) per event the feed must hold."""

    def __init__(self):
        self.events: collections.Counter = collections.Counter()

    def transfer(self, kind: str, document: dict) -> None:
        self.events[(kind, document["transferId"])] += 1

    def account(self, kind: str, account_id: int) -> None:
        self.events[(kind, account_id)] += 1


def subject(event: dict) -> tuple[str, int]:
    data = event["data"]
    key = data.get("transferId", data.get("accountId", data.get("systemAccountId")))
    return event["type"], key


async def _operate(http, rng: random.Random, ids: list[int], holds: list[int], expected: Expected) -> None:
    """One random operation; what it committed goes to ``expected`` (refusals commit nothing)."""
    roll = rng.random()
    source, destination = rng.sample(ids, 2)
    if roll < 0.35:
        amount = rng.choice([rng.randint(1, 40), 10**9])  # half of them too much: insufficient_funds
        status, body = await send(http, "POST", "/api/transfers",
                                  {"fromAccountId": source, "toAccountId": destination, "amount": amount})
        if status == 201:
            expected.transfer("transfer.created", body)
    elif roll < 0.50:
        status, body = await send(http, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination,
                                                                   "amount": rng.randint(1, 30), "pending": True})
        if status == 201:
            expected.transfer("transfer.pending", body)
            holds.append(body["transferId"])
    elif roll < 0.65 and holds:
        hold_id = rng.choice(holds)
        post = rng.random() < 0.6
        status, body = await send(http, "POST", f"/api/transfers/{hold_id}/{'post' if post else 'void'}",
                                  {"amount": 1} if post and rng.random() < 0.3 else {})
        if status == 200:  # a hold posted or voided before: 409, nothing changed
            expected.transfer("transfer.posted" if post else "transfer.voided", body)
    elif roll < 0.78:
        items = [{"fromAccountId": a, "toAccountId": b, "amount": rng.choice([rng.randint(1, 20), 10**9])
                  if rng.random() < 0.2 else rng.randint(1, 20)}
                 for a, b in (rng.sample(ids, 2) for _ in range(rng.randint(2, 4)))]
        atomic = rng.random() < 0.5
        status, body = await send(http, "POST", "/api/transfers/batch", {"atomic": atomic, "transfers": items})
        assert status == 200, body
        for result in body["results"] if body["committed"] else []:
            if result["status"] == 201:
                expected.transfer("transfer.created", result["transfer"])
    elif roll < 0.90:
        key, body = str(uuid.uuid4()), {"fromAccountId": source, "toAccountId": destination, "amount": 1}
        first = await send(http, "POST", "/api/transfers", body, key=key)
        again = await send(http, "POST", "/api/transfers", body, key=key)  # a retry: replayed, no new event
        assert again.status == first.status and again.body == first.body
        if first.status == 201:
            expected.transfer("transfer.created", first.body)
    elif roll < 0.95:  # frozen for a moment: a transfer from it meanwhile is refused (or races the unfreeze)
        for action in ("freeze", "transfer", "unfreeze"):
            if action == "transfer":
                status, body = await send(http, "POST", "/api/transfers",
                                          {"fromAccountId": source, "toAccountId": destination, "amount": 1})
                if status == 201:  # another operation's unfreeze came first
                    expected.transfer("transfer.created", body)
                continue
            status, _ = await send(http, "POST", f"/api/accounts/{source}/{action}")
            assert status == 200
            expected.account("account.frozen" if action == "freeze" else "account.unfrozen", source)
    else:
        status, _ = await send(http, "PATCH", f"/api/accounts/{source}", {"overdraftLimit": rng.randint(0, 50)})
        if status == 200:  # 409 limit_violated when the balance is below the new floor
            expected.account("account.updated", source)


async def _long_poll(http, start: str, code: str, done: asyncio.Event) -> list[dict]:
    """Long polls from ``start``; stops once the writers are done and two reads in a row, a moment
    apart, found nothing new (an event commits before its writer's answer, and is final as soon as
    the transactions older than it have ended)."""
    got, cursor, empty = [], start, 0
    while empty < 2:
        finished = done.is_set()
        status, page = await send(http, "GET", "/api/events", after=cursor, asset=code, limit="1000",
                                  wait="0" if finished else "2")
        assert status == 200, page
        got += page["events"]
        cursor = page["nextCursor"]
        empty = empty + 1 if finished and not page["events"] else 0
        if empty:
            await asyncio.sleep(0.2)
    return got


async def _stream(base_url: str, start: str, code: str, done: asyncio.Event, rng: random.Random) -> list[dict]:
    """SSE with a disconnect after a random number of events, resuming with Last-Event-ID; stops once
    the writers are done and a resumed stream has sent nothing for a second."""
    got, last = [], start
    async with aiohttp.ClientSession() as session:
        while True:
            budget, finished = rng.randint(20, 800), done.is_set()
            timeout = aiohttp.ClientTimeout(sock_read=1.0 if finished else 3.0)
            async with session.get(f"{base_url}/api/events/stream", params={"asset": code},
                                   headers={"Last-Event-ID": last}, timeout=timeout) as response:
                assert response.status == 200
                data = event_id = None
                try:
                    async for raw in response.content:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith("data: "):
                            data = line[len("data: "):]
                        elif line.startswith("id: "):
                            event_id = line[len("id: "):]
                        elif not line and data is not None:  # an event is complete only at its blank line
                            got.append(json.loads(data))
                            last, data, budget = event_id, None, budget - 1
                            if budget == 0:
                                break  # a random disconnect
                except (TimeoutError, aiohttp.ClientPayloadError):
                    if finished:
                        return got


async def test_three_consumers_get_every_committed_change_exactly_once_under_10000_mixed_operations(create_database,
                                                                                                 tmp_path):
    receiver = Receiver(fail_rate=0.1)
    await receiver.start()
    database_url = create_database()
    with running_service(tmp_path / "service.log", database_url=database_url, workers="2",
                         db_max_pending="20000", **SETTINGS) as (base_url, _):
        async with aiohttp.ClientSession(base_url=base_url, connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as http:
            status, hook = await send(http, "POST", "/api/webhooks", {"url": receiver.url})
            assert status == 201
            start = hook["cursor"]
            code = await new_asset(http, prefix="proof")
            ids = [(await new_account(http, code))["accountId"] for _ in range(ACCOUNTS)]
            expected = Expected()
            for account_id in ids:
                expected.account("account.created", account_id)
                status, body = await credit(http, account_id, 100_000)
                assert status == 200
                expected.events[("transfer.created", body["transferId"])] += 1
            expected.events[("asset.created", None)] = 1  # its system account id, filled in below

            done, holds = asyncio.Event(), []
            consumers = [asyncio.ensure_future(_long_poll(http, start, code, done)),
                         asyncio.ensure_future(_stream(base_url, start, code, done, random.Random(7)))]
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(n: int) -> None:
                async with gate:
                    await _operate(http, random.Random(n), ids, holds, expected)
                if n == OPERATIONS // 3:  # the receiver goes down for a while, then comes back
                    await receiver.stop()
                    await asyncio.sleep(2)
                    await receiver.start()

            await asyncio.gather(*(one(n) for n in range(OPERATIONS)))
            done.set()
            polled, streamed = await asyncio.wait_for(asyncio.gather(*consumers), 120)
            feed, _ = await read_feed(http, start, asset=code)
            for _ in range(2400):  # the webhook catches up (at least once)
                if {e["id"] for e in receiver.events(code)} >= {e["id"] for e in feed}:
                    break
                await asyncio.sleep(0.05)
            hooked = list({e["id"]: e for e in receiver.events(code)}.values())  # de-duplicated by webhook-id

            asset_event = next(e for e in feed if e["type"] == "asset.created")
            del expected.events[("asset.created", None)]
            expected.events[subject(asset_event)] = 1
            for name, events in (("feed", feed), ("long poll", polled), ("stream", streamed), ("webhook", hooked)):
                ids_seen = [e["id"] for e in events]
                assert len(ids_seen) == len(set(ids_seen)), name  # nothing twice
                assert ids_seen == [e["id"] for e in feed], name  # the same order
                assert collections.Counter(subject(e) for e in events) == expected.events, name
                model = FeedModel()
                for event in events:
                    model.apply(event)
                for account_id in ids:
                    assert model.accounts[account_id].state() == api_state(await account(http, account_id)), name
            receiver.verify_all(hook["secret"])
            assert receiver.attempts > len(hooked)  # it did fail, and was retried
            assert sum(expected.events.values()) > OPERATIONS // 2
    await receiver.stop()
    assert_ledger_consistent(database_url)
