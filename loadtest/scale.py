"""``balance-api bench --scale``: what every read and write costs as the ledger grows (issue 23).

A ledger grows the way users grow it, through the public API, on one embedded PostgreSQL (or the
server at ``--postgres URL``, e.g. Debian's 15), in steps of ``accounts/transfers`` (STEPS,
cumulative): operator accounts opened with ``POST /api/accounts`` (OPENING_CONCURRENCY at a time,
each with an overdraft limit so that no transfer is refused for funds), then transfers made with
``POST /api/transfers/batch`` of BATCH_SIZE (BULK_SENDERS senders), between two random accounts,
SYSTEM_SHARE of them from or to the asset's system account (code ``topup``/``payout``). After each
step it measures, with the service running on the ledger as it is:

- the latency of every read route (READ_SAMPLES requests one after the other, each on a random
  account or transfer; the median): an account, the system account, the asset and its supply, an
  account's history (first page, and a time window of the first step: old by the last step), the
  system account's history, the balance at a moment of an account and of the system account (the
  first step's end), transfer listings (first page, by code, by account, in the old window) and a
  transfer by id;
- after the reads, the single-transfer rate (wrk, ``POST /api/transfers``, 200 connections,
  WINDOW_SECONDS) and the bulk rate (wrk, batches of BATCH_SIZE from BULK_SENDERS connections, as
  long), with their statuses: every one must be 2xx (their transfers count towards the next step);
- bytes of database per transfer (transfers, ledger entries, the system balances' tables and the
  change feed's events with their indexes, over the transfers counted), and the time ``balance-api check`` takes.

The goal printed under the table (issue 23): from the smallest to the largest step, no read route
more than READ_GOAL times slower. Everything is bounded: a fixed count of requests, each with a
timeout, wrk for WINDOW_SECONDS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg

from loadtest.bench import ACCOUNTS, Workload, _free_port, _server, _wrk, postgres_databases, service_env
from loadtest.from_empty import open_accounts
from loadtest.progress import RunProgress

STEPS = ((1_000, 20_000), (10_000, 100_000), (100_000, 300_000), (300_000, 1_000_000), (1_000_000, 3_000_000))
BATCH_SIZE, BULK_SENDERS = 1000, 4
SYSTEM_SHARE = 0.1  # of the transfers made: from or to the system account
AMOUNT_MAX = 100
READ_SAMPLES = 100
WINDOW_SECONDS = 2  # each rate's window: its transfers count towards the next step (they come after the reads)
OLD_WINDOW_SHARE = 0.1  # the old time window: the first tenth of the first step's growth
READ_GOAL = 3.0  # largest step against the smallest, every read route (issue 23)
TABLES = ("transfers", "ledger_entries", "system_balance_shards", "system_balance_changes", "events")


@dataclass
class Step:
    """One step's measurements: the ledger's size (accounts, transfers as counted for the reads),
    each read route's median latency (ms), the rates (transfers per second) with their statuses,
    bytes per transfer, the check's seconds, and how long growing to it took (s)."""

    accounts: int
    transfers: int
    reads_ms: dict[str, float] = field(default_factory=dict)
    single_per_s: float = 0.0
    bulk_per_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    bytes_per_transfer: float = 0.0
    bytes_by_part: dict[str, float] = field(default_factory=dict)  # per transfer: each table's rows, its indexes
    check_s: float = 0.0
    check: str = ""
    growth_s: float = 0.0


def parse_steps(text: str) -> tuple[tuple[int, int], ...]:
    """``"1000/20000,10000/100000"`` -> ``((1000, 20000), (10000, 100000))``; raises ``ValueError``
    unless both counts grow from step to step."""
    steps = tuple(tuple(int(part) for part in step.split("/")) for step in text.split(","))
    if any(len(step) != 2 or step[0] < 2 for step in steps) or any(
            b[0] < a[0] or b[1] <= a[1] for a, b in itertools.pairwise(steps)):
        raise ValueError("steps are accounts/transfers, each at least the one before")
    return steps  # type: ignore[return-value]


async def make_transfers(url: str, account_ids: list[int], system_id: int, count: int, rng: random.Random) -> None:
    """``count`` transfers (rounded up to whole batches) through ``POST /api/transfers/batch``;
    raises ``RuntimeError`` on any answer but 200 or any item not transferred."""
    batches = iter(range(-(-count // BATCH_SIZE)))

    def item() -> dict:
        amount = rng.randint(1, AMOUNT_MAX)
        if rng.random() < SYSTEM_SHARE:
            account = rng.choice(account_ids)
            if rng.random() < 0.5:
                return {"fromAccountId": system_id, "toAccountId": account, "amount": amount, "code": "topup"}
            return {"fromAccountId": account, "toAccountId": system_id, "amount": amount, "code": "payout"}
        sender, receiver = rng.sample(account_ids, 2)
        return {"fromAccountId": sender, "toAccountId": receiver, "amount": amount}

    async def sender(http: aiohttp.ClientSession) -> None:
        for _ in batches:
            body = {"atomic": False, "transfers": [item() for _ in range(BATCH_SIZE)]}
            async with http.post("/api/transfers/batch", json=body) as response:
                answer = await response.json()
                if response.status != 200 or any(result["status"] != 201 for result in answer["results"]):
                    raise RuntimeError(f"POST /api/transfers/batch: {response.status} {str(answer)[:500]}")

    async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(sender(http) for _ in range(BULK_SENDERS)))


def read_routes(account_ids: list[int], old_account_ids: list[int], system_id: int, transfer_ids: tuple[int, int],
                old_from: dt.datetime, old_to: dt.datetime, rng: random.Random) -> dict[str, list[str]]:
    """Each read route's READ_SAMPLES paths: ``{route name: [path, ...]}``."""
    window = f"from={old_from.isoformat().replace('+00:00', 'Z')}&to={old_to.isoformat().replace('+00:00', 'Z')}"
    at = old_to.isoformat().replace("+00:00", "Z")

    def each(make) -> list[str]:
        return [make() for _ in range(READ_SAMPLES)]

    return {
        "GET an account": each(lambda: f"/api/accounts/{rng.choice(account_ids)}"),
        "GET the system account": each(lambda: f"/api/accounts/{system_id}"),
        "GET the asset (supply)": each(lambda: "/api/assets/default"),
        "history, first page": each(lambda: f"/api/accounts/{rng.choice(account_ids)}/history?limit=50"),
        "history, old window": each(lambda: f"/api/accounts/{rng.choice(old_account_ids)}/history?limit=50&{window}"),
        "system account history, first page": each(lambda: f"/api/accounts/{system_id}/history?limit=50"),
        "balance at a moment": each(lambda: f"/api/accounts/{rng.choice(old_account_ids)}/balance?at={at}"),
        "system account balance at a moment": each(lambda: f"/api/accounts/{system_id}/balance?at={at}"),
        "transfers, first page": each(lambda: "/api/transfers?limit=50"),
        "transfers by code": each(lambda: "/api/transfers?limit=50&code=topup"),
        "transfers of an account": each(lambda: f"/api/transfers?limit=50&accountId={rng.choice(account_ids)}"),
        "transfers, old window": each(lambda: f"/api/transfers?limit=50&{window}"),
        "GET a transfer": each(lambda: f"/api/transfers/{rng.randint(*transfer_ids)}"),
    }


async def measure_reads(url: str, routes: dict[str, list[str]]) -> dict[str, float]:
    """The median latency (ms) of each route's paths, requested one after the other; raises
    ``RuntimeError`` on any answer but 200."""
    medians = {}
    async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=30)) as http:
        for name, paths in routes.items():
            latencies = []
            for path in paths:
                started = time.perf_counter()
                async with http.get(path) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"GET {path}: {response.status} {await response.text()}")
                latencies.append((time.perf_counter() - started) * 1000)
            medians[name] = statistics.median(latencies)
    return medians


def run(steps: tuple[tuple[int, int], ...], work: Path, progress: RunProgress, postgres: str | None = None,
        workers: int = 1) -> list[Step]:
    """Grow the ledger through each of ``steps`` and measure it after each (the module's docstring)."""
    from server.ledger.check import check_ledger

    rng = random.Random(23)
    results: list[Step] = []
    with postgres_databases(work / "postgres", postgres) as (create_database, _bin):
        url = create_database("scale")
        port = _free_port()
        env = service_env(url, port, workers)
        with _server([sys.executable, "-m", "server", "serve"], env, port, work / "scale.log") as (base_url, _):
            account_ids: list[int] = []
            old_account_ids: list[int] = []
            old_from = old_to = dt.datetime.now(dt.UTC)
            with psycopg.connect(url, autocommit=True) as db:
                system_id = db.execute("SELECT a.id FROM accounts a JOIN assets s ON s.id = a.asset_id "
                                       "WHERE s.is_default AND a.is_system").fetchone()[0]
            for number, (accounts, transfers) in enumerate(steps, 1):
                progress.start(f"step {number}: growing to {accounts:,} accounts and {transfers:,} transfers")
                started = time.monotonic()
                if accounts > len(account_ids):
                    asyncio.run(open_accounts(base_url, accounts - len(account_ids)))
                with psycopg.connect(url, autocommit=True) as db:
                    account_ids = [row[0] for row in db.execute(
                        "SELECT id FROM accounts WHERE NOT is_system AND user_id IS NULL ORDER BY id")]
                    made = db.execute("SELECT count(*) FROM transfers").fetchone()[0]
                if number == 1:
                    old_from = dt.datetime.now(dt.UTC)
                asyncio.run(make_transfers(base_url, account_ids, system_id, transfers - made, rng))
                if number == 1:
                    old_account_ids = list(account_ids)
                    old_to = old_from + (dt.datetime.now(dt.UTC) - old_from) * OLD_WINDOW_SHARE
                step = Step(accounts, transfers, growth_s=time.monotonic() - started)
                with psycopg.connect(url, autocommit=True) as db:
                    db.execute("VACUUM ANALYZE")  # as autovacuum would have by now: the tables' statistics
                    low, high, step.transfers = db.execute(
                        "SELECT min(id), max(id), count(*) FROM transfers").fetchone()
                routes = read_routes(account_ids, old_account_ids, system_id, (low, high), old_from, old_to, rng)
                step.reads_ms = asyncio.run(measure_reads(base_url, routes))
                first = account_ids[0]  # wrk picks among the first ACCOUNTS accounts, consecutive ids
                single = Workload("transfers", 0, 200, "transfers", min(len(account_ids), ACCOUNTS) - 1)
                bulk = Workload("bulk", 0, BULK_SENDERS, "bulk", single.accounts, per_request=BATCH_SIZE)
                for workload in (single, bulk):
                    _wall, rate, _p50, _p99, statuses = _wrk(base_url, workload, work, first, WINDOW_SECONDS,
                                                             AMOUNT_MAX)
                    if workload is single:
                        step.single_per_s = rate
                    else:
                        step.bulk_per_s = rate * BATCH_SIZE
                    for status, count in statuses.items():
                        key = f"{workload.kind} {status}"
                        step.statuses[key] = step.statuses.get(key, 0) + count
                with psycopg.connect(url, autocommit=True) as db:
                    parts = db.execute(
                        "SELECT t::text, pg_total_relation_size(t) - pg_indexes_size(t), pg_indexes_size(t) "
                        "FROM unnest(%s::text[]) AS n, to_regclass(n) AS t WHERE t IS NOT NULL",
                        (list(TABLES),)).fetchall()  # those this version has
                    written = db.execute("SELECT count(*) FROM transfers").fetchone()[0]  # the windows' too
                for table, rows, indexes in parts:
                    step.bytes_by_part[f"{table} rows"] = rows / written
                    step.bytes_by_part[f"{table} indexes"] = indexes / written
                step.bytes_per_transfer = sum(step.bytes_by_part.values())
                checked = time.monotonic()
                failed = [check.name for check in check_ledger(url) if not check.passed]
                step.check_s = time.monotonic() - checked
                step.check = "passed" if not failed else f"FAILED: {', '.join(failed)}"
                results.append(step)
                progress.done(f"  step {number}: {accounts:,} accounts, {step.transfers:,} transfers in "
                              f"{step.growth_s:.0f} s; single {step.single_per_s:,.0f}/s, bulk "
                              f"{step.bulk_per_s:,.0f}/s; {step.bytes_per_transfer:.0f} B/transfer; check "
                              f"{step.check_s:.1f} s ({step.check})")
    return results


def format_table(steps: list[Step]) -> str:
    """The steps side by side as a Markdown table (a row per measure, a column per step, the last
    step's ratio to the first), then the goal's verdict."""
    first, last = steps[0], steps[-1]
    head = [f"{s.accounts:,} / {s.transfers:,}" for s in steps]
    lines = ["| accounts / transfers | " + " | ".join(head) + " | last / first |",
             "|---|" + "---|" * (len(steps) + 1)]
    for name in first.reads_ms:
        values = " | ".join(f"{s.reads_ms[name]:.1f} ms" for s in steps)
        lines.append(f"| {name} | {values} | {last.reads_ms[name] / first.reads_ms[name]:.2f}x |")

    def row(name: str, values: list[float], unit: str, digits: int = 0) -> None:
        ratio = f"{values[-1] / values[0]:.2f}x" if values[0] else "-"
        lines.append(f"| {name} | " + " | ".join(f"{v:,.{digits}f}{unit}" for v in values) + f" | {ratio} |")

    row("single transfers (wrk, 200 connections)", [s.single_per_s for s in steps], "/s")
    row(f"bulk, batches of {BATCH_SIZE:,} ({BULK_SENDERS} senders)", [s.bulk_per_s for s in steps], "/s")
    row("bytes per transfer", [s.bytes_per_transfer for s in steps], " B")
    for part in first.bytes_by_part:
        row(f"- {part}", [s.bytes_by_part[part] for s in steps], " B")
    row("balance-api check", [s.check_s for s in steps], " s", 1)
    row("growing to it through the API", [s.growth_s for s in steps], " s")
    lines.append("")
    worst = max(first.reads_ms, key=lambda name: last.reads_ms[name] / first.reads_ms[name])
    ratio = last.reads_ms[worst] / first.reads_ms[worst]
    lines.append(f"- no read route more than {READ_GOAL:g}x slower from the smallest step to the largest: "
                 f"{'MET' if ratio <= READ_GOAL else 'NOT MET'} (slowest to grow: {worst}, {ratio:.2f}x)")
    statuses = {}
    for s in steps:
        for key, count in s.statuses.items():
            statuses[key] = statuses.get(key, 0) + count
    refused = {key: count for key, count in statuses.items() if not key.endswith("2xx")}
    lines.append(f"- every write answered 2xx: {'MET' if not refused else f'NOT MET {refused}'} "
                 f"({', '.join(f'{count:,} {key}' for key, count in sorted(statuses.items()))})")
    lines.append(f"- balance-api check after each step: {', '.join(s.check for s in steps)}")
    return "\n".join(lines)


def main(steps: tuple[tuple[int, int], ...], work: Path, postgres: str | None = None, workers: int = 1) -> str:
    """Run the probe over ``steps`` and return its table (:func:`format_table`)."""
    with RunProgress(len(steps)) as progress:
        return format_table(run(steps, work, progress, postgres, workers))
