"""Races on the ledger model, each with an exact expected outcome: limits under concurrent
transfers, freeze and close racing money movements, and credits that must not queue on the
system account. `balance-api check` passes after each."""

import asyncio
import collections
import threading

import psycopg

from tests.ledger_api import balance, credit, new_account, new_asset, send, transfer
from tests.service_process import assert_ledger_consistent


def outcomes(results) -> collections.Counter:
    return collections.Counter(status if status < 400 else body["code"] for status, body in results)


async def test_200_simultaneous_transfers_out_of_an_overdraft_account_give_exactly_what_the_limit_allows(
        http, database_url):
    code = await new_asset(http)
    source, sink = await new_account(http, code, overdraftLimit=20), await new_account(http, code)
    await credit(http, source["accountId"], 100)
    results = await asyncio.gather(*(transfer(http, source["accountId"], sink["accountId"], 1) for _ in range(200)))
    assert outcomes(results) == {201: 120, "insufficient_funds": 80}
    assert (await balance(http, source["accountId"]), await balance(http, sink["accountId"])) == (-20, 120)
    assert sorted(body["fromBalance"] for status, body in results if status == 201) == list(range(-20, 100))
    assert_ledger_consistent(database_url)


async def test_simultaneous_transfers_into_a_capped_account_stop_exactly_at_max_balance(http, database_url):
    code = await new_asset(http)
    sources = [await new_account(http, code) for _ in range(10)]
    capped = await new_account(http, code, maxBalance=50)
    for source in sources:
        await credit(http, source["accountId"], 20)
    results = await asyncio.gather(*(transfer(http, source["accountId"], capped["accountId"], 1)
                                     for _ in range(20) for source in sources))
    assert outcomes(results) == {201: 50, "max_balance_exceeded": 150}
    assert await balance(http, capped["accountId"]) == 50
    assert sum([await balance(http, source["accountId"]) for source in sources]) == 200 - 50
    assert_ledger_consistent(database_url)


async def test_credits_and_debits_through_the_batcher_respect_both_limits_exactly(http, database_url):
    account = await new_account(http, await new_asset(http), overdraftLimit=30, maxBalance=40)
    results = await asyncio.gather(*(send(http, "POST", f"/api/accounts/{account['accountId']}/debit", {"amount": 1})
                                     for _ in range(100)))
    assert outcomes(results) == {200: 30, "insufficient_funds": 70}
    results = await asyncio.gather(*(credit(http, account["accountId"], 1) for _ in range(100)))
    assert outcomes(results) == {200: 70, "max_balance_exceeded": 30}
    assert await balance(http, account["accountId"]) == 40
    assert_ledger_consistent(database_url)


async def test_a_close_racing_a_credit_lets_exactly_one_of_them_through(http, database_url):
    code = await new_asset(http)
    seen = collections.Counter()
    for _ in range(20):
        account = await new_account(http, code)
        closed, credited = await asyncio.gather(send(http, "POST", f"/api/accounts/{account['accountId']}/close"),
                                                credit(http, account["accountId"], 1))
        pair = (closed[0] if closed[0] == 200 else closed[1]["code"],
                credited[0] if credited[0] == 200 else credited[1]["code"])
        assert pair in {(200, "account_closed"), ("account_not_empty", 200)}, pair
        seen[pair] += 1
        expected = ("closed", 0) if pair[0] == 200 else ("open", 1)
        status, shown = await send(http, "GET", f"/api/accounts/{account['accountId']}")
        assert (shown["status"], shown["balance"]) == expected
    assert_ledger_consistent(database_url)


async def test_a_freeze_racing_transfers_refuses_exactly_the_transfers_after_it(http, database_url):
    code = await new_asset(http)
    source, sink = await new_account(http, code), await new_account(http, code)
    await credit(http, source["accountId"], 1000)

    async def after_a_moment(seconds: float, call):
        await asyncio.sleep(seconds)
        return await call

    moves = [after_a_moment(i * 0.001, transfer(http, source["accountId"], sink["accountId"], 1)) for i in range(200)]
    freeze = after_a_moment(0.05, send(http, "POST", f"/api/accounts/{source['accountId']}/freeze"))
    *results, frozen = await asyncio.gather(*moves, freeze)
    assert frozen[0] == 200
    counts = outcomes(results)
    assert set(counts) <= {201, "account_frozen"} and sum(counts.values()) == 200
    assert await balance(http, source["accountId"]) == 1000 - counts[201]
    assert await balance(http, sink["accountId"]) == counts[201]
    # nothing moved after the freeze committed: every later transfer is refused
    assert outcomes([await transfer(http, source["accountId"], sink["accountId"], 1)]) == {"account_frozen": 1}
    assert_ledger_consistent(database_url)


async def test_credits_to_other_accounts_do_not_wait_for_a_locked_account_nor_for_the_system_account(
        http, database_url, db):
    """The system account is the counter-party of every credit, yet its row is never locked: with
    one user's account row held locked, credits to other accounts of the asset still complete."""
    code = await new_asset(http)
    held, free = await new_account(http, code), await new_account(http, code)
    release, locked = threading.Event(), threading.Event()

    def hold_lock():
        with psycopg.connect(database_url) as conn, conn.transaction():
            conn.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (held["accountId"],))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 10)
        waiting = asyncio.ensure_future(credit(http, held["accountId"], 5))
        results = await asyncio.wait_for(asyncio.gather(*(credit(http, free["accountId"], 1) for _ in range(50))), 10)
        assert outcomes(results) == {200: 50}
        assert not waiting.done()  # the held account's own credit waits for its row, as it must
    finally:
        release.set()
        await asyncio.to_thread(holder.join)
    assert (await waiting)[0] == 200
    assert (await balance(http, held["accountId"]), await balance(http, free["accountId"])) == (5, 50)
    system = (await send(http, "GET", f"/api/assets/{code}"))[1]["systemAccountId"]
    assert await balance(http, system) == -55
    assert_ledger_consistent(database_url)


async def test_300_simultaneous_debits_and_transfers_of_one_account_of_100_give_exactly_100_successes_in_one_chain(
        http, database_url):
    # the batcher mixes the two kinds in one call (apply_ledger_batch(), migration 0010)
    code = await new_asset(http)
    source, sink = [(await new_account(http, code))["accountId"] for _ in range(2)]
    await credit(http, source, 100)
    requests = [send(http, "POST", f"/api/accounts/{source}/debit", {"amount": 1}) if n % 2 else
                transfer(http, source, sink, 1) for n in range(300)]
    results = await asyncio.gather(*requests)
    assert outcomes(results) == {200: sum(status == 200 for status, _ in results),
                                 201: sum(status == 201 for status, _ in results), "insufficient_funds": 200}
    left = [body["balance"] if status == 200 else body["fromBalance"] for status, body in results if status < 400]
    assert sorted(left) == list(range(100))  # every unit went once, by one kind or the other
    transferred = sum(status == 201 for status, _ in results)
    assert (await balance(http, source), await balance(http, sink)) == (0, transferred)
    assert_ledger_consistent(database_url)
