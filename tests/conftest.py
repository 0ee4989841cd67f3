"""Fixtures: a real PostgreSQL, a fresh database, and the real service process over HTTP.

PostgreSQL is the one at ``TEST_DATABASE_URL`` (an admin URL allowed to CREATE DATABASE) or, when
that is unset, an embedded one started for the session in a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import aiohttp
import asyncpg
import psycopg
import pytest
from psycopg import sql

from server.running.embedded_postgres import embedded_postgres
from tests.openapi_contract import OpenApiContract, contract_middleware
from tests.seeded_users import seed_user
from tests.service_process import running_service
from tests.system_postgres import create_database_on, system_postgres


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory) -> Iterator[str]:
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    with embedded_postgres(tmp_path_factory.mktemp("embedded") / "postgres") as url:
        yield url


@pytest.fixture(scope="session")
def create_database(postgres_admin_url) -> Iterator[Callable[[], str]]:
    """Factory: create an empty database with a unique name and return its URL (dropped at the end)."""
    names: list[str] = []

    def create() -> str:
        name = f"balance_test_{uuid.uuid4().hex[:12]}"
        names.append(name)
        return create_database_on(postgres_admin_url, name)

    yield create
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module", params=["embedded", "system"])
def each_postgres_admin_url(request, postgres_admin_url) -> Iterator[str]:
    """For tests that must hold on every major version users run (15-18): the admin URL of the
    embedded PostgreSQL (the suite's), then of a throwaway cluster of the machine's own (e.g.
    Debian's 15; the test skips, saying what to install, where there is none)."""
    if request.param == "embedded":
        yield postgres_admin_url
        return
    try:
        with system_postgres() as (url, _version):
            yield url
    except LookupError as missing:
        pytest.skip(f"the machine's own PostgreSQL: {missing}")


@pytest.fixture(scope="session")
def database_url(create_database) -> str:
    """The database the session's service runs on (migrated by the service at start-up)."""
    return create_database()


@pytest.fixture(scope="session")
def service_log_path(tmp_path_factory) -> Path:
    """The log file of the session's service (its stdout and stderr)."""
    return tmp_path_factory.mktemp("service") / "service.log"


@pytest.fixture(scope="session")
def service_url(database_url, service_log_path) -> Iterator[str]:
    """Base URL of the real service process, started once for the session."""
    with running_service(service_log_path, database_url=database_url) as (base_url, _process):
        yield base_url


@pytest.fixture(scope="session")
def db(database_url, service_url) -> Iterator[psycopg.Connection]:
    """A direct connection to the service's database, to arrange state and to inspect the ledger."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


class LedgerState(NamedTuple):
    """A user's default-asset balance, and the count and sum of that account's ledger entries."""

    balance: int
    entries: int
    entries_sum: int


# the default-asset account of user %s
USER_ACCOUNT = "(SELECT a.id FROM accounts a JOIN assets s ON s.id = a.asset_id AND s.is_default WHERE a.user_id = %s)"


def ledger_state(db: psycopg.Connection, user_id: int) -> LedgerState:
    row = db.execute(
        "SELECT a.balance, count(e.id), coalesce(sum(e.amount), 0) FROM accounts a "
        f"LEFT JOIN ledger_entries e ON e.account_id = a.id WHERE a.id = {USER_ACCOUNT} GROUP BY a.id",
        (user_id,),
    ).fetchone()
    balance, entries, entries_sum = row
    return LedgerState(balance, entries, int(entries_sum))  # sum(bigint) is numeric: exact


def database_fingerprint(db: psycopg.Connection) -> tuple:
    """Everything a refused request must not change: all balances, accounts, transfers and entries."""
    return db.execute(
        "SELECT (SELECT coalesce(sum(balance), 0) FROM accounts), (SELECT count(*) FROM accounts), "
        "(SELECT count(*) FROM ledger_entries), (SELECT coalesce(max(id), 0) FROM ledger_entries), "
        "(SELECT count(*) FROM transfers), (SELECT max(updated_at) FROM accounts), "
        "(SELECT string_agg(status || metadata::text, ',' ORDER BY id) FROM accounts)"
    ).fetchone()


@pytest.fixture
def new_user(db) -> Callable[[int], int]:
    """Factory: insert a user with ``balance`` (see :func:`seed_user`); return the id."""
    return lambda balance=0: seed_user(db, balance)


@pytest.fixture(scope="module")
def loop_and_pool(database_url, service_url):  # service_url: the service has migrated it
    """An event loop and an asyncpg pool on the session's (migrated) database, for hypothesis
    examples (which run synchronously, each driving the loop)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # asyncpg binds to the current loop
    pool = loop.run_until_complete(asyncpg.create_pool(database_url, min_size=2, max_size=10))
    yield loop, pool
    loop.run_until_complete(pool.close())
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture(scope="session")
def openapi_contract(service_url) -> OpenApiContract:
    """The OpenAPI document the service serves, for validating responses."""
    with urllib.request.urlopen(f"{service_url}/api/openapi.json", timeout=10) as response:
        return OpenApiContract(json.load(response))


@pytest.fixture
async def http(service_url, openapi_contract) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the service; every response it gets is checked against the OpenAPI document."""
    async with aiohttp.ClientSession(
        base_url=service_url, middlewares=(contract_middleware(openapi_contract),),
        connector=aiohttp.TCPConnector(limit=200),
    ) as session:
        yield session
