"""A hypothesis state machine over the real service (HTTP, a real PostgreSQL): random sequences of
transfers, holds, whole and partial posts, voids, expiries, atomic and non-atomic batches, client
references, reversals, credits and debits, freezes and limit changes, checked step by step against
an in-memory model of the rules. After every step the balances, available amounts, pending sums,
statuses, each hold's state, what has been reversed of each transfer and per-asset conservation
agree with the model.

The clock is controlled per hold: a hold made with a timeout expires when the rule ``expire`` moves
its ``expires_at`` into the past (one UPDATE, as if the clock had passed it), so no test waits.
"""

from __future__ import annotations

import copy
import http.client
import itertools
import json
import urllib.parse

import psycopg
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.ledger_model import ACCOUNTS, MAX_BIGINT, SYSTEM, Model

REFERENCES = tuple(f"r{i}" for i in range(4))  # few, so that they are reused often
_runs = itertools.count()


class Service:
    """One keep-alive HTTP/1.1 connection to the service: ``(status, headers, JSON body)`` per call."""

    def __init__(self, base_url: str):
        parts = urllib.parse.urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def __call__(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
        payload = None if body is None else json.dumps(body)
        self.connection.request(method, path, payload, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        return response.status, dict(response.headers), json.loads(response.read() or b"null")

    def close(self) -> None:
        self.connection.close()


OPENING_BALANCE = 200  # each account's, credited when the machine starts
amounts = st.one_of(st.integers(1, 120), st.integers(1, 120), st.sampled_from([MAX_BIGINT, MAX_BIGINT - 1]))
_distinct = [(a, b) for a in (*ACCOUNTS, SYSTEM) for b in (*ACCOUNTS, SYSTEM) if a != b]
pairs = st.sampled_from(_distinct * 3 + [(a, a) for a in ACCOUNTS])  # one in ten the same account
references = st.one_of(st.none(), st.sampled_from(REFERENCES))
transfer_items = st.builds(lambda pair, amount, pending, expires, reference: ("transfer", *pair, amount, pending,
                                                                               expires, reference),
                           pairs, amounts, st.booleans(), st.booleans(), references)
resolve_items = st.tuples(st.sampled_from(["post", "void"]), st.integers(0, 50), st.one_of(st.none(), st.integers(1, 160)))


class LedgerMachine(RuleBasedStateMachine):
    """Drives the service and the model with the same operations; the invariants compare them."""

    service_url: str
    database_url: str

    def __init__(self):
        super().__init__()
        self.call = Service(self.service_url)
        self.db = psycopg.connect(self.database_url, autocommit=True)
        self.model = Model()
        code = f"sm_{next(_runs)}_{id(self) % 1_000_000}"
        status, _, asset = self.call("POST", "/api/assets", {"code": code, "scale": 0})
        assert status == 201, asset
        self.asset = code
        self.ids = {name: self.call("POST", "/api/accounts", {"asset": code})[2]["accountId"] for name in ACCOUNTS}
        self.ids[SYSTEM] = asset["systemAccountId"]
        self.hold_ids: list[int] = []  # the service's id of model.holds[i]
        self.transfer_ids: list[int] = []  # the service's id of model.transfers[i]
        self.referenced: list[tuple] = []  # transfer items sent with a reference, to retry
        for name in ACCOUNTS:
            status, _, made = self.call("POST", f"/api/accounts/{self.ids[name]}/credit", {"amount": OPENING_BALANCE})
            assert (status, self.model.transfer(SYSTEM, name, OPENING_BALANCE)) == (200, "ok"), made
            self._made("ok", made)

    def teardown(self):
        self.call.close()
        self.db.close()

    # -- one transfer body, as for POST /api/transfers and as a batch item
    def _transfer_body(self, source, destination, amount, pending, expires, reference) -> dict:
        body = {"fromAccountId": self.ids[source], "toAccountId": self.ids[destination], "amount": amount}
        if pending:
            body["pending"] = True
            if expires:
                body["timeoutSeconds"] = 3600
        if reference is not None:
            body["reference"] = f"{self.asset}-{reference}"
        return body

    def _made(self, outcome: str, made: dict | None) -> None:
        """After the model accepted a new transfer (``ok``), note the service's id for it."""
        if outcome == "ok":
            self.transfer_ids.append(made["transferId"])
            if made.get("status") == "pending":
                self.hold_ids.append(made["transferId"])

    def _hold_number(self, number: int) -> int:
        return number % len(self.hold_ids)

    @rule(item=transfer_items)
    def transfer(self, item):
        self._send_transfer(item)

    @precondition(lambda self: self.referenced)
    @rule(number=st.integers(0, 50))
    def retry(self, number):
        """A client retries a transfer it sent with a reference (answered or not the first time)."""
        self._send_transfer(self.referenced[number % len(self.referenced)])

    def _send_transfer(self, item):
        _, source, destination, amount, pending, expires, reference = item
        if reference is not None:
            self.referenced.append(item)
        status, headers, body = self.call("POST", "/api/transfers",
                                          self._transfer_body(source, destination, amount, pending, expires, reference))
        expected = self.model.transfer(source, destination, amount, pending, pending and expires, reference)
        got = body["code"] if status >= 400 else "replayed" if headers.get("Idempotent-Replayed") == "true" else "ok"
        assert got == expected, (item, status, body)
        event(f"{'hold' if pending else 'transfer'}: {expected}")
        self._made(expected, body)

    @precondition(lambda self: self.hold_ids)
    @rule(item=resolve_items)
    def resolve(self, item):
        kind, number, amount = item
        number = self._hold_number(number)
        body = {"amount": amount} if kind == "post" and amount is not None else {}
        status, _, answer = self.call("POST", f"/api/transfers/{self.hold_ids[number]}/{kind}", body)
        expected = self.model.resolve(number, kind == "post", amount if kind == "post" else None)
        assert (answer["code"] if status >= 400 else "ok") == expected, (item, status, answer)
        event(f"{kind}: {expected}")

    @precondition(lambda self: any(h.status == "pending" and h.expires for h in self.model.holds))
    @rule(number=st.integers(0, 50))
    def expire(self, number):
        """The clock passes one pending hold's expiresAt."""
        candidates = [i for i, h in enumerate(self.model.holds) if h.status == "pending" and h.expires]
        chosen = candidates[number % len(candidates)]
        self.db.execute("UPDATE transfers SET expires_at = now() - interval '1 millisecond' WHERE id = %s",
                        (self.hold_ids[chosen],))
        self.model.holds[chosen].status = "expired"
        event("expire")

    @precondition(lambda self: self.transfer_ids)
    @rule(number=st.integers(0, 80), amount=st.one_of(st.none(), st.integers(1, 160)), reference=references)
    def reverse(self, number, amount, reference):
        number %= len(self.transfer_ids)
        body = {} if amount is None else {"amount": amount}
        if reference is not None:
            body["reference"] = f"{self.asset}-{reference}"
        status, headers, answer = self.call("POST", f"/api/transfers/{self.transfer_ids[number]}/reverse", body)
        expected = self.model.reverse(number, amount, reference)
        got = answer["code"] if status >= 400 else "replayed" if headers.get("Idempotent-Replayed") == "true" else "ok"
        assert got == expected, (number, amount, reference, status, answer)
        event(f"reverse: {expected}")
        self._made(expected, answer)

    @rule(atomic=st.booleans(), items=st.lists(st.one_of(transfer_items, resolve_items), min_size=1, max_size=5))
    def batch(self, atomic, items):
        bodies, plan = [], []  # plan: how the model applies each item
        for item in items:
            if item[0] == "transfer":
                _, source, destination, amount, pending, expires, reference = item
                bodies.append(self._transfer_body(source, destination, amount, pending, expires, reference))
                plan.append(lambda model, i=item: model.transfer(*i[1:5], i[4] and i[5], i[6]))
            elif self.hold_ids:
                kind, number, amount = item
                number = self._hold_number(number)
                bodies.append({"post": self.hold_ids[number], **({"amount": amount} if amount else {})}
                              if kind == "post" else {"void": self.hold_ids[number]})
                plan.append(lambda model, n=number, k=kind, a=amount: model.resolve(n, k == "post",
                                                                                    a if k == "post" else None))
        if not bodies:
            return
        status, _, answer = self.call("POST", "/api/transfers/batch", {"atomic": atomic, "transfers": bodies})
        assert status == 200, answer
        before = copy.deepcopy(self.model)
        expected = [apply(self.model) for apply in plan]
        failed = next((i for i, outcome in enumerate(expected) if outcome not in ("ok", "replayed")), None)
        if atomic and failed is not None:
            self.model = before
            expected = [outcome if i == failed else "linked_transfer_failed" for i, outcome in enumerate(expected)]
        got = [result["problem"]["code"] if "problem" in result else "replayed" if result.get("replayed") else "ok"
               for result in answer["results"]]
        assert answer["committed"] == (not atomic or failed is None), answer
        assert got == expected, (atomic, items, answer)
        event(f"{'atomic' if atomic else 'non-atomic'} batch: {'committed' if answer['committed'] else 'rolled back'}")
        for outcome in expected:
            event(f"batch item: {outcome}")
        for outcome, result in zip(expected, answer["results"]):
            if "transfer" in result and result["status"] == 201:
                self._made(outcome, result["transfer"])

    @rule(name=st.sampled_from(ACCOUNTS), amount=st.one_of(amounts, amounts.map(lambda a: -a)))
    def credit_or_debit(self, name, amount):
        route = "credit" if amount > 0 else "debit"
        status, _, answer = self.call("POST", f"/api/accounts/{self.ids[name]}/{route}", {"amount": abs(amount)})
        source, destination = (SYSTEM, name) if amount > 0 else (name, SYSTEM)
        expected = self.model.transfer(source, destination, abs(amount))
        assert (answer["code"] if status >= 400 else "ok") == expected, (name, amount, status, answer)
        event(f"{route}: {expected}")
        self._made(expected, answer)

    @rule(name=st.sampled_from(ACCOUNTS), frozen=st.sampled_from([True, False, False]))
    def freeze(self, name, frozen):
        status, _, answer = self.call("POST", f"/api/accounts/{self.ids[name]}/{'freeze' if frozen else 'unfreeze'}")
        assert status == 200, answer
        self.model.status[name] = "frozen" if frozen else "open"

    @rule(name=st.sampled_from(ACCOUNTS), overdraft=st.integers(0, 300), max_balance=st.one_of(st.none(),
                                                                                               st.integers(0, 400)))
    def limits(self, name, overdraft, max_balance):
        status, _, answer = self.call("PATCH", f"/api/accounts/{self.ids[name]}",
                                      {"overdraftLimit": overdraft, "maxBalance": max_balance})
        expected = self.model.set_limits(name, overdraft, max_balance)
        assert (answer["code"] if status >= 400 else "ok") == expected, (name, overdraft, max_balance, answer)
        event(f"limits: {expected}")

    @invariant()
    def accounts_agree(self):
        for name in ACCOUNTS:
            status, _, shown = self.call("GET", f"/api/accounts/{self.ids[name]}")
            pending_out, pending_in = self.model.pending(name, "from"), self.model.pending(name, "to")
            assert (shown["balance"], shown["available"], shown["pendingDebits"], shown["pendingCredits"],
                    shown["status"]) == (self.model.balance[name], self.model.balance[name] - pending_out,
                                         pending_out, pending_in, self.model.status[name]), (name, shown)

    @invariant()
    def the_asset_is_conserved(self):
        total = sum(self.model.balance.values())
        assert self.call("GET", f"/api/accounts/{self.ids[SYSTEM]}")[2]["balance"] == -total
        assert self.call("GET", f"/api/assets/{self.asset}")[2]["supply"] == total

    @invariant()
    def holds_and_reversals_agree(self):
        for number, hold in enumerate(self.model.holds):
            shown = self.call("GET", f"/api/transfers/{self.hold_ids[number]}")[2]
            assert (shown["status"], shown["postedAmount"] if hold.status == "posted" else None) == (
                hold.status, hold.posted_amount), (number, shown)
        for number, moved in enumerate(self.model.transfers):
            if moved.reversed:
                shown = self.call("GET", f"/api/transfers/{self.transfer_ids[number]}")[2]
                assert shown["reversedAmount"] == moved.reversed, (number, shown)


def test_random_ledger_operations_over_http_agree_with_the_model_after_every_step(service_url, database_url):
    LedgerMachine.service_url, LedgerMachine.database_url = service_url, database_url
    run_state_machine_as_test(LedgerMachine, settings=settings(
        max_examples=100, stateful_step_count=40, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
