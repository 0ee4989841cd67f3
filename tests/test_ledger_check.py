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
    assert result.stdout.count("PASS") == 16 and "ledger consistent" in result.stdout


def test_check_passes_on_the_suites_database_after_everything_the_tests_did(database_url, service_url):
    result = check(database_url)
    assert result.returncode == 0, result.stdout


def test_check_names_an_account_whose_balance_differs_from_the_ledger_and_breaks_conservation(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE user_id = 1")
    result = check(url)
    assert result.returncode == 1
    assert "FAIL balance = sum of entries" in result.stdout
    assert "account 2: balance 10001, entries sum to 10000" in result.stdout
    assert "asset default: balances sum to 1" in result.stdout
    assert "ledger INCONSISTENT: conservation, balance = sum of entries" in result.stdout


def test_check_names_a_balance_outside_its_limits(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:  # the CHECK constraint is the last defence; lift it
        conn.execute("ALTER TABLE accounts DROP CONSTRAINT balance_within_limits")
        conn.execute("UPDATE accounts SET max_balance = 100 WHERE user_id = 1")
    result = check(url)
    assert result.returncode == 1 and "FAIL balances within limits" in result.stdout
    assert "account 2: balance 10000, pending 0 out / 0 in, overdraft limit 0, max balance 100" in result.stdout


def test_check_names_a_reversed_amount_that_its_reversals_do_not_add_up_to(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE transfers SET reversed_amount = 3 WHERE id = 1")
    result = check(url)
    assert result.returncode == 1 and "FAIL reversals" in result.stdout
    assert "transfer 1: reversed 3, reversals sum to 0, moved 10000" in result.stdout


def test_check_names_pending_sums_that_differ_from_the_open_holds(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE accounts SET pending_debits = 7 WHERE user_id = 1")
    result = check(url)
    assert result.returncode == 1 and "FAIL pending sums" in result.stdout
    assert "account 2: pending 7 out / 0 in, holds sum to 0 / 0" in result.stdout


def test_check_names_a_broken_balance_after_chain_and_a_half_transfer(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users DEFAULT VALUES")
        conn.execute("INSERT INTO accounts (asset_id, user_id, balance) VALUES (1, 2, 10)")
        transfer = conn.execute("INSERT INTO transfers (asset_id, from_account_id, to_account_id, amount, code) "
                                "VALUES (1, 2, 3, 5, 'transfer') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO ledger_entries (account_id, amount, balance_after, kind, transfer_id, hash) "
                     "VALUES (3, 5, 7, 'transfer_in', %s, ''), (3, 5, 10, 'credit', 999, '')", (transfer,))
    result = check(url)
    assert result.returncode == 1
    for failed in ("balance_after chain", "transfers balanced", "entries belong to transfers"):
        assert f"FAIL {failed}" in result.stdout
    assert f"transfer {transfer}: 1 entries" in result.stdout
    assert "transfer 999 does not exist" in result.stdout


def test_check_names_a_transfer_whose_event_is_missing_and_one_made_twice(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM events WHERE 1 = ANY (transfer_ids)")
        conn.execute("INSERT INTO events (position, type, asset_id, transfer_ids) "
                     "VALUES (0, 'transfer.created', 1, '{2}'), (0, 'transfer.posted', 1, '{9}')")
    result = check(url)
    assert result.returncode == 1 and "FAIL change feed" in result.stdout
    assert "transfer 1 (posted): 0 event(s) of its making (none), 0 of its resolution (none)" in result.stdout
    assert "transfer.posted): its transfer 9 does not exist or is not of asset 1" in result.stdout


def test_check_names_a_key_revoked_by_hand_and_an_audit_entry_whose_target_is_gone(create_database):
    url = create_database()
    env = service_env(database_url=url)
    balance_api("migrate", env=env)
    assert balance_api("keys", "create", "--name", "job", "--scopes", "read", env=env).returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        key_id = conn.execute("SELECT id FROM api_keys").fetchone()[0]
        conn.execute("UPDATE api_keys SET revoked_at = now()")  # no key.revoked entry in the log
        conn.execute("INSERT INTO audit_log (position, action, target) VALUES (0, 'account.frozen', 'account:999')")
    result = check(url)
    assert result.returncode == 1 and "FAIL audit log" in result.stdout
    assert f"key {key_id} (job): revoked, 0 key.revoked entries" in result.stdout
    assert "(account.frozen): its target account:999 does not exist" in result.stdout
