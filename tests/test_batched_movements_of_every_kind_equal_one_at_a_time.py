"""The batcher (server.ledger.batching.LedgerBatcher): balance changes, transfers, holds, posts and
voids submitted all at once, mixed, with references, give exactly the results and balances of
applying them one at a time in arrival order (tests/ledger_model.py), whatever the batch size and the number of
batches in flight (property-based, hypothesis, against the real PostgreSQL); concurrent requests
through the service give exact outcomes."""

import asyncio
import collections
import json
import uuid

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.ledger.accounts import NewAccount, create_account, read_account
from server.ledger.assets import create_asset, read_default_asset
from server.ledger.batching import LedgerBatcher
from server.ledger.records import AccountRef, BalanceChangeOrder, ResolvePending, TransferOrder
from server.problems import Problem
from server.running.database import Database
from tests.ledger_api import balance, credit, new_account, new_asset, send
from tests.ledger_model import ACCOUNTS, SYSTEM, Model
from tests.seeded_users import SEED_USER

sides = st.sampled_from([*ACCOUNTS, SYSTEM])
amounts = st.integers(1, 120)
references = st.one_of(st.none(), st.sampled_from(["r1", "r2"]))
streams = st.lists(st.one_of(
    st.tuples(st.just("transfer"), sides, sides, amounts, references),
    st.tuples(st.just("hold"), sides, sides, amounts, st.none()),
    st.tuples(st.just("post"), st.integers(0, 3), st.one_of(st.none(), st.integers(1, 60))),
    st.tuples(st.just("void"), st.integers(0, 3)),
    st.tuples(st.just("change"), st.sampled_from(ACCOUNTS), st.integers(-120, 120).filter(bool)),
), min_size=1, max_size=30)
first_holds = st.lists(st.tuples(st.sampled_from(ACCOUNTS), sides, st.integers(1, 25)).filter(lambda h: h[0] != h[1]),
                       min_size=4, max_size=4)


def _code(result) -> str:
    if isinstance(result, Problem):
        return result.code
    return "replayed" if getattr(result, "replayed", False) else "ok"


async def _funded_accounts(pool, max_batch, max_in_flight, overlap_after=0.0):
    """A new asset with the model's accounts (``ids``: name -> account id, the system account's
    too), each funded with 100 through a new batcher; returns ``(asset, ids, batcher, model)``."""
    async with pool.acquire() as db:
        asset = await create_asset(db, f"b{uuid.uuid4().hex[:20]}", 0, None)
        ids = {name: (await create_account(db, NewAccount(asset))).account_id for name in ACCOUNTS}
        ids[SYSTEM] = asset.system_account_id
    batcher = LedgerBatcher(Database(pool, max_pending=10_000, acquire_timeout=30), max_batch,
                            max_in_flight=max_in_flight, overlap_after=overlap_after)
    model = Model()
    for name in ACCOUNTS:
        await batcher.apply_transfer(TransferOrder(AccountRef(ids[SYSTEM]), AccountRef(ids[name]), 100))
        assert model.transfer(SYSTEM, name, 100) == "ok"
    return asset, ids, batcher, model


async def _run(pool, holds, stream, max_batch, max_in_flight, overlap_after=0.0):
    asset, ids, batcher, model = await _funded_accounts(pool, max_batch, max_in_flight, overlap_after)
    prefix = f"{asset.asset_id}-"  # references are global: one namespace per example

    def submit(step):
        kind, *rest = step
        if kind == "change":  # a credit or debit: between the account and the asset's system account
            return batcher.apply_change(AccountRef(ids[rest[0]]), BalanceChangeOrder(rest[1]))
        return batcher.apply_transfer(order(step))

    def order(step):
        kind, *rest = step
        if kind in ("transfer", "hold"):
            source, destination, amount, reference = rest
            return TransferOrder(AccountRef(ids[source]), AccountRef(ids[destination]), amount,
                                        pending=kind == "hold",
                                        reference=None if reference is None else prefix + reference)
        return ResolvePending(hold_ids[rest[0]], kind == "post", rest[1] if kind == "post" else None)

    # the holds the stream posts and voids (at most 4 x 25 from one account: all accepted), one at
    # a time, through the batcher, which so knows their accounts
    hold_ids = []
    for source, destination, amount in holds:
        made = await batcher.apply_transfer(TransferOrder(AccountRef(ids[source]),
                                                        AccountRef(ids[destination]), amount, pending=True))
        hold_ids.append(made.transfer_id)
        assert model.transfer(source, destination, amount, pending=True) == "ok"
    results = await asyncio.gather(*(asyncio.create_task(submit(step)) for step in stream), return_exceptions=True)
    expected = []
    for step in stream:
        kind, *rest = step
        if kind == "change":
            name, amount = rest
            expected.append(model.transfer(SYSTEM, name, amount) if amount > 0 else model.transfer(name, SYSTEM, -amount))
        elif kind in ("transfer", "hold"):
            source, destination, amount, reference = rest
            expected.append(model.transfer(source, destination, amount, pending=kind == "hold", reference=reference))
        else:
            expected.append(model.resolve(rest[0], kind == "post", rest[1] if kind == "post" else None))
    assert [_code(result) for result in results] == expected
    stored = {name: await read_account(pool, ids[name]) for name in ACCOUNTS}
    assert {name: account.balance for name, account in stored.items()} == model.balance
    assert {name: account.pending_debits for name, account in stored.items()} == {
        name: model.pending(name, "from") for name in ACCOUNTS}
    return batcher.batches_sent


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(holds=first_holds, stream=streams, max_batch=st.sampled_from([1, 2, 5, 50]),
       max_in_flight=st.sampled_from([1, 2, 8]), overlap_after=st.sampled_from([0.0, 0.001, 0.02]))
def test_a_stream_through_the_batcher_gives_the_outcomes_of_one_at_a_time_in_arrival_order(
        loop_and_pool, holds, stream, max_batch, max_in_flight, overlap_after):
    loop, pool = loop_and_pool
    loop.run_until_complete(_run(pool, holds, stream, max_batch, max_in_flight, overlap_after))


mixed_streams = st.lists(st.one_of(
    st.tuples(st.just("transfer"), sides, sides, amounts, st.none()),
    st.tuples(st.just("change"), st.sampled_from(ACCOUNTS), st.integers(-120, 120).filter(bool)),
), min_size=2, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(holds=first_holds, stream=mixed_streams)
def test_a_batch_mixing_changes_and_transfers_gives_the_outcomes_of_one_at_a_time_in_arrival_order(
        loop_and_pool, holds, stream):
    # one batch in flight: the first item goes alone, all the others wait for it and go as one batch
    loop, pool = loop_and_pool
    loop.run_until_complete(_run(pool, holds, stream, max_batch=50, max_in_flight=1))


def test_transfers_that_arrive_together_go_out_in_one_batch(loop_and_pool):
    loop, pool = loop_and_pool
    stream = [("transfer", SYSTEM, ACCOUNTS[n % 3], 1, None) for n in range(60)]
    holds = [(0, 1, 1)] * 4
    batches = loop.run_until_complete(_run(pool, holds, stream, max_batch=500, max_in_flight=1))
    assert batches == 3 + 4 + 2  # fundings and holds one by one; the first transfer alone, the 59 that came meanwhile together


async def test_200_concurrent_transfers_from_one_account_of_100_give_exactly_100_successes(http, database_url):
    code = await new_asset(http)
    source, destination = [(await new_account(http, code))["accountId"] for _ in range(2)]
    await credit(http, source, 100)
    body = {"fromAccountId": source, "toAccountId": destination, "amount": 1}
    answers = await asyncio.gather(*(send(http, "POST", "/api/transfers", body) for _ in range(200)))
    statuses = collections.Counter(status for status, _ in answers)
    assert statuses == {201: 100, 409: 100}
    assert {answer["code"] for status, answer in answers if status == 409} == {"insufficient_funds"}
    assert sorted(answer["fromBalance"] for status, answer in answers if status == 201) == list(range(100))
    assert (await balance(http, source), await balance(http, destination)) == (0, 100)


async def test_concurrent_holds_then_their_posts_move_exactly_what_was_held(http):
    code = await new_asset(http)
    source, destination = [(await new_account(http, code))["accountId"] for _ in range(2)]
    await credit(http, source, 50)
    hold = {"fromAccountId": source, "toAccountId": destination, "amount": 1, "pending": True}
    made = await asyncio.gather(*(send(http, "POST", "/api/transfers", hold) for _ in range(80)))
    assert collections.Counter(status for status, _ in made) == {201: 50, 409: 30}
    posts = await asyncio.gather(*(send(http, "POST", f"/api/transfers/{answer['transferId']}/post", {})
                                   for status, answer in made if status == 201))
    assert {status for status, _ in posts} == {200}
    assert (await balance(http, source), await balance(http, destination)) == (0, 50)


def test_a_batch_that_returns_within_overlap_after_is_followed_by_one_batch_of_all_that_waited(loop_and_pool):
    loop, pool = loop_and_pool
    stream = [("transfer", SYSTEM, ACCOUNTS[n % 3], 1, None) for n in range(60)]
    holds = [(0, 1, 1)] * 4  # two slots, but no batch is held up for a minute: never two in flight
    batches = loop.run_until_complete(_run(pool, holds, stream, max_batch=500, max_in_flight=2, overlap_after=60))
    assert batches == 3 + 4 + 2  # fundings and holds one by one; the first transfer alone, the 59 that came meanwhile together


def test_a_batch_held_up_by_a_row_lock_is_overlapped_after_overlap_after_by_other_accounts_requests(
        loop_and_pool, database_url):
    loop, pool = loop_and_pool
    asset, (a, b, c) = _three_accounts(loop, pool)

    async def scenario():
        batcher = LedgerBatcher(Database(pool, max_pending=100, acquire_timeout=30), 10, max_in_flight=2,
                                overlap_after=0.05)
        move = lambda source, destination: batcher.apply_transfer(TransferOrder(  # noqa: E731
            AccountRef(source), AccountRef(destination), 5))
        await move(asset.system_account_id, b)
        locker = await asyncpg.connect(database_url)
        try:
            async with locker.transaction():  # someone else's transaction holds a's row
                await locker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", a)
                held_up = asyncio.create_task(move(asset.system_account_id, a))
                await asyncio.sleep(0.01)  # its batch is in flight, waiting for the lock
                other = await asyncio.wait_for(move(b, c), 10)  # goes out once the first has waited 50 ms
                assert not held_up.done()
            return _code(other), _code(await held_up), batcher.batches_sent
        finally:
            await locker.close()

    assert loop.run_until_complete(scenario()) == ("ok", "ok", 3)


def test_a_void_waits_behind_a_transfer_of_its_holds_account_and_goes_out_with_it(loop_and_pool):
    loop, pool = loop_and_pool

    async def scenario():
        async with pool.acquire() as db:
            asset = await create_asset(db, f"v{uuid.uuid4().hex[:20]}", 0, None)
            a, b, c = [(await create_account(db, NewAccount(asset))).account_id for _ in range(3)]
        batcher = LedgerBatcher(Database(pool, max_pending=100, acquire_timeout=30), 10, max_in_flight=2)
        move = lambda source, destination, amount, **more: TransferOrder(  # noqa: E731
            AccountRef(source), AccountRef(destination), amount, **more)
        await batcher.apply_transfer(move(asset.system_account_id, a, 10))
        held = await batcher.apply_transfer(move(a, b, 10, pending=True))  # a's available: 0
        before = batcher.batches_sent
        results = await asyncio.gather(  # in this order: the first goes at once, the second waits for a
            batcher.apply_transfer(move(a, c, 1)), batcher.apply_transfer(move(a, c, 5)),
            batcher.apply_transfer(ResolvePending(held.transfer_id, False)), return_exceptions=True)
        return [_code(result) for result in results], batcher.batches_sent - before

    # the void came last: the 5 found nothing available; it did not take the free slot before it
    assert loop.run_until_complete(scenario()) == (["insufficient_funds", "insufficient_funds", "ok"], 2)


def _three_accounts(loop, pool):
    async def make():
        async with pool.acquire() as db:
            asset = await create_asset(db, f"m{uuid.uuid4().hex[:20]}", 0, None)
            return asset, [(await create_account(db, NewAccount(asset))).account_id for _ in range(3)]
    return loop.run_until_complete(make())


def test_changes_and_transfers_of_one_account_go_out_together_in_arrival_order(loop_and_pool):
    loop, pool = loop_and_pool
    asset, (a, b, _) = _three_accounts(loop, pool)

    async def scenario():
        batcher = LedgerBatcher(Database(pool, max_pending=100, acquire_timeout=30), 10, max_in_flight=1)
        move = lambda source, destination, amount: batcher.apply_transfer(TransferOrder(  # noqa: E731
            AccountRef(source), AccountRef(destination), amount))
        change = lambda account, amount: batcher.apply_change(  # noqa: E731
            AccountRef(account), BalanceChangeOrder(amount, "credit" if amount > 0 else "debit"))
        results = await asyncio.gather(  # the first goes at once; the other five wait for it, then go as one
            change(a, 10), move(a, b, 4), change(a, -7), change(a, -2), move(a, b, 4), change(b, -8),
            return_exceptions=True)
        return results, batcher.batches_sent

    results, batches = loop.run_until_complete(scenario())
    assert batches == 2
    assert [_code(result) for result in results] == ["ok", "ok", "insufficient_funds", "ok", "ok", "ok"]
    assert [results[1].from_balance, results[3].balance, results[4].from_balance, results[4].to_balance,
            results[5].balance] == [6, 4, 0, 8, 0]


def test_an_account_named_by_user_shares_its_lane_with_the_account_named_by_id_once_a_batch_showed_it(loop_and_pool):
    loop, pool = loop_and_pool

    async def scenario():
        async with pool.acquire() as db:
            user_id, account_id = await db.fetchrow(SEED_USER, 0)
            asset_id = await db.fetchval("SELECT asset_id FROM accounts WHERE id = $1", account_id)
            other = (await create_account(db, NewAccount(await read_default_asset(db)))).account_id
        batcher = LedgerBatcher(Database(pool, max_pending=100, acquire_timeout=30), 10, max_in_flight=2)
        by_user = AccountRef(None, user_id, asset_id)
        await batcher.apply_change(by_user, BalanceChangeOrder(10))  # shows the batcher which account it is
        before = batcher.batches_sent
        results = await asyncio.gather(  # the first goes at once; the transfer waits behind it, with the last
            batcher.apply_change(by_user, BalanceChangeOrder(-3)),
            batcher.apply_transfer(TransferOrder(AccountRef(account_id, None, asset_id),
                                                        AccountRef(other, None, asset_id), 8)),
            batcher.apply_change(by_user, BalanceChangeOrder(-5)), return_exceptions=True)
        return [_code(result) for result in results], batcher.batches_sent - before

    # one lane: the transfer did not take the free slot beside the first change (that would make three batches)
    assert loop.run_until_complete(scenario()) == (["ok", "insufficient_funds", "ok"], 2)


keyed_mixed_streams = st.lists(st.tuples(
    st.one_of(st.tuples(st.just("transfer"), sides, sides, amounts),
              st.tuples(st.just("change"), st.sampled_from(ACCOUNTS), st.integers(-120, 120).filter(bool))),
    st.one_of(st.none(), st.sampled_from("abc")),
), min_size=1, max_size=25)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=keyed_mixed_streams, max_batch=st.sampled_from([1, 3, 50]), max_in_flight=st.sampled_from([1, 2]))
def test_changes_and_transfers_with_idempotency_keys_give_the_outcomes_of_one_at_a_time_in_arrival_order(
        loop_and_pool, stream, max_batch, max_in_flight):
    # a key's first use is applied and its outcome stored; a later use for the same request is
    # answered that outcome (replayed), for another request 422 idempotency_key_reused
    from server.ledger.idempotency import KeyedRequest, Outcome

    loop, pool = loop_and_pool

    async def scenario():
        asset, ids, batcher, model = await _funded_accounts(pool, max_batch, max_in_flight)
        prefix = f"{asset.asset_id}-"

        def render(result):
            return Outcome.of_problem(result, "/") if isinstance(result, Problem) else Outcome.of(200, {})

        def submit(step, key):
            kind, *rest = step
            keyed = None if key is None else KeyedRequest(prefix + key, repr(step), "/")
            if kind == "change":
                ref, change = AccountRef(ids[rest[0]]), BalanceChangeOrder(rest[1])
                return (batcher.apply_change(ref, change) if keyed is None
                        else batcher.apply_change_keyed(ref, change, keyed, render))
            order = TransferOrder(AccountRef(ids[rest[0]]), AccountRef(ids[rest[1]]), rest[2])
            return batcher.apply_transfer(order) if keyed is None else batcher.apply_transfer_keyed(order, keyed, render)

        results = await asyncio.gather(*(asyncio.create_task(submit(step, key)) for step, key in stream),
                                       return_exceptions=True)
        answers = []
        for result in results:
            if type(result) is tuple:  # a keyed request's (outcome, replayed); AppliedChange is a NamedTuple
                outcome, replayed = result
                code = json.loads(outcome.body)["code"] if outcome.status >= 400 else "ok"
                answers.append(f"replayed {code}" if replayed else code)
            else:
                answers.append(_code(result))
        expected, first_use = [], {}
        for step, key in stream:
            if key is not None and key in first_use:
                request, code = first_use[key]
                expected.append(f"replayed {code}" if request == step else "idempotency_key_reused")
                continue
            kind, *rest = step
            if kind == "change":
                name, amount = rest
                code = model.transfer(SYSTEM, name, amount) if amount > 0 else model.transfer(name, SYSTEM, -amount)
            else:
                code = model.transfer(*rest)
            if key is not None:
                first_use[key] = (step, code)
            expected.append(code)
        assert answers == expected
        stored = {name: await read_account(pool, ids[name]) for name in ACCOUNTS}
        assert {name: account.balance for name, account in stored.items()} == model.balance

    loop.run_until_complete(scenario())
