"""Migrations: plain SQL in migrations/, applied once each, safe when processes race."""

import concurrent.futures
import shutil

import psycopg

from server.running.migrations import apply_migrations
from tests.service_process import PROJECT_ROOT, balance_api, service_env

MIGRATIONS = sorted(path.stem for path in (PROJECT_ROOT / "migrations").glob("*.sql")
                    if not path.name.endswith(".rollback.sql"))
# the migrations from the one that brought assets and accounts on
SINCE_ASSETS = MIGRATIONS[MIGRATIONS.index("0004.assets-accounts-double-entry"):]


def migrate(url: str):
    return balance_api("migrate", env=service_env(database_url=url))


def test_migrate_creates_the_schema_and_seeds_user_1_with_10000_and_an_opening_entry(create_database):
    url = create_database()
    result = migrate(url)
    assert result.returncode == 0, result.stderr
    assert f"applied {len(MIGRATIONS)} migration(s): {', '.join(MIGRATIONS)}" in result.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id FROM users").fetchall() == [(1,)]
        assert conn.execute("SELECT a.user_id, a.balance, s.code, s.is_default FROM accounts a "
                            "JOIN assets s ON s.id = a.asset_id WHERE NOT a.is_system").fetchall() == [
            (1, 10000, "default", True)]
        assert conn.execute("SELECT a.user_id, e.amount, e.balance_after, e.kind FROM ledger_entries e "
                            "JOIN accounts a ON a.id = e.account_id ORDER BY e.id").fetchall() == [
            (1, 10000, 10000, "opening")]


def test_migrate_twice_applies_nothing_the_second_time(create_database):
    url = create_database()
    migrate(url)
    second = migrate(url)
    assert second.returncode == 0, second.stderr
    assert "applied 0 migration(s)" in second.stdout


def test_concurrent_migrations_apply_each_migration_exactly_once(create_database):
    url = create_database()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrate(url), range(4)))
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    assert sum(f"applied {len(MIGRATIONS)} migration" in r.stdout for r in results) == 1
    assert sum("applied 0 migration" in r.stdout for r in results) == 3
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM transfers").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == (1,)


def test_a_lock_left_by_a_killed_migrator_does_not_block_the_next_one(create_database):
    url = create_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 999999)")
    result = migrate(url)
    assert result.returncode == 0, result.stderr


def test_new_users_are_numbered_after_the_seeded_one(create_database):
    url = create_database()
    migrate(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("INSERT INTO users DEFAULT VALUES RETURNING id").fetchone() == (2,)


def test_the_default_asset_code_is_a_setting_read_when_the_migration_creates_it(create_database):
    url = create_database()
    result = balance_api("migrate", env=service_env(database_url=url, default_asset_code="USD"))
    assert result.returncode == 0, result.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT code, scale FROM assets WHERE is_default").fetchall() == [("USD", 2)]


# What a database made by the migrations before assets existed holds, read the old way.
OLD_STATE = {
    "balances": "SELECT id, balance FROM users ORDER BY id",
    "entries": "SELECT id, user_id, amount, balance_after, kind, description, idempotency_key, transfer_id "
               "FROM ledger_entries ORDER BY id",
    "transfers": "SELECT id, from_user_id, to_user_id, amount, description FROM transfers ORDER BY id",
}


def old_database_with_data(create_database, tmp_path) -> tuple[str, dict]:
    """A database migrated by 0001-0003 only, with users, every kind of entry and transfers made by
    the functions of those migrations."""
    url = create_database()
    old = tmp_path / "old-migrations"
    old.mkdir()
    for path in (PROJECT_ROOT / "migrations").glob("000[123].*"):
        shutil.copy(path, old)
    apply_migrations(url, old)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users DEFAULT VALUES")
        conn.execute("INSERT INTO users DEFAULT VALUES")
        conn.execute("SELECT * FROM apply_balance_changes(2, '{500,-100,-1000,7}', '{credit,debit,debit,adjustment}',"
                     " '{top-up,NULL,NULL,NULL}', '{k1,NULL,NULL,NULL}')")
        conn.execute("SELECT * FROM transfer_funds(2, 3, 150, 'rent', NULL)")
        conn.execute("SELECT * FROM transfer_funds(1, 3, 50, NULL, 'k9')")
        return url, {name: conn.execute(query).fetchall() for name, query in OLD_STATE.items()}


def test_an_old_database_is_upgraded_without_losing_anything_and_passes_check(create_database, tmp_path):
    url, before = old_database_with_data(create_database, tmp_path)
    assert migrate(url).returncode == 0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT a.user_id, a.balance FROM accounts a WHERE NOT a.is_system "
                            "ORDER BY a.user_id").fetchall() == before["balances"]
        kept = conn.execute(
            "SELECT e.id, a.user_id, e.amount, e.balance_after, e.kind, e.description, e.idempotency_key "
            "FROM ledger_entries e JOIN accounts a ON a.id = e.account_id WHERE NOT a.is_system ORDER BY e.id").fetchall()
        assert kept == [entry[:7] for entry in before["entries"]]  # same ids, amounts, balances, kinds, keys
        moved = conn.execute("SELECT t.id, f.user_id, d.user_id, t.amount, t.description FROM transfers t "
                             "JOIN accounts f ON f.id = t.from_account_id JOIN accounts d ON d.id = t.to_account_id "
                             "WHERE t.code = 'transfer' ORDER BY t.id").fetchall()
        assert moved == before["transfers"]  # old transfers keep their ids
        # every one-sided entry is now a transfer with the system account, in both directions
        # (user 1's opening, user 2's credit, debit and adjustment; the refused debit wrote nothing)
        assert conn.execute("SELECT code FROM transfers WHERE code <> 'transfer' ORDER BY id").fetchall() == [
            ("opening",), ("credit",), ("debit",), ("adjustment",)]
    result = balance_api("check", env=service_env(database_url=url))
    assert result.returncode == 0, result.stdout


def test_migrate_rollback_goes_back_to_the_old_schema_with_the_old_data_and_up_again(create_database, tmp_path):
    url, before = old_database_with_data(create_database, tmp_path)
    assert migrate(url).returncode == 0
    down = balance_api("migrate", "--rollback", str(len(SINCE_ASSETS)), env=service_env(database_url=url))
    assert down.returncode == 0, down.stderr
    assert f"rolled back {len(SINCE_ASSETS)} migration(s): {', '.join(reversed(SINCE_ASSETS))}" in down.stdout
    with psycopg.connect(url) as conn:
        assert {name: conn.execute(query).fetchall() for name, query in OLD_STATE.items()} == before
    up = migrate(url)
    assert up.returncode == 0 and f"applied {len(SINCE_ASSETS)} migration(s): {', '.join(SINCE_ASSETS)}" in up.stdout
    assert balance_api("check", env=service_env(database_url=url)).returncode == 0


def roll_back_after(url: str, migration: str):
    """Roll back every migration applied after ``migration`` (they must allow it)."""
    later = len(MIGRATIONS) - 1 - MIGRATIONS.index(migration)
    if later:
        assert balance_api("migrate", "--rollback", str(later), env=service_env(database_url=url)).returncode == 0


def test_rolling_back_holds_is_refused_while_the_database_holds_any(create_database):
    url = create_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM transfer_funds(2, NULL, 1, NULL, 1, 5, 'spend', NULL, NULL, NULL, true, NULL, NULL)")
    roll_back_after(url, "0006.holds")
    down = balance_api("migrate", "--rollback", env=service_env(database_url=url))
    assert down.returncode != 0 and "cannot roll back 0006" in down.stderr
    assert migrate(url).returncode == 0 and balance_api("check", env=service_env(database_url=url)).returncode == 0


def test_rolling_back_references_and_reversals_is_refused_while_any_transfer_carries_one(create_database):
    url = create_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM transfer_funds(2, NULL, 1, NULL, 1, 5, 'spend', NULL, NULL, NULL, false, NULL, "
                     "'order-1')")
    roll_back_after(url, "0007.references-and-reversals")
    down = balance_api("migrate", "--rollback", env=service_env(database_url=url))
    assert down.returncode != 0 and "cannot roll back 0007" in down.stderr
    assert balance_api("check", env=service_env(database_url=url)).returncode == 0


def test_every_migration_rolls_back_to_an_empty_database_and_applies_again(create_database):
    url = create_database()
    migrate(url)
    down = balance_api("migrate", "--rollback", str(len(MIGRATIONS)), env=service_env(database_url=url))
    assert down.returncode == 0, down.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                            "AND tablename NOT LIKE '\\_yoyo%%' AND tablename <> 'yoyo_lock'").fetchone() == (0,)
    assert f"applied {len(MIGRATIONS)} migration(s)" in migrate(url).stdout


def test_rolling_back_past_data_the_old_schema_cannot_hold_is_refused_and_changes_nothing(create_database):
    url = create_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO assets (code, scale) VALUES ('gems', 0)")
        conn.execute("INSERT INTO accounts (asset_id, is_system) SELECT id, true FROM assets WHERE code = 'gems'")
        conn.execute("INSERT INTO accounts (asset_id, user_id) SELECT id, 1 FROM assets WHERE code = 'gems'")
        conn.execute("SELECT * FROM apply_balance_changes('{NULL}', '{1}', ARRAY[(SELECT id FROM assets "
                     "WHERE code = 'gems')], '{5}', '{credit}', '{credit}', '{NULL}', '{NULL}')")
    later = len(SINCE_ASSETS) - 1  # the ones after 0004 change no stored shape: they roll back
    assert balance_api("migrate", "--rollback", str(later), env=service_env(database_url=url)).returncode == 0
    down = balance_api("migrate", "--rollback", env=service_env(database_url=url))
    assert down.returncode != 0 and "cannot roll back 0004" in down.stderr
    assert migrate(url).returncode == 0  # check reads today's schema
    assert balance_api("check", env=service_env(database_url=url)).returncode == 0
