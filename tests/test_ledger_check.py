"""balance-api check: the ledger invariants, verified from the command line."""

import psycopg

from tests.service_process import balance_api, service_env


def check(url: str):
    return balance_api("check", env=service_env(database_url=url))


def test_check_passes_on_a_freshly_migrated_database(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    result = check(url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 5 and "ledger consistent" in result.stdout


def test_check_passes_on_the_suites_database_after_everything_the_tests_did(database_url, service_url):
    result = check(database_url)
    assert result.returncode == 0, result.stdout


def test_check_names_a_user_whose_balance_differs_from_the_ledger(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE users SET balance = balance + 1 WHERE id = 1")
    result = check(url)
    assert result.returncode == 1
    assert "FAIL balance = sum of entries" in result.stdout
    assert "user 1: balance 10001, entries sum to 10000" in result.stdout
    assert "ledger INCONSISTENT: balance = sum of entries" in result.stdout


def test_check_names_a_broken_balance_after_chain_and_a_half_transfer(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (balance) VALUES (0)")
        transfer = conn.execute("INSERT INTO transfers (from_user_id, to_user_id, amount) VALUES (1, 2, 5) "
                                "RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO ledger_entries (user_id, amount, balance_after, kind, transfer_id) "
                     "VALUES (2, 5, 7, 'transfer_in', %s), (2, 3, 10, 'credit', 999)", (transfer,))
        conn.execute("UPDATE users SET balance = 10 WHERE id = 2")
    result = check(url)
    assert result.returncode == 1
    for failed in ("balance_after chain", "transfers balanced", "entries belong to transfers"):
        assert f"FAIL {failed}" in result.stdout
    assert f"transfer {transfer}: 1 entries" in result.stdout
    assert "transfer 999 does not exist" in result.stdout
