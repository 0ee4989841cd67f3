"""From an empty database on: no request path keeps a plan made for empty tables (issue 27).

A new user starts the service on an empty database, so every connection of the service first runs
each statement when `transfers`, `ledger_entries` and `accounts` hold a row or two, and PostgreSQL
caches plans per connection (PL/pgSQL's per statement, a prepared statement's after five runs).
A plan made then scans the whole table, which is right for a page and wrong for ever after.

The test does what such a user does, on the embedded PostgreSQL and on the machine's own (e.g.
Debian's 15): it starts the service on a fresh database with two pooled connections (so that
both run every kind of request and cache its plans), runs each kind of request a few times on the
empty tables, grows the ledger in SQL behind the service's back (10,000 accounts, 50,000
transfers, no ANALYZE, autovacuum off for those tables so that nothing invalidates the cached
plans), runs each kind again on the same connections, and then reads PostgreSQL's own counters:
no sequential scan of those tables, and no statement that read one of them whole. No stopwatch.
"""

from __future__ import annotations

import asyncio

import aiohttp
import psycopg

from tests import plan_stability
from tests.request_kinds import KINDS, World, open_world
from tests.service_process import balance_api, running_service, service_env
from tests.system_postgres import create_database_on

GROWN_ACCOUNTS = 10_000
GROWN_TRANSFERS = 50_000
# Every kind of request runs this often on the empty tables: more than the five runs after which
# a prepared statement may switch to a generic plan (PREPARE, "Notes").
RUNS_ON_EMPTY_TABLES = 8
RUNS_ON_THE_GROWN_LEDGER = 3
# What all the requests on the grown ledger may read of each table, in rows: a tenth of one scan
# of the grown `transfers`. Each request reads a few rows by key; a plan that reads a table whole
# (a seq scan, or a full scan of an index) reads 10,000-50,000 at once.
ROWS_READ_AT_MOST = GROWN_TRANSFERS // 10


def _rows_read(conn: psycopg.Connection) -> dict[str, int]:
    """``{table: rows read by seq scans + index entries read}`` for the plan-stability tables."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute("""
        SELECT t.relname, coalesce(t.seq_tup_read, 0) + coalesce(sum(i.idx_tup_read), 0)
          FROM pg_stat_user_tables t LEFT JOIN pg_stat_user_indexes i ON i.relid = t.relid
         WHERE t.relname = ANY (%s) GROUP BY t.relname, t.seq_tup_read""", (list(plan_stability.TABLES),)).fetchall()
    return dict(rows)


async def _run_every_kind(base_url: str, world: World, times: int) -> None:
    async with aiohttp.ClientSession(base_url=base_url) as http:
        for kind in KINDS:
            for _ in range(times):
                await kind(http, world)


async def _world(base_url: str) -> World:
    async with aiohttp.ClientSession(base_url=base_url) as http:
        return await open_world(http)


def test_no_request_path_scans_a_table_after_the_ledger_grew_behind_plans_made_on_empty_tables(
        each_postgres_admin_url, tmp_path):
    database_url = create_database_on(each_postgres_admin_url)
    with psycopg.connect(database_url, autocommit=True) as db:
        with running_service(tmp_path / "service.log", database_url=database_url, db_pool_min_size="2",
                             db_pool_max_size="2") as (base_url, _process):
            plan_stability.keep_plans(db)
            world = asyncio.run(_world(base_url))
            asyncio.run(_run_every_kind(base_url, world, RUNS_ON_EMPTY_TABLES))
            plan_stability.grow_ledger(db, GROWN_ACCOUNTS, GROWN_TRANSFERS)
            scans_before = plan_stability.settled_seq_scans(db, quiet_seconds=11)  # > PGSTAT_IDLE_INTERVAL
            read_before = _rows_read(db)
            asyncio.run(_run_every_kind(base_url, world, RUNS_ON_THE_GROWN_LEDGER))
        plan_stability.wait_for_backends_to_exit(db)  # each flushes its counts as it exits
        scans_after = plan_stability.seq_scans(db)
        read_after = _rows_read(db)

    assert {table: scans_after[table] - scans_before[table] for table in plan_stability.TABLES} == \
        {table: 0 for table in plan_stability.TABLES}
    read = {table: read_after[table] - read_before[table] for table in plan_stability.TABLES}
    assert all(rows <= ROWS_READ_AT_MOST for rows in read.values()), read
    assert balance_api("check", env=service_env(database_url=database_url)).returncode == 0
