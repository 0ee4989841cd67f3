"""Bulk batches (POST /api/transfers/batch) are never refused for waiting their turn (issue 23).

What it promises (docs/concurrency.md, Bulk batches): eight batches of 1,000 at once, over the same
accounts, after single transfers, holds and credits, all commit, with exactly the balances the
transfers add up to; a batch waits for other transactions' row locks longer than the single
statement's DB_STATEMENT_TIMEOUT (its own bound is TRANSFER_BATCH_TIMEOUT) and commits; a batch
that gets no turn in the worker within TRANSFER_BATCH_QUEUE_TIMEOUT is answered 503
service_overloaded with Retry-After, having changed nothing.
"""

from __future__ import annotations

import asyncio
import collections
import random

import aiohttp
import psycopg
import pytest

from tests.ledger_api import assert_problem, balance, credit, hold, new_account, new_asset, post, send, transfer
from tests.service_process import assert_ledger_consistent, running_service

BATCH_SIZE, SENDERS, ACCOUNTS = 1000, 8, 200


async def _accounts(http, count: int) -> list[int]:
    code = await new_asset(http)
    return [(await new_account(http, code, overdraftLimit=10**9))["accountId"] for _ in range(count)]


def _batch(rng: random.Random, ids: list[int]) -> list[dict]:
    return [{"fromAccountId": a, "toAccountId": b, "amount": rng.randint(1, 50)}
            for a, b in (rng.sample(ids, 2) for _ in range(BATCH_SIZE))]


async def test_eight_batches_of_1000_at_once_after_mixed_traffic_all_commit_with_exact_balances(http, database_url):
    ids = await _accounts(http, ACCOUNTS)
    expected = collections.Counter()
    rng = random.Random(23)
    for _ in range(3):  # mixed traffic first: transfers, credits, holds posted
        a, b = rng.sample(ids, 2)
        assert (await transfer(http, a, b, 5))[0] == 201
        assert (await credit(http, a, 9))[0] == 200
        status, made = await hold(http, b, a, 4)
        assert status == 201 and (await post(http, made["transferId"]))[0] == 200
        expected.update({a: -5 + 9 + 4, b: 5 - 4})
    batches = [_batch(rng, ids) for _ in range(SENDERS)]
    answers = await asyncio.gather(*(send(http, "POST", "/api/transfers/batch", {"atomic": False, "transfers": items})
                                     for items in batches))
    assert [status for status, _ in answers] == [200] * SENDERS
    assert {item["status"] for _, body in answers for item in body["results"]} == {201}
    for items in batches:
        for item in items:
            expected[item["fromAccountId"]] -= item["amount"]
            expected[item["toAccountId"]] += item["amount"]
    assert {x: await balance(http, x) for x in ids} == {x: expected[x] for x in ids}
    assert_ledger_consistent(database_url)


@pytest.fixture(scope="module")
def one_turn_service(database_url, tmp_path_factory):
    """A service whose worker runs one batch at a time, queues others for 0.5 s, and whose single
    statements time out after 1 s but whose batches have 10 s."""
    log = tmp_path_factory.mktemp("one-turn") / "service.log"
    with running_service(log, database_url=database_url, transfer_batch_concurrency="1",
                         transfer_batch_queue_timeout="0.5", db_statement_timeout="1",
                         transfer_batch_timeout="10") as (base_url, _process):
        yield base_url


async def test_a_batch_waits_for_row_locks_past_the_statement_timeout_and_one_without_a_turn_is_503(
        one_turn_service, database_url):
    async with aiohttp.ClientSession(base_url=one_turn_service) as http:
        a, b, c, d = await _accounts(http, 4)
        with psycopg.connect(database_url) as holder:  # another transaction holds a's row for 2.5 s
            holder.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (a,))
            waiting = asyncio.create_task(send(http, "POST", "/api/transfers/batch", {
                "atomic": True, "transfers": [{"fromAccountId": a, "toAccountId": b, "amount": 3}]}))
            await asyncio.sleep(0.3)  # it has the worker's one turn, and waits for the lock
            refused = await send(http, "POST", "/api/transfers/batch", {
                "atomic": True, "transfers": [{"fromAccountId": c, "toAccountId": d, "amount": 7}]})
            assert_problem(refused, 503, "service_overloaded")
            assert refused.headers["Retry-After"] == "1"
            await asyncio.sleep(2.2)
            holder.rollback()
        status, body = await waiting
        assert (status, body["committed"]) == (200, True)
        assert [await balance(http, x) for x in (a, b, c, d)] == [-3, 3, 0, 0]
    assert_ledger_consistent(database_url)
