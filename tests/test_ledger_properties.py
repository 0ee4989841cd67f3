"""Random sequences of transfers, batches of transfers (one call: set-based, or item by item), holds
and their posts (whole or partial) and voids, balance changes, freezes and limit changes, run through the real SQL (server.ledger against PostgreSQL), agree
step by step with an in-memory model of the rules: limits counting open holds, statuses, the order
in which refusals are reported, pending sums, each hold's status, and per-asset conservation."""

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.ledger.accounts import (AccountUpdate, NewAccount, create_account, read_account, set_account_status,
                                    update_account)
from server.ledger.assets import create_asset
from server.ledger.moving_money import apply_ledger_batch, apply_transfer_batch
from server.ledger.records import AccountRef, BalanceChangeOrder, ResolvePending, Transfer, TransferOrder
from server.ledger.transfer_reads import read_transfer
from server.problems import Problem
from tests.ledger_model import ACCOUNTS, MAX_BIGINT, SYSTEM, Model

amounts = st.one_of(st.integers(1, 200), st.sampled_from([MAX_BIGINT, MAX_BIGINT - 1]))
sides = st.sampled_from([*ACCOUNTS, SYSTEM])
steps = st.lists(st.one_of(
    st.tuples(st.just("transfer"), sides, sides, amounts),
    st.tuples(st.just("batch"), st.lists(st.tuples(sides, sides, amounts), min_size=1, max_size=12)),
    st.tuples(st.just("hold"), sides, sides, amounts),
    st.tuples(st.just("post"), st.integers(0, 9), st.one_of(st.none(), st.integers(1, 250))),
    st.tuples(st.just("void"), st.integers(0, 9)),
    st.tuples(st.just("change"), st.sampled_from(ACCOUNTS), st.integers(-200, 200).filter(bool)),
    st.tuples(st.just("freeze"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("unfreeze"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("limits"), st.sampled_from(ACCOUNTS), st.integers(0, 300),
              st.one_of(st.none(), st.integers(0, 400))),
), min_size=1, max_size=40)


async def _one(db, item):
    """Apply one item (a transfer or hold, a post or void, or a balance change ``(account, change)``)
    as the service's batcher does, in a batch of its own; return its result or raise its refusal."""
    (result,) = await apply_ledger_batch(db, [item], [None])
    if isinstance(result, Problem):
        raise result
    return result


async def _run(pool, script) -> None:
    code = f"p{uuid.uuid4().hex[:20]}"
    async with pool.acquire() as db:
        asset = await create_asset(db, code, 0, None)
        ids = {name: (await create_account(db, NewAccount(asset))).account_id for name in ACCOUNTS}
        ids[SYSTEM] = asset.system_account_id
        model = Model()
        hold_ids: list[int] = []
        for step in script:
            kind, name, *rest = step
            if kind in ("post", "void"):
                if not hold_ids:
                    continue
                name %= len(hold_ids)  # which hold
            got: str
            try:
                if kind == "batch":  # plain transfers in one call: the set-based path, or item by item
                    orders = [TransferOrder(AccountRef(ids[source]),
                                                   AccountRef(ids[destination]), amount)
                              for source, destination, amount in name]
                    committed, results = await apply_transfer_batch(db, orders, atomic=False)
                    each = ["ok" if isinstance(result, Transfer) else result.code for result in results]
                    assert committed and each == [model.transfer(*item) for item in name], step
                    expected = "ok"
                elif kind == "hold":
                    destination, amount = rest
                    made = await _one(db, TransferOrder(
                        AccountRef(ids[name]), AccountRef(ids[destination]), amount, pending=True))
                    hold_ids.append(made.transfer_id)
                    expected = model.transfer(name, destination, amount, pending=True)
                elif kind in ("post", "void"):
                    amount = rest[0] if kind == "post" else None
                    await _one(db, ResolvePending(hold_ids[name], kind == "post", amount))
                    expected = model.resolve(name, kind == "post", amount)
                elif kind == "transfer":
                    destination, amount = rest
                    await _one(db, TransferOrder(
                        AccountRef(ids[name]), AccountRef(ids[destination]), amount))
                    expected = model.transfer(name, destination, amount)
                elif kind == "change":
                    (amount,) = rest
                    await _one(db, (AccountRef(ids[name]), BalanceChangeOrder(amount)))
                    expected = model.transfer(SYSTEM, name, amount) if amount > 0 else model.transfer(name, SYSTEM, -amount)
                elif kind in ("freeze", "unfreeze"):
                    await set_account_status(db, ids[name], "frozen" if kind == "freeze" else "open")
                    model.status[name] = "frozen" if kind == "freeze" else "open"
                    expected = "ok"
                else:
                    overdraft, max_balance = rest
                    await update_account(db, ids[name], AccountUpdate(
                        overdraft_limit=overdraft, max_balance=max_balance, max_balance_given=True))
                    expected = model.set_limits(name, overdraft, max_balance)
                got = "ok"
            except Problem as refusal:
                got = refusal.code
                if kind == "hold":
                    expected = model.transfer(name, *rest, pending=True)
                elif kind in ("post", "void"):
                    amount = rest[0] if kind == "post" else None
                    expected = model.resolve(name, kind == "post", amount)
                elif kind == "transfer":
                    expected = model.transfer(name, *rest)
                elif kind == "change":
                    (amount,) = rest
                    expected = model.transfer(SYSTEM, name, amount) if amount > 0 else model.transfer(name, SYSTEM, -amount)
                else:
                    expected = model.set_limits(name, *rest)
            assert got == expected, (step, got, expected)
            stored = {name: (await read_account(db, ids[name])) for name in (*ACCOUNTS, SYSTEM)}
            assert {name: stored[name].balance for name in ACCOUNTS} == model.balance, step
            assert {name: stored[name].status for name in ACCOUNTS} == model.status, step
            assert {name: stored[name].pending_debits for name in ACCOUNTS} == {
                name: model.pending(name, "from") for name in ACCOUNTS}, step
            assert {name: stored[name].pending_credits for name in ACCOUNTS} == {
                name: model.pending(name, "to") for name in ACCOUNTS}, step
            assert [(await read_transfer(db, hold_id)).status for hold_id in hold_ids] == [
                hold.status for hold in model.holds], step
            assert stored[SYSTEM].balance == -sum(model.balance.values()), step  # conservation


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_random_ledger_operations_agree_with_the_model_after_every_step(loop_and_pool, script):
    loop, pool = loop_and_pool
    loop.run_until_complete(_run(pool, script))
