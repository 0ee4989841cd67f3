"""The proof: 10,000 simultaneous -2 requests against a balance of 10000 give exactly 5,000
successes and 5,000 insufficient-funds refusals, and the ledger agrees to the unit.

The load comes from separate processes (the burst tool, Locust), as 10,000 connections need the
client and the server in different processes (open-file limits).
"""

import contextlib
import json
import subprocess
import sys

from tests.conftest import USER_ACCOUNT, ledger_state
from tests.seeded_users import chained
from tests.service_process import PROJECT_ROOT, balance_api, free_port, running_server

ALL_CHECKS = ["successes", "refusals", "balance chain", "final balance"]


def burst(service_url: str, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    report_path = tmp_path / "burst.json"
    result = balance_api("burst", "--url", service_url, "--json", str(report_path), *args, timeout=300)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return result, report


def last_ledger_id(db) -> int:
    return db.execute("SELECT coalesce(max(id), 0) FROM ledger_entries").fetchone()[0]


def test_10000_simultaneous_debits_of_2_on_10000_give_exactly_5000_successes_and_5000_refusals(
    service_url, db, tmp_path
):
    before = last_ledger_id(db)
    result, report = burst(service_url, tmp_path, "--user-id", "1", "--requests", "10000",
                           "--amount", "-2", "--start-balance", "10000")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["counts"] == {"200": 5000, "409 insufficient_funds": 5000}
    assert [check["check"] for check in report["checks"] if check["passed"]] == ALL_CHECKS
    assert ledger_state(db, 1) == (0, ledger_state(db, 1).entries, 0)
    debits = db.execute(
        "SELECT count(*), min(balance_after), count(DISTINCT balance_after) FROM ledger_entries "
        f"WHERE account_id = {USER_ACCOUNT} AND id > %s AND amount = -2", (1, before),
    ).fetchone()
    assert debits == (5000, 0, 5000)


def test_the_10000_request_proof_leaves_the_accounts_history_one_unbroken_hash_chain(service_url, db, tmp_path):
    result, _ = burst(service_url, tmp_path, "--user-id", "1", "--requests", "10000",
                      "--amount", "-2", "--start-balance", "10000")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = db.execute(f"SELECT account_id, transfer_id, amount, balance_after, hash FROM ledger_entries"
                      f" WHERE account_id = {USER_ACCOUNT} ORDER BY id", (1,)).fetchall()
    assert len(rows) >= 5001 and [bytes(row[4]) for row in rows] == chained([row[:4] for row in rows])
    head = db.execute(f"SELECT head_hash FROM accounts WHERE id = {USER_ACCOUNT}", (1,)).fetchone()[0]
    assert bytes(head) == bytes(rows[-1][4])


def test_a_keep_alive_burst_gives_the_same_exact_split(service_url, db, new_user, tmp_path):
    user = new_user(0)
    result, report = burst(service_url, tmp_path, "--user-id", str(user), "--requests", "2000",
                           "--amount", "-2", "--start-balance", "1000", "--connections", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["counts"] == {"200": 500, "409 insufficient_funds": 1500}
    assert ledger_state(db, user).balance == ledger_state(db, user).entries_sum == 0


def test_a_credit_burst_applies_every_change(service_url, db, new_user, tmp_path):
    user = new_user(0)
    result, report = burst(service_url, tmp_path, "--user-id", str(user), "--requests", "1000",
                           "--amount", "3", "--start-balance", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["counts"] == {"200": 1000}
    assert ledger_state(db, user) == (3000, 1000, 3000)


def test_the_locust_scenario_sends_exactly_10000_and_passes_the_proof(service_url, db, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "-H", service_url,
         "-u", "200", "-r", "200", "--run-time", "180s", "--only-summary", "--loglevel", "WARNING",
         "--changes", "10000", "--amount", "-2", "--user-id", "1", "--start-balance", "10000"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PROOF PASSED: 10000 sent, 5000 succeeded, 5000 insufficient_funds, final balance 0" in result.stdout
    state = ledger_state(db, 1)
    assert state.balance == state.entries_sum == 0


@contextlib.contextmanager
def noop_server(tmp_path):
    port = free_port()
    with running_server(["-m", "loadtest.noop_server", "--port", str(port)], port, tmp_path / "noop.log") as (url, _):
        yield url


def test_the_burst_tool_exits_1_when_the_outcome_is_not_exact(tmp_path):
    with noop_server(tmp_path) as url:  # answers {"balance": 10000} to everything: it never applies a change
        result, report = burst(url, tmp_path, "--requests", "200")
    assert result.returncode == 1
    assert "RESULT: FAILED" in result.stdout
    assert {check["check"] for check in report["checks"] if not check["passed"]} == {"balance chain", "final balance"}


def test_the_burst_tool_measures_without_checks_when_told_not_to_verify(tmp_path):
    with noop_server(tmp_path) as url:
        result, report = burst(url, tmp_path, "--requests", "500", "--no-verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["counts"] == {"200": 500} and report["checks"] == []
    assert report["requests_per_s"] > 0 and set(report["latency_ms"]) == {"p50", "p90", "p99", "max"}
