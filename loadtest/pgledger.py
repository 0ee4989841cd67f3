"""pgledger's own SQL functions driven by pgbench: the comparison of issue 27's second goal.

pgledger (https://github.com/pgr0ss/pgledger, MIT) is a ledger in PostgreSQL functions. Its code is
not part of this project: ``balance-api bench --from-empty --pgledger DIR`` takes a checkout of it
and loads, from that checkout, ``vendor/scoville-pgsql-ulid/uuid-to-ulid.sql`` (its ids are ULIDs)
and ``pgledger.sql`` into a database of its own on the run's PostgreSQL. Then, as this project is
measured from empty: ACCOUNTS accounts of one currency (``pgledger_create_account()``, in SQL), no
transfer yet, and pgbench calls ``pgledger_create_transfer(from, to, amount)`` between two random
accounts with a random amount from 1 to AMOUNT_MAX, one transfer per transaction, on the same
clients as :func:`loadtest.bench.pgbench_transfers`. pgledger's account ids are text: a numbered
table of them lets pgbench pick two by number (two primary-key look-ups in the same statement).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from loadtest.bench import run_pgbench

FILES = ("vendor/scoville-pgsql-ulid/uuid-to-ulid.sql", "pgledger.sql")


def pgbench_pgledger(url: str, bin_path: Path, checkout: Path, accounts: int, seconds: int, work: Path,
                     amount_max: int) -> float:
    """Transfers per second of ``pgledger_create_transfer()`` by pgbench on the new, empty database
    ``url`` (see the module's docstring), loading FILES from ``checkout`` with ``bin_path``'s psql.
    Raises ``FileNotFoundError`` when ``checkout`` lacks one of FILES, ``RuntimeError`` when psql or
    pgbench fails."""
    for name in FILES:
        if not (checkout / name).is_file():
            raise FileNotFoundError(f"{checkout / name}: --pgledger wants a checkout of github.com/pgr0ss/pgledger")
        loaded = subprocess.run([str(bin_path / "psql"), "-q", "-X", "-v", "ON_ERROR_STOP=1", "-f",
                                 str(checkout / name), url], capture_output=True, text=True, timeout=120)
        if loaded.returncode:
            raise RuntimeError(f"psql -f {name}: {loaded.stderr[-2000:]}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pgledger_create_account('bench ' || n, 'XTS') FROM generate_series(1, %s) n", (accounts,))
        conn.execute("CREATE TABLE bench_accounts (n int PRIMARY KEY, id text NOT NULL)")
        conn.execute("INSERT INTO bench_accounts SELECT row_number() OVER (ORDER BY id), id FROM pgledger_accounts")
        conn.execute("ANALYZE bench_accounts")
    return run_pgbench(url, bin_path, seconds, work, (
        f"\\set a random(1, {accounts})\n"
        f"\\set b 1 + (:a - 1 + random(1, {accounts - 1})) % {accounts}\n"
        f"\\set amount random(1, {amount_max})\n"
        "SELECT count(*) FROM pgledger_create_transfer((SELECT id FROM bench_accounts WHERE n = :a),"
        " (SELECT id FROM bench_accounts WHERE n = :b), :amount);\n"))
