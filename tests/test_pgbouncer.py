"""The service behind a real PgBouncer (transaction pooling), with the settings docs/scaling.md prescribes:
the 10,000-request proof, idempotency keys, transfers, holds and batches all hold through it, and so
does the proof spread over three service instances sharing one PgBouncer and one PostgreSQL (as
three machines would). Skipped, saying how to install it, where PgBouncer is not installed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import subprocess
import sys
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.ledger_api import credit, hold, new_account, new_asset, post, send, transfer
from tests.metrics_reading import scrape, value
from tests.pgbouncer import INSTALL_HINT, PgBouncer, pgbouncer_binary, running_pgbouncer
from tests.service_process import PROJECT_ROOT, assert_ledger_consistent, balance_api, running_service, service_env

pytestmark = pytest.mark.skipif(pgbouncer_binary() is None, reason=INSTALL_HINT)


@pytest.fixture(scope="module")
def bouncer(postgres_admin_url, tmp_path_factory):
    with running_pgbouncer(postgres_admin_url, tmp_path_factory.mktemp("pgbouncer")) as running:
        yield running


def migrated_database(create_database) -> str:
    """A new database migrated directly (not through PgBouncer: the migration lock is a session-level
    advisory lock); its direct URL."""
    url = create_database()
    migrated = balance_api("migrate", env=service_env(database_url=url))
    assert migrated.returncode == 0, migrated.stderr
    return url


def through(bouncer: PgBouncer, direct_url: str) -> dict[str, str]:
    """docs/scaling.md's settings for a service reaching ``direct_url``'s database through ``bouncer``."""
    return {"database_url": bouncer.url(urlsplit(direct_url).path.lstrip("/")), "migrate_on_start": "false",
            "db_statement_cache_size": "0", "db_statement_timeout": "0"}


@pytest.fixture(scope="module")
def direct_url(create_database) -> str:
    return migrated_database(create_database)


@pytest.fixture(scope="module")
def bounced_url(bouncer, direct_url, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("bounced") / "service.log"
    with running_service(log_path, **through(bouncer, direct_url)) as (base_url, _process):
        yield base_url


@pytest.fixture
async def client(bounced_url):
    async with aiohttp.ClientSession(base_url=bounced_url, connector=aiohttp.TCPConnector(limit=200)) as session:
        yield session


def burst(tmp_path, *urls: str) -> dict:
    report_path = tmp_path / "burst.json"
    result = balance_api("burst", *(part for url in urls for part in ("--url", url)), "--json", str(report_path),
                         timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(report_path.read_text())


def test_the_10000_request_proof_is_exact_through_pgbouncer(bouncer, bounced_url, direct_url, tmp_path):
    database = urlsplit(direct_url).path.lstrip("/")
    before = bouncer.transactions(database)
    report = burst(tmp_path, bounced_url)
    assert bouncer.transactions(database) > before  # the changes went through PgBouncer
    assert report["counts"] == {"200": 5000, "409 insufficient_funds": 5000}
    assert report["returned_balances"] == list(range(0, 10000, 2))
    assert all(check["passed"] for check in report["checks"])
    assert_ledger_consistent(direct_url)


async def test_an_idempotency_key_applies_once_through_pgbouncer_even_sent_50_times_at_once(client, direct_url):
    code = await new_asset(client)
    account = (await new_account(client, code))["accountId"]
    path, body = f"/api/accounts/{account}/credit", {"amount": 5}
    results = await asyncio.gather(*(send(client, "POST", path, body, headers={"Idempotency-Key": f"pgb-{account}"})
                                     for _ in range(50)))
    assert collections.Counter(status for status, _ in results) == {200: 50}
    assert len({answer["transferId"] for _, answer in results}) == 1
    assert (await send(client, "GET", f"/api/accounts/{account}"))[1]["balance"] == 5
    assert_ledger_consistent(direct_url)


async def test_transfers_holds_and_batches_work_through_pgbouncer(client, direct_url):
    code = await new_asset(client)
    buyer, seller = [(await new_account(client, code))["accountId"] for _ in range(2)]
    assert (await credit(client, buyer, 100))[0] == 200
    assert (await transfer(client, buyer, seller, 30))[0] == 201
    _, held = await hold(client, buyer, seller, 50)
    assert (await post(client, held["transferId"], 20))[1]["status"] == "posted"
    move = {"fromAccountId": buyer, "toAccountId": seller}
    status, result = await send(client, "POST", "/api/transfers/batch", {"atomic": True, "transfers": [
        {**move, "amount": 10}, {**move, "amount": 1000}]})
    assert (status, result["committed"]) == (200, False)
    status, result = await send(client, "POST", "/api/transfers/batch", {"atomic": True, "transfers": [
        {**move, "amount": 10}, {"fromAccountId": seller, "toAccountId": buyer, "amount": 5}]})
    assert (status, result["committed"]) == (200, True)
    balances = [(await send(client, "GET", f"/api/accounts/{x}"))[1]["balance"] for x in (buyer, seller)]
    assert balances == [100 - 30 - 20 - 10 + 5, 30 + 20 + 10 - 5]
    assert_ledger_consistent(direct_url)


async def test_200_concurrent_opposite_transfers_through_pgbouncer_all_complete(client, direct_url):
    code = await new_asset(client)
    a, b = [(await new_account(client, code))["accountId"] for _ in range(2)]
    await credit(client, a, 1000)
    await credit(client, b, 1000)
    results = await asyncio.gather(*(transfer(client, a, b, 1) if i % 2 else transfer(client, b, a, 1)
                                     for i in range(200)))
    assert collections.Counter(status for status, _ in results) == {201: 200}
    assert [(await send(client, "GET", f"/api/accounts/{x}"))[1]["balance"] for x in (a, b)] == [1000, 1000]
    assert_ledger_consistent(direct_url)


@contextlib.contextmanager
def three_instances(bouncer: PgBouncer, direct_url: str, tmp_path):
    """Three service instances on three ports (as three machines would be), all reaching
    ``direct_url``'s database through ``bouncer``; yields their base URLs."""
    with contextlib.ExitStack() as instances:
        yield [instances.enter_context(running_service(tmp_path / f"instance-{i}.log", **through(bouncer, direct_url)))[0]
               for i in range(3)]


def patches_served(base_url: str) -> float:
    """How many ``PATCH /api/balance`` the instance answered (200 or 409), from its metrics."""
    samples = scrape(base_url)
    return sum(value(samples, "http_requests_total", method="PATCH", route="/api/balance", status=status)
               for status in ("200", "409"))


def test_the_proof_spread_over_three_service_instances_through_one_pgbouncer_is_exact(
        bouncer, create_database, tmp_path):
    database = migrated_database(create_database)
    with three_instances(bouncer, database, tmp_path) as urls:
        report = burst(tmp_path, *urls)
        served = [patches_served(url) for url in urls]
    assert report["config"]["urls"] == urls
    assert served == [3334, 3333, 3333]  # connection i went to instance i % 3
    assert report["counts"] == {"200": 5000, "409 insufficient_funds": 5000}
    assert report["returned_balances"] == list(range(0, 10000, 2))
    assert_ledger_consistent(database)


def test_the_locust_scenario_spread_over_three_instances_through_pgbouncer_passes_the_proof(
        bouncer, create_database, tmp_path):
    database = migrated_database(create_database)
    with three_instances(bouncer, database, tmp_path) as urls:
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "-H", urls[0],
             "--targets", ",".join(urls), "-u", "150", "-r", "150", "--run-time", "180s", "--only-summary",
             "--loglevel", "WARNING", "--changes", "10000", "--amount", "-2", "--start-balance", "10000"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        )
        served = [patches_served(url) for url in urls]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PROOF PASSED: 10000 sent, 5000 succeeded, 5000 insufficient_funds, final balance 0" in result.stdout
    assert sum(served) == 10000 and min(served) > 0, served
    assert_ledger_consistent(database)
