"""``balance-api bench --from-empty``: throughput from the first transfer, as a new user starts.

A user starts the service on an empty database and fills it through the API. So does this
workload, in one run on one embedded PostgreSQL:

1. the service starts on a new, empty database (it applies the migrations itself);
2. ACCOUNTS operator accounts are opened with ``POST /api/accounts`` (each with an overdraft
   limit, so that random transfers are never refused for funds);
3. WINDOWS consecutive windows of WINDOW_SECONDS of ``POST /api/transfers`` between two random
   accounts, of a random amount from 1 to AMOUNT_MAX minor units (wrk, 200 connections,
   ``loadtest/transfers.lua``); each window's rate is printed; then one window of bulk batches,
   ``POST /api/transfers/batch`` of BATCH_SIZE such transfers from BULK_SENDERS concurrent senders,
   and one from twice as many; before the first window, one bulk window on the fresh database
   (issues 23 and 27: every batch answered 200 after other traffic, at BULK_GOAL x the fresh rate);
4. the same service is restarted on the same database (its connections, and the plans they
   cached, are new) and RESTARTED_WINDOWS more windows and a bulk window are run: the rates the
   first ones are compared with;
5. with the service stopped, the same random transfers as bare SQL: the project's own
   ``transfer_funds()`` called by pgbench, one transfer per transaction, 20 clients, for one window
   (:func:`loadtest.bench.pgbench_transfers`); the HTTP path's ratio to it is the service's cost;
6. with ``--pgledger DIR`` (a checkout of github.com/pgr0ss/pgledger), pgledger's own
   ``pgledger_create_transfer()`` by pgbench on a database of its own, from empty, for one window
   (:mod:`loadtest.pgledger`): issue 27's goal is the service from empty at PGLEDGER_GOAL x it;
7. ``balance-api check`` on the database.

It also counts the sequential scans of ``transfers``, ``ledger_entries`` and ``accounts`` that the
service's connections made during steps 2-3 (PostgreSQL's ``pg_stat_user_tables``, read after
those connections have exited and so flushed their counts; autovacuum's ANALYZE counts none).
Issue 27's goals: every window at least 0.8x the restarted service; no sequential scan.
Everything is bounded: wrk runs for WINDOW_SECONDS, pgbench for as long, the opening is a fixed
count of requests with a timeout each.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg

from loadtest.bench import (
    ACCOUNTS, Workload, _cpu_seconds, _free_port, _server, _wrk, pgbench_transfers, postgres_databases,
    service_env,
)
from loadtest.progress import RunProgress

WINDOWS = 8
WINDOW_SECONDS = 8
RESTARTED_WINDOWS = 2
AMOUNT_MAX = 100
OPENING_CONCURRENCY = 64
OVERDRAFT_LIMIT = 10**15  # minor units: far more than any run can move out of one account
TABLES = ("transfers", "ledger_entries", "accounts")
GOAL_RATIO = 0.8  # every window from empty, against the restarted service (issue 27)
PGLEDGER_GOAL = 2.0  # the service from empty, against pgledger's SQL by pgbench (issue 27)
TRANSFERS = Workload("transfers from empty", 0, 200, "transfers", ACCOUNTS - 1)  # wrk picks among 9,999
BATCH_SIZE, BULK_SENDERS = 1000, 4
BULK = Workload("bulk from empty", 0, BULK_SENDERS, "bulk", ACCOUNTS - 1, per_request=BATCH_SIZE)
BULK_8 = Workload("bulk from empty, 8 senders", 0, 2 * BULK_SENDERS, "bulk", ACCOUNTS - 1, per_request=BATCH_SIZE)
BULK_GOAL = 0.8  # bulk after the windows of transfers, against bulk on the fresh database (issue 23)


@dataclass
class Window:
    """One window of random transfers: ``phase`` is ``from empty`` or ``restarted``; ``bulk`` when
    its requests are batches of BATCH_SIZE; rates in transfers per second, latencies in ms (per
    request), CPU in microseconds per transfer, statuses by class (``2xx``...) per request."""

    phase: str
    number: int
    transfers_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    service_cpu_us: float = 0.0
    bulk: bool = False
    senders: int = 0  # bulk: concurrent senders of batches


@dataclass
class FromEmptyRun:
    """What :func:`run` measured: the windows, the opening of the accounts (accounts per second),
    pgbench's rate of the same transfers as bare SQL, the sequential scans by table, the check."""

    windows: list[Window] = field(default_factory=list)
    accounts_opened_per_s: float = 0.0
    pgbench_per_s: float = 0.0
    pgledger_per_s: float = 0.0  # 0: not measured (no --pgledger)
    seq_scans: dict[str, int] = field(default_factory=dict)
    check: str = ""

    def rate(self, phase: str) -> float:
        """The mean rate of the windows of ``phase``."""
        rates = [w.transfers_per_s for w in self.windows if w.phase == phase and not w.bulk]
        return sum(rates) / len(rates) if rates else 0.0


async def open_accounts(url: str, count: int) -> float:
    """Open ``count`` operator accounts of the default asset through ``POST /api/accounts``,
    OPENING_CONCURRENCY at a time; return accounts opened per second. Raises ``RuntimeError`` on
    any answer but 201."""
    body = {"asset": "default", "overdraftLimit": OVERDRAFT_LIMIT}
    pending = iter(range(count))
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def opener(http: aiohttp.ClientSession) -> None:
        for _ in pending:
            async with http.post("/api/accounts", json=body) as response:
                if response.status != 201:
                    raise RuntimeError(f"POST /api/accounts: {response.status} {await response.text()}")

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=url, timeout=timeout) as http:
        await asyncio.gather(*(opener(http) for _ in range(OPENING_CONCURRENCY)))
    return count / (loop.time() - started)


def _seq_scans(conn: psycopg.Connection) -> dict[str, int]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute("SELECT relname, seq_scan FROM pg_stat_user_tables WHERE relname = ANY (%s)",
                        (list(TABLES),)).fetchall()
    return dict(rows)


def _wait_for_service_connections_to_close(conn: psycopg.Connection, seconds: float = 30) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()[0]:
        time.sleep(0.1)


def run(workers: int, work: Path, progress: RunProgress, pgledger: Path | None = None,
        postgres: str | None = None) -> FromEmptyRun:
    """Measure steps 1-7 of the module's docstring, reporting each step to ``progress``; step 6
    only with ``pgledger``, a checkout of pgledger; on the server at admin URL ``postgres``
    instead of an embedded one when given."""
    from server.ledger.check import check_ledger

    result = FromEmptyRun()
    with postgres_databases(work / "postgres", postgres) as (create_database, bin_path):
        url = create_database("from_empty")
        port = _free_port()
        env = service_env(url, port, workers)
        command = [sys.executable, "-m", "server", "serve"]
        for phase, windows in (("from empty", WINDOWS), ("restarted", RESTARTED_WINDOWS)):
            with _server(command, env, port, work / f"{phase}.log") as (base_url, process):
                if phase == "from empty":
                    with psycopg.connect(url, autocommit=True) as db:
                        scans_before = _seq_scans(db)
                    progress.start(f"opening {ACCOUNTS:,} accounts through the API")
                    result.accounts_opened_per_s = asyncio.run(open_accounts(base_url, ACCOUNTS))
                    progress.done(f"  opened {ACCOUNTS:,} accounts: {result.accounts_opened_per_s:,.0f}/s")
                    with psycopg.connect(url) as db:
                        first_account = db.execute(
                            "SELECT min(id) FROM accounts WHERE NOT is_system AND user_id IS NULL").fetchone()[0]
                # from empty: bulk on the fresh database (its accounts only), the windows of single
                # transfers, then bulk from 4 and 8 senders; restarted: windows, then bulk
                plan = [*((n, TRANSFERS) for n in range(1, windows + 1)), (windows + 1, BULK)]
                if phase == "from empty":
                    plan = [(0, BULK), *plan, (windows + 2, BULK_8)]
                for number, workload in plan:
                    progress.start(f"{phase}: window {number}")
                    cpu_before = _cpu_seconds([process])
                    _wall, rate, p50, p99, statuses = _wrk(base_url, workload, work, first_account,
                                                           WINDOW_SECONDS, AMOUNT_MAX)
                    rate *= workload.per_request
                    cpu = _cpu_seconds([process]) - cpu_before
                    window = Window(phase, number, rate, p50, p99, statuses,
                                    cpu / (rate * WINDOW_SECONDS) * 1e6 if rate else 0.0, workload.kind == "bulk",
                                    workload.connections if workload.kind == "bulk" else 0)
                    result.windows.append(window)
                    kind = (f"bulk of {BATCH_SIZE:,} ({window.senders} senders{', fresh' if number == 0 else ''})"
                            if window.bulk else f"window {number}")
                    progress.done(f"  {phase:<10} {kind}: {rate:9,.0f} transfers/s  p50 {p50:6.1f} ms  "
                                  f"p99 {p99:7.1f} ms  service CPU {window.service_cpu_us:5.0f} us/transfer  "
                                  f"{statuses}")
            with psycopg.connect(url, autocommit=True) as db:
                _wait_for_service_connections_to_close(db)  # each flushed its counts as it closed
                if phase == "from empty":
                    scans_after = _seq_scans(db)
                    result.seq_scans = {table: scans_after[table] - scans_before[table] for table in TABLES}
        progress.start("pgbench: the same transfers as bare SQL")
        result.pgbench_per_s = pgbench_transfers(url, bin_path, first_account, TRANSFERS.accounts, WINDOW_SECONDS,
                                                 work, AMOUNT_MAX)
        progress.done(f"  pgbench, transfer_funds(), {WINDOW_SECONDS} s: {result.pgbench_per_s:,.0f} transfers/s")
        if pgledger is not None:
            from loadtest.pgledger import pgbench_pgledger

            progress.start("pgbench: pgledger's own functions")
            result.pgledger_per_s = pgbench_pgledger(create_database("pgledger"), bin_path, pgledger,
                                                     ACCOUNTS, WINDOW_SECONDS, work, AMOUNT_MAX)
            progress.done(f"  pgbench, pgledger_create_transfer(), {WINDOW_SECONDS} s: "
                          f"{result.pgledger_per_s:,.0f} transfers/s")
        failed = [check.name for check in check_ledger(url) if not check.passed]
        result.check = "passed" if not failed else f"FAILED: {', '.join(failed)}"
        progress.print(f"  balance-api check: {result.check}")
    return result


STEPS = 1 + WINDOWS + RESTARTED_WINDOWS + 4 + 1  # and 1 with pgledger


def format_table(result: FromEmptyRun) -> str:
    """The windows as a Markdown table (rate, its ratio to the restarted service, latencies, the
    service's CPU per transfer), then the baseline, the sequential scans and each goal's verdict."""
    restarted = result.rate("restarted")
    lines = [f"| window ({WINDOW_SECONDS} s) | transfers/s | vs restarted (bulk: vs fresh bulk) | p50 | p99 "
             f"| service CPU/transfer | statuses |",
             "|---|---|---|---|---|---|---|"]
    fresh_bulk = [w.transfers_per_s for w in result.windows if w.bulk and w.number == 0]
    for w in result.windows:
        statuses = ", ".join(f"{count:,} {status}" for status, count in sorted(w.statuses.items()))
        against = fresh_bulk[0] if w.bulk and fresh_bulk else restarted
        ratio = f"{w.transfers_per_s / against:.2f}x" if against else "-"
        name = (f"{w.phase}, bulk of {BATCH_SIZE:,} ({w.senders} senders{', fresh database' if w.number == 0 else ''})"
                if w.bulk else f"{w.phase} {w.number}")
        lines.append(f"| {name} | {w.transfers_per_s:,.0f} | {ratio} | {w.p50_ms:.1f} ms "
                     f"| {w.p99_ms:.1f} ms | {w.service_cpu_us:,.0f} us | {statuses} |")
    lines.append("")
    lines.append(f"- opening {ACCOUNTS:,} accounts through the API: {result.accounts_opened_per_s:,.0f} accounts/s")
    from_empty = [w.transfers_per_s for w in result.windows if w.phase == "from empty" and not w.bulk]
    if result.pgbench_per_s:
        lines.append(f"- the same transfers as bare SQL (transfer_funds() by pgbench, 20 clients, one per "
                     f"transaction): {result.pgbench_per_s:,.0f}/s; the service from empty: "
                     f"{result.rate('from empty') / result.pgbench_per_s:.2f}x of it, restarted "
                     f"{restarted / result.pgbench_per_s:.2f}x")
    if result.pgledger_per_s:
        ratio = result.rate("from empty") / result.pgledger_per_s
        lines.append(f"- pgledger's own SQL (pgledger_create_transfer() by pgbench, the same clients, from empty): "
                     f"{result.pgledger_per_s:,.0f}/s; the service from empty >= {PGLEDGER_GOAL:g}x it: "
                     f"{'MET' if ratio >= PGLEDGER_GOAL else 'NOT MET'} ({ratio:.2f}x)")
    scans = ", ".join(f"{table} {count:,}" for table, count in result.seq_scans.items())
    lines.append(f"- sequential scans by the service's connections while opening the accounts and during the "
                 f"windows from empty: {scans}")
    if from_empty and restarted:
        worst = min(from_empty) / restarted
        lines.append(f"- every window from empty >= {GOAL_RATIO}x the restarted service: "
                     f"{'MET' if worst >= GOAL_RATIO else 'NOT MET'} (lowest {worst:.2f}x)")
    if result.seq_scans:
        lines.append(f"- no sequential scan of transfers from the request paths: "
                     f"{'MET' if not result.seq_scans.get('transfers') else 'NOT MET'}")
    bulk = [w for w in result.windows if w.bulk]
    if bulk:
        refused = sum(count for w in bulk for status, count in w.statuses.items() if status != "2xx")
        lines.append(f"- every bulk batch answered 200, fresh, after the windows and after the restart: "
                     f"{'MET' if not refused else f'NOT MET ({refused:,} not 2xx)'}")
        after = [w.transfers_per_s for w in bulk if w.number != 0]
        if fresh_bulk and after:
            worst = min(after) / fresh_bulk[0]
            lines.append(f"- bulk after the windows of transfers >= {BULK_GOAL:g}x bulk on the fresh database: "
                         f"{'MET' if worst >= BULK_GOAL else 'NOT MET'} (lowest {worst:.2f}x)")
    lines.append(f"- balance-api check after the run: {result.check}")
    return "\n".join(lines)


def main(workers: int, work: Path, pgledger: Path | None = None, postgres: str | None = None) -> str:
    """Run the workload (with pgledger's comparison when ``pgledger``, a checkout of it, is given;
    on the server at admin URL ``postgres`` when given) and return its table (:func:`format_table`)."""
    with RunProgress(STEPS + (pgledger is not None)) as progress:
        result = run(workers, work, progress, pgledger, postgres)
    return format_table(result)
