"""Random sequences of transfers, holds and their posts (whole or partial) and voids, balance changes,
freezes and limit changes, run through the real SQL (server.ledger.store against PostgreSQL), agree
step by step with an in-memory model of the rules: limits counting open holds, statuses, the order
in which refusals are reported, pending sums, each hold's status, and per-asset conservation."""

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
        self.pending_out = {name: 0 for name in ACCOUNTS}
        self.pending_in = {name: 0 for name in ACCOUNTS}
        self.holds: list[dict] = []  # {source, destination, amount, status}

    def _refusal(self, source, destination, amount) -> str | None:
        if source == destination:
            return "same_account"
        for side in (source, destination):
            if side != SYSTEM and self.status[side] != "open":
                return "account_frozen"
        if source != SYSTEM and self.balance[source] - self.pending_out[source] - amount < -self.overdraft[source]:
            return "insufficient_funds"
        if destination != SYSTEM:
            ceiling = self.max_balance[destination]
            reserved = self.balance[destination] + self.pending_in[destination]
            if ceiling is not None and reserved + amount > ceiling:
                return "max_balance_exceeded"
            if reserved + amount > MAX_BIGINT:
                return "balance_overflow"
        return None

    def _move(self, source, destination, amount) -> None:
        for side, sign in ((source, -1), (destination, +1)):
            if side == SYSTEM:
                self.system += sign * amount
            else:
                self.balance[side] += sign * amount

    def _reserve(self, hold: dict, sign: int) -> None:
        if hold["source"] != SYSTEM:
            self.pending_out[hold["source"]] += sign * hold["amount"]
        if hold["destination"] != SYSTEM:
            self.pending_in[hold["destination"]] += sign * hold["amount"]

    def hold(self, source, destination, amount) -> str:
        refusal = self._refusal(source, destination, amount)
        if refusal:
            return refusal
        self.holds.append({"source": source, "destination": destination, "amount": amount, "status": "pending"})
        self._reserve(self.holds[-1], +1)
        return "ok"

    def resolve(self, number: int, post: bool, amount: int | None) -> str:
        hold = self.holds[number]
        if hold["status"] != "pending":
            return f"pending_transfer_already_{hold['status']}"
        if post and amount is not None and amount > hold["amount"]:
            return "exceeds_pending_amount"
        if post and any(side != SYSTEM and self.status[side] != "open" for side in (hold["source"], hold["destination"])):
            return "account_frozen"
        self._reserve(hold, -1)
        if post:
            self._move(hold["source"], hold["destination"], hold["amount"] if amount is None else amount)
        hold["status"] = "posted" if post else "voided"
        return "ok"

    def transfer(self, source, destination, amount) -> str:
        refusal = self._refusal(source, destination, amount)
        if refusal:
            return refusal
        self._move(source, destination, amount)
        return "ok"

    def set_limits(self, name, overdraft, max_balance) -> str:
        balance = self.balance[name]
        if (balance - self.pending_out[name] < -overdraft
                or (max_balance is not None and balance + self.pending_in[name] > max_balance)):
            return "limit_violated"
        self.overdraft[name], self.max_balance[name] = overdraft, max_balance
        return "ok"


amounts = st.one_of(st.integers(1, 200), st.sampled_from([MAX_BIGINT, MAX_BIGINT - 1]))
sides = st.sampled_from([*ACCOUNTS, SYSTEM])
steps = st.lists(st.one_of(
    st.tuples(st.just("transfer"), sides, sides, amounts),
    st.tuples(st.just("hold"), sides, sides, amounts),
    st.tuples(st.just("post"), st.integers(0, 9), st.one_of(st.none(), st.integers(1, 250))),
    st.tuples(st.just("void"), st.integers(0, 9)),
    st.tuples(st.just("change"), st.sampled_from(ACCOUNTS), st.integers(-200, 200).filter(bool)),
    st.tuples(st.just("freeze"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("unfreeze"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("limits"), st.sampled_from(ACCOUNTS), st.integers(0, 300),
              st.one_of(st.none(), st.integers(0, 400))),
), min_size=1, max_size=40)


async def _run(pool, script) -> None:
    code = f"p{uuid.uuid4().hex[:20]}"
    async with pool.acquire() as db:
        asset = await ledger.create_asset(db, code, 0, None)
        ids = {name: (await ledger.create_account(db, ledger.NewAccount(asset))).account_id for name in ACCOUNTS}
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
                if kind == "hold":
                    destination, amount = rest
                    made = await ledger.transfer_funds(db, ledger.TransferOrder(
                        ledger.AccountRef(ids[name]), ledger.AccountRef(ids[destination]), amount, pending=True))
                    hold_ids.append(made.transfer_id)
                    expected = model.hold(name, destination, amount)
                elif kind in ("post", "void"):
                    amount = rest[0] if kind == "post" else None
                    await ledger.resolve_pending_transfer(db, hold_ids[name], kind == "post", amount)
                    expected = model.resolve(name, kind == "post", amount)
                elif kind == "transfer":
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
                if kind == "hold":
                    expected = model.hold(name, *rest)
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
            stored = {name: (await ledger.read_account(db, ids[name])) for name in (*ACCOUNTS, SYSTEM)}
            assert {name: stored[name].balance for name in ACCOUNTS} == model.balance, step
            assert {name: stored[name].status for name in ACCOUNTS} == model.status, step
            assert {name: stored[name].pending_debits for name in ACCOUNTS} == model.pending_out, step
            assert {name: stored[name].pending_credits for name in ACCOUNTS} == model.pending_in, step
            assert [(await ledger.read_transfer(db, hold_id)).status for hold_id in hold_ids] == [
                hold["status"] for hold in model.holds], step
            assert stored[SYSTEM].balance == model.system == -sum(model.balance.values()), step  # conservation


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_random_ledger_operations_agree_with_the_model_after_every_step(loop_and_pool, script):
    loop, pool = loop_and_pool
    loop.run_until_complete(_run(pool, script))
