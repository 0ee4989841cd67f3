"""Read replicas (DATABASE_REPLICA_URL): the read-only routes are served by a real streaming replica
while it is at most REPLICA_MAX_LAG behind; a lagging or stopped replica is skipped for the primary;
X-Read-From: primary reads one's own write; with the primary down, reads keep answering from the
replica marked X-Possibly-Stale while writes get 503. The last test stops the primary."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.http_calls import call
from tests.replica import primary_and_replica
from tests.service_process import balance_api, running_service, service_env


@pytest.fixture(scope="module")
def servers():
    with primary_and_replica() as setup:
        yield setup


@pytest.fixture(scope="module")
def urls(servers):
    with psycopg.connect(servers.primary_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE balance")
    return servers.database_urls("balance")


@pytest.fixture(scope="module")
def service(servers, urls, tmp_path_factory):
    primary, replica = urls
    assert balance_api("migrate", env=service_env(database_url=primary)).returncode == 0
    log_path = tmp_path_factory.mktemp("replica-service") / "service.log"
    with running_service(log_path, database_url=primary, database_replica_url=replica, migrate_on_start="false",
                         replica_max_lag="1", replica_check_interval="0.1") as (base_url, _process):
        yield base_url


def read(service: str, path: str, **headers: str) -> tuple[int, dict, dict]:
    status, response_headers, body = call(f"{service}{path}", headers=headers)
    return status, dict(response_headers), body


def until(condition, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def source(service: str, path: str, **headers: str) -> str | None:
    return read(service, path, **headers)[1].get("X-Read-Source")


@pytest.fixture(scope="module")
def account(service) -> int:
    assert call(f"{service}/api/assets", "POST", {"code": "gems", "scale": 0})[0] == 201
    made = call(f"{service}/api/accounts", "POST", {"asset": "gems", "userId": 1})[2]
    assert call(f"{service}/api/accounts/{made['accountId']}/credit", "POST", {"amount": 40})[0] == 200
    return made["accountId"]


def balance_on_replica(service: str, account: int) -> int | None:
    status, headers, body = read(service, f"/api/accounts/{account}")
    return body["balance"] if status == 200 and headers.get("X-Read-Source") == "replica" else None


def test_every_read_only_route_is_served_by_the_replica_once_it_has_caught_up(service, account):
    until(lambda: balance_on_replica(service, account) == 40)
    transfer_id = read(service, f"/api/transfers?accountId={account}")[2]["transfers"][0]["transferId"]
    for path in (f"/api/accounts/{account}", f"/api/accounts/{account}/history", f"/api/accounts/{account}/balance",
                 "/api/assets", "/api/assets/gems", f"/api/transfers/{transfer_id}", f"/api/transfers?accountId={account}",
                 "/api/users/1", "/api/users/1/history"):
        status, headers, _ = read(service, path)
        assert (status, headers.get("X-Read-Source")) == (200, "replica"), path


def test_writes_go_to_the_primary(service, account):
    status, _, made = call(f"{service}/api/accounts/{account}/debit", "POST", {"amount": 1})
    assert (status, made["balance"]) == (200, 39)  # the replica is read-only: it could not have done this
    until(lambda: balance_on_replica(service, account) == 39)


def test_x_read_from_primary_reads_ones_own_write_and_a_lagging_replica_is_skipped(service, servers, urls, account):
    with psycopg.connect(urls[1], autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            assert call(f"{service}/api/accounts/{account}/credit", "POST", {"amount": 10})[2]["balance"] == 49
            status, headers, shown = read(service, f"/api/accounts/{account}", **{"X-Read-From": "primary"})
            assert (status, headers["X-Read-Source"], shown["balance"]) == (200, "primary", 49)
            until(lambda: source(service, f"/api/accounts/{account}") == "primary")  # lag past 1 s
            assert read(service, f"/api/accounts/{account}")[2]["balance"] == 49
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
    until(lambda: balance_on_replica(service, account) == 49)


def test_a_stopped_replica_is_skipped_and_used_again_once_back(service, servers, account):
    servers.stop_replica()
    try:
        until(lambda: source(service, f"/api/accounts/{account}") == "primary")
        assert read(service, f"/api/accounts/{account}")[0] == 200
    finally:
        servers.start_replica()
    until(lambda: balance_on_replica(service, account) == 49)


def test_with_the_primary_down_reads_answer_from_the_replica_possibly_stale_and_writes_get_503(
        service, servers, account):
    servers.stop_primary()
    status, headers, shown = read(service, f"/api/accounts/{account}")
    assert (status, headers["X-Read-Source"], headers.get("X-Possibly-Stale"), shown["balance"]) == (
        200, "replica", "true", 49)
    status, _, problem = call(f"{service}/api/accounts/{account}/credit", "POST", {"amount": 1})
    assert (status, problem["code"]) == (503, "database_unavailable")
