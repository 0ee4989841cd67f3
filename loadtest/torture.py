"""``balance-api torture``: a randomized run of every way to move money, with client-side faults,
then proof that nothing was lost or doubled (Jepsen's bank test and TigerBeetle's simulator are the
models: invariants checked on reads during the run and on everything at the end).

    balance-api torture --url URL [--url URL2 ...] --duration SECONDS --seed N --clients C

On a fresh asset and accounts, C clients each run their own random sequence of operations: PATCH,
credits, debits, transfers, holds (some with timeouts of a few seconds, so that they expire) and
their posts and voids, atomic and non-atomic batches, reversals, freezes. Every mutation carries an
``Idempotency-Key`` or a ``reference``. At random a request is abandoned mid-flight (a client
timeout of a few milliseconds), its connection dropped right after it is written, retried with the
same key or reference, or sent twice at once. Each client's random generator is seeded from
``--seed`` and its number, so the same seed gives every client the same sequence of choices (what
the server answers still depends on timing).

What each client knows for sure is every answer it got; a request without an answer is unknown.
At the end every unknown is resolved (a keyed request is sent again with its key: the service
answers what it did, or does it now; a referenced transfer is looked up by its reference), then:
  * every applied operation has exactly one transfer, and every answer of one keyed operation or
    reference names the same transfer (at most once; exactly once when acknowledged);
  * every transfer in the accounts' histories belongs to exactly one applied operation (nothing
    moved that no client asked for), and an atomic batch is applied whole or not at all;
  * every account's balance equals the sum of the transfers attributed to it, its pending sums
    equal its holds still pending, and no balance is outside its limits;
  * every hold ends pending (not yet expired), posted, voided or expired, never posted and voided;
  * the asset's supply equals the sum of its accounts' balances, and minus its system account's.
During the run a sampler reads every account and checks its limits. The first violation is printed
with the operations that touched that account; the exit code is then 1. A summary a user can quote
is printed either way: operations by kind and outcome, faults by kind, retries, unknown outcomes
resolved, violations.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import itertools
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from loadtest.progress import RunProgress

OVERDRAFT_FREE = 0
MAX_BALANCE = 1_000_000  # every account's ceiling, so that max_balance_exceeded happens too
FAULTS = ("abandon", "drop", "retry", "duplicate")


@dataclass
class Operation:
    """One logical operation of a client: its request, every answer it got, and how many of its
    sends got none. ``references`` are the transfer references it carries (a batch: one per item)."""

    number: int
    kind: str
    method: str
    path: str
    body: dict | None
    accounts: tuple[int, ...]
    key: str | None = None
    references: tuple[str, ...] = ()
    atomic: bool = False
    answers: list[tuple[int, dict]] = field(default_factory=list)
    unanswered: int = 0
    resolved: str | None = None  # how an unknown outcome was settled

    def headers(self) -> dict[str, str]:
        return {"Idempotency-Key": self.key} if self.key else {}


@dataclass
class Run:
    """Everything the clients did and learned; what verification reads."""

    asset: str
    system_account: int
    accounts: list[int]
    users: dict[int, int]  # account id -> user id
    operations: list[Operation] = field(default_factory=list)
    faults: collections.Counter = field(default_factory=collections.Counter)
    retries: int = 0
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    numbers: itertools.count = field(default_factory=itertools.count)


class Client:
    """One client: a keep-alive session to one of the targets and its own random generator."""

    def __init__(self, number: int, seed: int, base_url: str, run: Run, deadline: float):
        self.number, self.base_url, self.run, self.deadline = number, base_url, run, deadline
        self.random = random.Random(f"{seed}:{number}")
        self.holds: list[int] = []  # transfer ids of holds this client made
        self.made: list[int] = []  # transfer ids of posted transfers this client made
        self.session: aiohttp.ClientSession | None = None
        self.serial = 0

    def _name(self, what: str) -> str:
        self.serial += 1
        return f"t{self.run.asset}-{self.number}-{self.serial}-{what}"

    def _pick(self, count: int = 1) -> list[int]:
        return self.random.sample(self.run.accounts, count)

    def _amount(self) -> int:
        return self.random.choice((1, 2, 3, 5, 8, 13, 50, 200, 5_000, MAX_BALANCE))

    def next_operation(self) -> Operation:
        """The next operation of this client's sequence (its choices depend only on its generator
        and on which of its own holds and transfers were made)."""
        run, rnd = self.run, self.random
        kind = rnd.choices(("credit", "debit", "patch", "transfer", "hold", "post", "void", "batch", "reverse",
                            "freeze"), weights=(10, 10, 8, 20, 10, 8, 5, 8, 5, 2))[0]
        number = next(run.numbers)
        if kind in ("post", "void") and not self.holds or kind == "reverse" and not self.made:
            kind = "transfer"
        if kind in ("credit", "debit"):
            (account,) = self._pick()
            return Operation(number, kind, "POST", f"/api/accounts/{account}/{kind}", {"amount": self._amount()},
                             (account,), key=self._name(kind))
        if kind == "patch":
            (account,) = self._pick()
            amount = self._amount() * rnd.choice((1, -1))
            return Operation(number, kind, "PATCH", "/api/balance",
                             {"userId": run.users[account], "amount": amount, "asset": run.asset}, (account,),
                             key=self._name(kind))
        if kind in ("transfer", "hold"):
            item = self._transfer_item(pending=kind == "hold")
            return Operation(number, kind, "POST", "/api/transfers", item,
                             (item["fromAccountId"], item["toAccountId"]), references=(item["reference"],))
        if kind in ("post", "void"):
            hold = rnd.choice(self.holds)
            body = {"amount": rnd.choice((1, 2, 5))} if kind == "post" and rnd.random() < 0.5 else {}
            return Operation(number, kind, "POST", f"/api/transfers/{hold}/{kind}", body, (), key=self._name(kind))
        if kind == "batch":
            items = [self._transfer_item(pending=rnd.random() < 0.2) for _ in range(rnd.randint(1, 6))]
            atomic = rnd.random() < 0.5
            return Operation(number, kind, "POST", "/api/transfers/batch", {"atomic": atomic, "transfers": items},
                             tuple(a for i in items for a in (i["fromAccountId"], i["toAccountId"])),
                             references=tuple(i["reference"] for i in items), atomic=atomic)
        if kind == "reverse":
            original = rnd.choice(self.made)
            reference = self._name("reversal")
            return Operation(number, kind, "POST", f"/api/transfers/{original}/reverse",
                             {"amount": rnd.choice((1, 2, 3)), "reference": reference}, (), references=(reference,))
        (account,) = self._pick()
        return Operation(number, "freeze", "POST", f"/api/accounts/{account}/freeze", None, (account,),
                         key=self._name("freeze"))

    def _transfer_item(self, pending: bool) -> dict:
        source, destination = self._pick(2)
        if self.random.random() < 0.15:
            source = self.run.system_account  # a top-up from the treasury
        item = {"fromAccountId": source, "toAccountId": destination, "amount": self._amount(),
                "reference": self._name("transfer"), "code": "torture"}
        if pending:
            item["pending"] = True
            if self.random.random() < 0.5:
                item["timeoutSeconds"] = self.random.randint(1, 3)
        return item

    async def send(self, operation: Operation, timeout: float = 30.0) -> tuple[int, dict] | None:
        """Send ``operation`` once; its answer (also recorded), or None when none came in time."""
        try:
            async with asyncio.timeout(timeout):
                async with self.session.request(operation.method, self.base_url + operation.path,
                                                json=operation.body, headers=operation.headers()) as response:
                    answer = response.status, await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
            operation.unanswered += 1
            return None
        operation.answers.append(answer)
        return answer

    async def drop(self, operation: Operation) -> None:
        """Write ``operation`` on a connection of its own and close it at once, reading nothing."""
        parts = urlsplit(self.base_url)
        body = json.dumps(operation.body).encode() if operation.body is not None else b""
        head = [f"{operation.method} {operation.path} HTTP/1.1", f"Host: {parts.netloc}",
                "Content-Type: application/json", f"Content-Length: {len(body)}",
                *(f"{name}: {value}" for name, value in operation.headers().items())]
        try:
            _, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            writer.close()
        except OSError:
            pass
        operation.unanswered += 1

    async def perform(self, operation: Operation) -> None:
        fault = self.random.choices((None, *FAULTS), weights=(80, 6, 4, 6, 4))[0]
        if fault:
            self.run.faults[fault] += 1
        if fault == "abandon":
            await self.send(operation, timeout=self.random.uniform(0.001, 0.03))
        elif fault == "drop":
            await self.drop(operation)
        elif fault == "duplicate":
            await asyncio.gather(self.send(operation), self.send(operation))
        else:
            await self.send(operation)
        if fault == "retry":
            self.run.retries += 1
            await self.send(operation)
        if operation.kind == "freeze":  # frozen briefly: unfreeze at once (a keyed operation of its own)
            await self.perform(Operation(next(self.run.numbers), "unfreeze", "POST",
                                         operation.path.replace("/freeze", "/unfreeze"), None, operation.accounts,
                                         key=self._name("unfreeze")))
        self._learn(operation)

    def _learn(self, operation: Operation) -> None:
        self.run.operations.append(operation)
        for status, body in operation.answers:
            if operation.kind == "hold" and status == 201:
                self.holds.append(body["transferId"])
            elif operation.kind in ("transfer", "reverse") and status == 201:
                self.made.append(body["transferId"])

    async def loop(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as self.session:
            while time.monotonic() < self.deadline:
                await self.perform(self.next_operation())


# ---------------------------------------------------------------------------------------------
# Set-up, sampling and verification, through the API
# ---------------------------------------------------------------------------------------------

async def _call(session: aiohttp.ClientSession, method: str, url: str, body: dict | None = None,
                headers: dict | None = None) -> tuple[int, dict]:
    async with session.request(method, url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def set_up(session: aiohttp.ClientSession, base_url: str, seed: int, count: int) -> Run:
    """A fresh asset and ``count`` user accounts in it, each with a ceiling of ``MAX_BALANCE``."""
    code = f"torture_{seed}_{uuid.uuid4().hex[:8]}"
    status, asset = await _call(session, "POST", f"{base_url}/api/assets", {"code": code, "scale": 0})
    if status != 201:
        raise RuntimeError(f"could not create the asset: {status} {asset}")
    accounts, users = [], {}
    for _ in range(count):
        _, user = await _call(session, "POST", f"{base_url}/api/users")
        _, account = await _call(session, "POST", f"{base_url}/api/accounts",
                                 {"asset": code, "userId": user["userId"], "maxBalance": MAX_BALANCE})
        accounts.append(account["accountId"])
        users[account["accountId"]] = user["userId"]
    return Run(code, asset["systemAccountId"], accounts, users)


def within_limits(account: dict) -> bool:
    """Whether an account as ``GET /api/accounts/{id}`` shows it keeps the torture's limits: available
    at or above minus the overdraft limit, balance plus incoming holds at or below the ceiling."""
    return -OVERDRAFT_FREE <= account["available"] and account["balance"] + account["pendingCredits"] <= MAX_BALANCE


async def sample(session: aiohttp.ClientSession, base_url: str, run: Run, stop: asyncio.Event) -> None:
    """Jepsen-style reads during the run: every account within its limits at every read."""
    while not stop.is_set():
        for account in run.accounts:
            try:
                status, shown = await _call(session, "GET", f"{base_url}/api/accounts/{account}")
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
                continue  # the service is down for a moment (a fault): nothing to read
            if status == 200 and not within_limits(shown):
                run.violations.append(f"account {account} outside its limits during the run: {shown}")
        run.samples += 1
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


def _applied(status: int) -> bool:
    return status in (200, 201)


async def resolve(client: Client, run: Run) -> None:
    """Settle every operation with an unknown outcome (see the module doc)."""
    for operation in run.operations:
        if not operation.unanswered or operation.answers and operation.key:
            continue  # an answer of a keyed operation says what it did (replays answer the same)
        if operation.key:
            answer = await client.send(operation)
            operation.resolved = "sent again with its key" if answer else "unresolved"
        elif operation.references:
            operation.resolved = "looked up by reference"


async def verify(session: aiohttp.ClientSession, base_url: str, run: Run) -> None:
    """The end-of-run checks of the module doc; violations go to ``run.violations``."""
    violations = run.violations
    found: dict[str, dict | None] = {}
    for operation in run.operations:
        for reference in operation.references:
            status, listing = await _call(session, "GET", f"{base_url}/api/transfers?reference={reference}")
            found[reference] = listing["transfers"][0] if status == 200 and listing["transfers"] else None

    owner: dict[int, int] = {}  # transfer id -> the operation it belongs to
    holds_posted, holds_voided = collections.defaultdict(list), collections.defaultdict(list)

    def attribute(transfer_id: int, operation: Operation) -> None:
        if owner.setdefault(transfer_id, operation.number) != operation.number:
            violations.append(f"transfer {transfer_id} belongs to operations {owner[transfer_id]} and "
                              f"{operation.number}")

    for operation in run.operations:
        if operation.key and operation.kind in ("credit", "debit", "patch"):
            made = {body.get("transferId") for status, body in operation.answers if status == 200}
            if len(made) > 1:
                violations.append(f"operation {operation.number} ({operation.kind}) answered different transfers "
                                  f"{sorted(made)} for one key: applied more than once")
            for transfer_id in made:
                attribute(transfer_id, operation)
        elif operation.kind in ("post", "void"):
            hold = int(operation.path.split("/")[3])
            if any(status == 200 for status, _ in operation.answers):
                (holds_posted if operation.kind == "post" else holds_voided)[hold].append(operation.number)
        elif operation.references:
            items = [found[reference] for reference in operation.references]
            for status, body in operation.answers:
                acknowledged = body.get("results", [body]) if operation.kind == "batch" else [body]
                for reference, answer in zip(operation.references, acknowledged):
                    transfer = answer.get("transfer", {}) if operation.kind == "batch" else answer
                    if _applied(answer["status"] if operation.kind == "batch" else status) and "transferId" in transfer:
                        if found[reference] is None or found[reference]["transferId"] != transfer["transferId"]:
                            violations.append(f"operation {operation.number}: reference {reference} was acknowledged "
                                              f"as transfer {transfer['transferId']} but finds {found[reference]}")
            if operation.atomic and 0 < sum(item is not None for item in items) < len(items):
                violations.append(f"atomic batch {operation.number} applied in part: {operation.references}")
            for item in items:
                if item is not None:
                    attribute(item["transferId"], operation)
    for hold, posts in holds_posted.items():
        if len(posts) > 1:
            violations.append(f"hold {hold} acknowledged as posted by {len(posts)} operations {posts}")
    for hold in holds_posted.keys() & holds_voided.keys():
        violations.append(f"hold {hold} acknowledged as posted (operations {holds_posted[hold]}) and as voided "
                          f"(operations {holds_voided[hold]})")

    transfers: dict[int, dict] = {}
    for transfer_id in owner:
        status, transfer = await _call(session, "GET", f"{base_url}/api/transfers/{transfer_id}")
        if status != 200:
            violations.append(f"transfer {transfer_id}, acknowledged, is missing: {status}")
            continue
        transfers[transfer_id] = transfer
        if transfer["status"] == "posted" and transfer_id in holds_voided:
            violations.append(f"hold {transfer_id} was acknowledged voided but reads posted")
        if transfer["status"] == "voided" and transfer_id in holds_posted:
            violations.append(f"hold {transfer_id} was acknowledged posted but reads voided")
    await _let_short_holds_expire(session, base_url, transfers)
    for operation in run.operations:  # a reversal counts against its original
        if operation.kind == "reverse":
            original = int(operation.path.split("/")[3])
            if original not in owner:
                violations.append(f"operation {operation.number} reversed transfer {original}, which no operation made")

    expected = {account: 0 for account in run.accounts}
    pending_out, pending_in = dict.fromkeys(run.accounts, 0), dict.fromkeys(run.accounts, 0)
    for transfer in transfers.values():
        moved = transfer["postedAmount"] if transfer["status"] == "posted" else 0
        for side, sign in (("fromAccountId", -1), ("toAccountId", 1)):
            if transfer[side] in expected:
                expected[transfer[side]] += sign * moved
        if transfer["status"] == "pending":
            for side, sums in (("fromAccountId", pending_out), ("toAccountId", pending_in)):
                if transfer[side] in sums:
                    sums[transfer[side]] += transfer["amount"]
    total = 0
    for account in run.accounts:
        _, shown = await _call(session, "GET", f"{base_url}/api/accounts/{account}")
        total += shown["balance"]
        if (shown["balance"], shown["pendingDebits"], shown["pendingCredits"]) != (
                expected[account], pending_out[account], pending_in[account]):
            violations.append(f"account {account}: balance {shown['balance']}, pending {shown['pendingDebits']} out / "
                              f"{shown['pendingCredits']} in; the operations account for {expected[account]}, "
                              f"{pending_out[account]} / {pending_in[account]}")
        if not within_limits(shown):
            violations.append(f"account {account} outside its limits: {shown}")
        history = await _history(session, base_url, account)
        unknown = sorted(set(history) - owner.keys())
        if unknown:
            violations.append(f"account {account}: transfers {unknown[:10]} in its history belong to no operation")
    _, asset = await _call(session, "GET", f"{base_url}/api/assets/{run.asset}")
    _, system = await _call(session, "GET", f"{base_url}/api/accounts/{run.system_account}")
    if not asset["supply"] == total == -system["balance"]:
        violations.append(f"asset {run.asset}: supply {asset['supply']}, balances sum to {total}, system account "
                          f"{system['balance']}")


async def _let_short_holds_expire(session: aiohttp.ClientSession, base_url: str, transfers: dict[int, dict]) -> None:
    """Wait until every pending hold with a timeout (a few seconds, at most 30) has expired, then read
    those again: otherwise one could expire between reading it and reading its accounts, and the
    comparison of pending sums would race the clock (this machine's: the service runs beside it)."""
    deadlines = {transfer_id: dt.datetime.fromisoformat(transfer["expiresAt"])
                 for transfer_id, transfer in transfers.items() if transfer["status"] == "pending" and transfer["expiresAt"]}
    wait = max((deadline - dt.datetime.now(dt.UTC)).total_seconds() for deadline in deadlines.values()) \
        if deadlines else 0
    if 0 < wait <= 30:
        await asyncio.sleep(wait + 0.3)
    for transfer_id in deadlines:
        transfers[transfer_id] = (await _call(session, "GET", f"{base_url}/api/transfers/{transfer_id}"))[1]


async def _history(session: aiohttp.ClientSession, base_url: str, account: int) -> list[int]:
    """Every transfer id in ``account``'s history (all pages)."""
    ids, cursor = [], None
    while True:
        query = f"?limit=500{f'&cursor={cursor}' if cursor else ''}"
        _, page = await _call(session, "GET", f"{base_url}/api/accounts/{account}/history{query}")
        ids += [entry["transferId"] for entry in page["entries"]]
        if not (cursor := page["nextCursor"]):
            return ids


def summary(run: Run, seconds: float, seed: int) -> str:
    """The quotable summary: operations by kind and outcome, faults, retries, resolutions, violations."""
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for operation in run.operations:
        for status, body in operation.answers:
            label = str(status) if status < 400 else body.get("code", str(status))
            if operation.kind == "batch" and status == 200:
                label = "committed" if body.get("committed") else "rolled back"
            outcomes[operation.kind][label] += 1
        if operation.unanswered and not operation.answers:
            outcomes[operation.kind]["no answer"] += 1
    lines = [f"torture: seed {seed}, {len(run.operations)} operations in {seconds:.0f} s, asset {run.asset}, "
             f"{len(run.accounts)} accounts",
             "operations (answers by outcome):"]
    for kind in sorted(outcomes):
        lines.append(f"  {kind:<9} " + ", ".join(f"{label} {count}" for label, count in outcomes[kind].most_common()))
    lines.append("faults: " + ", ".join(f"{fault} {run.faults[fault]}" for fault in FAULTS) + f"; retries {run.retries}")
    resolved = collections.Counter(operation.resolved for operation in run.operations if operation.resolved)
    lines.append("unknown outcomes resolved: " + (", ".join(f"{how} {count}" for how, count in resolved.items())
                                                  or "none"))
    lines.append(f"samples during the run: {run.samples}")
    lines.append(f"violations: {len(run.violations)}")
    return "\n".join(lines)


def _touching(run: Run, violation: str) -> list[str]:
    words = {int(word) for word in violation.replace(",", " ").replace(":", " ").split() if word.isdigit()}
    return [f"  #{op.number} {op.kind} {op.method} {op.path} {json.dumps(op.body)} answers {op.answers} "
            f"unanswered {op.unanswered}" for op in run.operations if words & set(op.accounts)][:40]


LOAD_STEPS = 10  # progress steps of the load phase, each a tenth of --duration


async def torture(urls: list[str], duration: float, seed: int, clients: int, accounts: int,
                  progress: RunProgress | None = None) -> tuple[Run, float]:
    """Set up, run ``clients`` clients for ``duration`` seconds against ``urls``, resolve, verify (see
    the module doc); return the :class:`Run` (its ``violations`` empty when all holds) and the
    seconds it took. ``progress`` is told each step: set-up, each tenth of the load, resolve, verify."""
    progress = progress or RunProgress(LOAD_STEPS + 3, open(os.devnull, "w"))
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        progress.start("set up: an asset and its accounts")
        run = await set_up(session, urls[0], seed, accounts)
        progress.done(f"  asset {run.asset}, accounts {run.accounts}")
        deadline = time.monotonic() + duration
        workers = [Client(number, seed, urls[number % len(urls)], run, deadline) for number in range(clients)]
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(session, urls[0], run, stop))
        load = asyncio.gather(*(worker.loop() for worker in workers))
        for step in range(1, LOAD_STEPS + 1):
            progress.start(f"load: {clients} clients, {duration * step / LOAD_STEPS:.0f} of {duration:.0f} s")
            await asyncio.wait([load], timeout=max(0.0, deadline - duration * (1 - step / LOAD_STEPS)
                                                   - time.monotonic()))
            progress.done(f"  {len(run.operations)} operations, faults {sum(run.faults.values())}, "
                          f"violations {len(run.violations)}")
        await load
        stop.set()
        await sampler
        progress.start("resolve unknown outcomes")
        settler = Client(clients, seed, urls[0], run, deadline)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as settler.session:
            await resolve(settler, run)
        progress.done(f"  {sum(1 for operation in run.operations if operation.resolved)} resolved")
        progress.start("verify")
        await verify(session, urls[0], run)
        progress.done(f"  violations {len(run.violations)}")
    return run, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balance-api torture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", required=True, help="service base URL (several: clients spread)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=6, help="accounts sharing the load (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the summary counts as JSON to PATH")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.duration <= 0 or args.clients < 1 or args.accounts < 2:
        parser.error("--duration must be > 0, --clients >= 1, --accounts >= 2")
    with RunProgress(LOAD_STEPS + 3, sys.stderr) as progress:  # a bar on a terminal, plain lines in logs
        run, seconds = asyncio.run(torture([url.rstrip("/") for url in args.url], args.duration, args.seed,
                                           args.clients, args.accounts, progress))
    print(summary(run, seconds, args.seed))
    if run.violations:
        print(f"FIRST VIOLATION: {run.violations[0]}")
        print("\n".join(_touching(run, run.violations[0])))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"operations": len(run.operations), "faults": dict(run.faults), "retries": run.retries,
                       "violations": run.violations, "samples": run.samples,
                       "kinds": dict(collections.Counter(op.kind for op in run.operations)),
                       "unknown_resolved": sum(1 for op in run.operations if op.resolved)}, out, indent=2)
    return 1 if run.violations else 0


if __name__ == "__main__":
    sys.exit(main())
