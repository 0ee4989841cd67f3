"""An in-memory model of the ledger's rules for one asset (three accounts and its system account),
for the property tests: what each operation must answer and leave behind, applied one at a time."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_BIGINT = 2**63 - 1
SYSTEM = "system"
ACCOUNTS = (0, 1, 2)


@dataclass
class Hold:
    source: object
    destination: object
    amount: int
    expires: bool  # made with a timeout, so the clock may pass it
    status: str = "pending"  # pending, posted, voided, expired
    posted_amount: int | None = None


@dataclass
class Moved:
    """A transfer that moved money (plain, posted hold, credit, debit, reversal): what can be reversed."""

    source: object
    destination: object
    moved: int
    reversed: int = 0
    hold: int | None = None  # index into Model.holds when it is a hold (reversible once posted)


@dataclass
class Model:
    """The ledger's rules for one asset: three accounts and its system account."""

    balance: dict = field(default_factory=lambda: {name: 0 for name in ACCOUNTS})
    status: dict = field(default_factory=lambda: {name: "open" for name in ACCOUNTS})
    overdraft: dict = field(default_factory=lambda: {name: 0 for name in ACCOUNTS})
    max_balance: dict = field(default_factory=lambda: {name: None for name in ACCOUNTS})
    holds: list = field(default_factory=list)
    transfers: list = field(default_factory=list)  # Moved, in the order made
    references: dict = field(default_factory=dict)  # reference -> (content, index into transfers)

    def pending(self, name, role: str) -> int:
        return sum(h.amount for h in self.holds
                   if h.status == "pending" and (h.source if role == "from" else h.destination) == name)

    def _refusal(self, source, destination, amount) -> str | None:
        for side in (source, destination):
            if side != SYSTEM and self.status[side] != "open":
                return "account_frozen"
        if source != SYSTEM and self.balance[source] - self.pending(source, "from") - amount < -self.overdraft[source]:
            return "insufficient_funds"
        if destination != SYSTEM:
            reserved = self.balance[destination] + self.pending(destination, "to")
            ceiling = self.max_balance[destination]
            if ceiling is not None and reserved + amount > ceiling:
                return "max_balance_exceeded"
            if reserved + amount > MAX_BIGINT:
                return "balance_overflow"
        return None

    def _move(self, source, destination, amount) -> None:
        for side, sign in ((source, -1), (destination, 1)):
            if side != SYSTEM:
                self.balance[side] += sign * amount

    def _replay(self, reference, content) -> str | None:
        """None when ``reference`` is free; else the replay, or reference_reused for other content."""
        if reference is None or reference not in self.references:
            return None
        return "replayed" if self.references[reference][0] == content else "reference_reused"

    def transfer(self, source, destination, amount, pending=False, expires=False, reference=None) -> str:
        """A plain transfer or a hold: ``ok``, ``replayed`` or the refusal's code."""
        if source == destination:
            return "same_account"
        if replay := self._replay(reference, ("transfer", source, destination, amount, pending)):
            return replay
        if refusal := self._refusal(source, destination, amount):
            return refusal
        if pending:
            self.holds.append(Hold(source, destination, amount, expires))
            self.transfers.append(Moved(source, destination, 0, hold=len(self.holds) - 1))
        else:
            self._move(source, destination, amount)
            self.transfers.append(Moved(source, destination, amount))
        if reference is not None:
            self.references[reference] = (("transfer", source, destination, amount, pending), len(self.transfers) - 1)
        return "ok"

    def resolve(self, number: int, post: bool, amount: int | None = None) -> str:
        hold = self.holds[number]
        if hold.status in ("posted", "voided"):
            return f"pending_transfer_already_{hold.status}"
        if hold.status == "expired":
            return "pending_transfer_expired"
        if post and amount is not None and amount > hold.amount:
            return "exceeds_pending_amount"
        if post and any(side != SYSTEM and self.status[side] != "open" for side in (hold.source, hold.destination)):
            return "account_frozen"
        hold.status = "posted" if post else "voided"
        if post:
            hold.posted_amount = hold.amount if amount is None else amount
            self._move(hold.source, hold.destination, hold.posted_amount)
            next(t for t in self.transfers if t.hold == number).moved = hold.posted_amount
        return "ok"

    def reverse(self, number: int, amount: int | None, reference: str | None) -> str:
        original = self.transfers[number]
        content = ("reverse", number)
        if reference is not None and reference in self.references:
            made, index = self.references[reference]
            same = made == content and (amount is None or amount == self.transfers[index].moved)
            return "replayed" if same else "reference_reused"
        if original.hold is not None and self.holds[original.hold].status != "posted":
            return "transfer_not_posted"
        left = original.moved - original.reversed
        wanted = left if amount is None else amount
        if wanted < 1 or wanted > left:
            return "exceeds_reversible_amount"
        if refusal := self._refusal(original.destination, original.source, wanted):
            return refusal
        self._move(original.destination, original.source, wanted)
        original.reversed += wanted
        self.transfers.append(Moved(original.destination, original.source, wanted))
        if reference is not None:
            self.references[reference] = (content, len(self.transfers) - 1)
        return "ok"

    def set_limits(self, name, overdraft, max_balance) -> str:
        if (self.balance[name] - self.pending(name, "from") < -overdraft
                or (max_balance is not None and self.balance[name] + self.pending(name, "to") > max_balance)):
            return "limit_violated"
        self.overdraft[name], self.max_balance[name] = overdraft, max_balance
        return "ok"
