"""Random sequences of transfers, balance changes, freezes and limit changes, run through the real
SQL (server.ledger.store against PostgreSQL), agree step by step with an in-memory model of the rules:
limits, statuses, the order in which refusals are reported, and per-asset conservation."""

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.ledger import store as ledger
from server.problems import Problem

MAX_BIGINT = 2**63 - 1
SYSTEM = "system"
ACCOUNTS = (0, 1, 2)


class Model:
    """The ledger's rules for one asset: three accounts and the system account."""

    def __init__(self):
        self.balance = {name: 0 for name in ACCOUNTS}
        self.system = 0
        self.status = {name: "open" for name in ACCOUNTS}
        self.overdraft = {name: 0 for name in ACCOUNTS}
        self.max_balance: dict[int, int | None] = {name: None for name in ACCOUNTS}

    def _refusal(self, source, destination, amount) -> str | None:
        if source == destination:
            return "same_account"
        for side in (source, destination):
            if side != SYSTEM and self.status[side] != "open":
                return "account_frozen"
        if source != SYSTEM and self.balance[source] - amount < -self.overdraft[source]:
            return "insufficient_funds"
        if destination != SYSTEM:
            ceiling = self.max_balance[destination]
            if ceiling is not None and self.balance[destination] + amount > ceiling:
                return "max_balance_exceeded"
            if self.balance[destination] + amount > MAX_BIGINT:
                return "balance_overflow"
        return None

    def transfer(self, source, destination, amount) -> str:
        refusal = self._refusal(source, destination, amount)
        if refusal:
            return refusal
        for side, sign in ((source, -1), (destination, +1)):
            if side == SYSTEM:
                self.system += sign * amount
            else:
                self.balance[side] += sign * amount
        return "ok"

    def set_limits(self, name, overdraft, max_balance) -> str:
        balance = self.balance[name]
        if balance < -overdraft or (max_balance is not None and balance > max_balance):
            return "limit_violated"
        self.overdraft[name], self.max_balance[name] = overdraft, max_balance
        return "ok"


amounts = st.one_of(st.integers(1, 200), st.sampled_from([MAX_BIGINT, MAX_BIGINT - 1]))
sides = st.sampled_from([*ACCOUNTS, SYSTEM])
steps = st.lists(st.one_of(
    st.tuples(st.just("transfer"), sides, sides, amounts),
    st.tuples(st.just("change"), st.sampled_from(ACCOUNTS), st.integers(-200, 200).filter(bool)),
    st.tuples(st.just("freeze"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("unfreeze"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("limits"), st.sampled_from(ACCOUNTS), st.integers(0, 300),
              st.one_of(st.none(), st.integers(0, 400))),
), min_size=1, max_size=30)


async def _run(pool, script) -> None:
    code = f"p{uuid.uuid4().hex[:20]}"
    async with pool.acquire() as db:
        asset = await ledger.create_asset(db, code, 0, None)
        ids = {name: (await ledger.create_account(db, ledger.NewAccount(asset))).account_id for name in ACCOUNTS}
        ids[SYSTEM] = asset.system_account_id
        model = Model()
        for step in script:
            kind, name, *rest = step
            got: str
            try:
                if kind == "transfer":
                    destination, amount = rest
                    await ledger.transfer_funds(db, ledger.TransferOrder(
                        ledger.AccountRef(ids[name]), ledger.AccountRef(ids[destination]), amount))
                    expected = model.transfer(name, destination, amount)
                elif kind == "change":
                    (amount,) = rest
                    await ledger.apply_balance_change(db, ledger.AccountRef(ids[name]), ledger.BalanceChange(amount))
                    expected = model.transfer(SYSTEM, name, amount) if amount > 0 else model.transfer(name, SYSTEM, -amount)
                elif kind in ("freeze", "unfreeze"):
                    await ledger.set_account_status(db, ids[name], "frozen" if kind == "freeze" else "open")
                    model.status[name] = "frozen" if kind == "freeze" else "open"
                    expected = "ok"
                else:
                    overdraft, max_balance = rest
                    await ledger.update_account(db, ids[name], ledger.AccountUpdate(
                        overdraft_limit=overdraft, max_balance=max_balance, max_balance_given=True))
                    expected = model.set_limits(name, overdraft, max_balance)
                got = "ok"
            except Problem as refusal:
                got = refusal.code
                if kind == "transfer":
                    expected = model.transfer(name, *rest)
                elif kind == "change":
                    (amount,) = rest
                    expected = model.transfer(SYSTEM, name, amount) if amount > 0 else model.transfer(name, SYSTEM, -amount)
                else:
                    expected = model.set_limits(name, *rest)
            assert got == expected, (step, got, expected)
            stored = {name: (await ledger.read_account(db, ids[name])) for name in (*ACCOUNTS, SYSTEM)}
            assert {name: stored[name].balance for name in ACCOUNTS} == model.balance, step
            assert {name: stored[name].status for name in ACCOUNTS} == model.status, step
            assert stored[SYSTEM].balance == model.system == -sum(model.balance.values()), step  # conservation


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_random_ledger_operations_agree_with_the_model_after_every_step(loop_and_pool, script):
    loop, pool = loop_and_pool
    loop.run_until_complete(_run(pool, script))
