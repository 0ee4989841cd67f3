"""How the plan-stability test counts sequential scans, and how it grows a ledger behind the service.

PostgreSQL's cumulative statistics (docs §28.2, "The Cumulative Statistics System") count each
table's sequential scans in ``pg_stat_user_tables.seq_scan``. A backend keeps its counts in memory
and flushes them when it goes idle (at most once a second) and when it exits; a reader sees them
through a snapshot of its own. So the test reads the service's counts only after the service's
backends have flushed: after a quiet period, or after they have exited.
"""

from __future__ import annotations

import time

import psycopg

from tests.seeded_users import chain_entries

TABLES = ("accounts", "transfers", "ledger_entries", "events")


def seq_scans(conn: psycopg.Connection) -> dict[str, int]:
    """``{table: seq_scan}`` for :data:`TABLES`, as flushed so far (this connection's own counts
    flushed first: ``pg_stat_force_next_flush()``, PostgreSQL 15+). ``conn`` is in autocommit mode."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute("SELECT relname, seq_scan FROM pg_stat_user_tables WHERE relname = ANY (%s)",
                        (list(TABLES),)).fetchall()
    return dict(rows)


def settled_seq_scans(conn: psycopg.Connection, quiet_seconds: float = 1.5, at_most: float = 30) -> dict[str, int]:
    """:func:`seq_scans` once two readings ``quiet_seconds`` apart agree (idle backends flush within
    a second, PGSTAT_MIN_INTERVAL), or after ``at_most`` seconds."""
    deadline = time.monotonic() + at_most
    last = seq_scans(conn)
    while time.monotonic() < deadline:
        time.sleep(quiet_seconds)
        now = seq_scans(conn)
        if now == last:
            return now
        last = now
    return last


def wait_for_backends_to_exit(conn: psycopg.Connection, at_most: float = 30) -> None:
    """Wait until no other backend is connected to this database (each flushes its counts as it
    exits), for at most ``at_most`` seconds."""
    deadline = time.monotonic() + at_most
    while time.monotonic() < deadline:
        others = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                              "AND pid <> pg_backend_pid()").fetchone()[0]
        if not others:
            return
        time.sleep(0.1)
    raise AssertionError(f"backends still connected after {at_most} s")


def keep_plans(conn: psycopg.Connection) -> None:
    """Turn autovacuum off for :data:`TABLES`: its ANALYZE would invalidate the cached plans the test
    is about (a relcache invalidation makes every plan of the table be made again)."""
    for table in TABLES:
        conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")


def grow_ledger(conn: psycopg.Connection, accounts: int, transfers: int) -> None:
    """Add ``accounts`` users with a default-asset account each and ``transfers`` credits of 1 unit
    from the system account to them (with their entries and events, the balances kept equal to the entries' sums),
    in SQL, without ANALYZE. The ledger stays balanced: ``balance-api check`` passes.

    No temporary table and no other catalog change: creating a schema for temporary tables (or any
    change of pg_namespace) makes every backend drop all its cached plans (plancache.c's syscache
    callback), which would hide exactly the plans this is meant to expose."""
    with conn.transaction():
        first_user = conn.execute("INSERT INTO users SELECT FROM generate_series(1, %s) RETURNING id",
                                  (accounts,)).fetchall()[0][0]
        conn.execute("""
            INSERT INTO accounts (asset_id, user_id)
            SELECT s.id, u.id FROM users u, assets s WHERE s.is_default AND u.id >= %s""", (first_user,))
        conn.execute("""
            WITH pick AS (
                SELECT a.id AS account_id, row_number() OVER (PARTITION BY a.id ORDER BY n) AS running
                  FROM generate_series(1, %(transfers)s) n
                  JOIN accounts a ON a.user_id = %(first)s + n %% %(accounts)s),
            t AS (
                INSERT INTO transfers (asset_id, from_account_id, to_account_id, amount, code, to_balance)
                SELECT s.asset_id, s.id, p.account_id, 1, 'credit', p.running
                  FROM pick p, accounts s JOIN assets d ON d.id = s.asset_id AND d.is_default
                 WHERE s.is_system
                RETURNING id, asset_id, to_account_id, to_balance),
            event AS (
                INSERT INTO events (position, type, asset_id, transfer_ids)
                SELECT feed_position_after(NULL), 'transfer.created', asset_id, array_agg(id ORDER BY id)
                  FROM t GROUP BY asset_id)
            INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, hash)
            SELECT to_account_id, id, 1, to_balance, 'credit', '' FROM t""",
                     {"transfers": transfers, "first": first_user, "accounts": accounts})
        conn.execute("""
            UPDATE accounts a SET balance = e.total
              FROM (SELECT x.account_id, sum(x.amount) AS total FROM ledger_entries x
                      JOIN accounts b ON b.id = x.account_id AND b.user_id >= %s GROUP BY x.account_id) e
             WHERE a.id = e.account_id""", (first_user,))
        conn.execute("SELECT add_to_system_balances(ARRAY[s.id], ARRAY[-%s::bigint]) FROM assets s WHERE s.is_default",
                     (transfers,))
        chain_entries(conn)
