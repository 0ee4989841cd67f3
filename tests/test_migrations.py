"""Migrations: plain SQL in migrations/, applied once each, safe when processes race."""

import concurrent.futures

import psycopg

from tests.service_process import PROJECT_ROOT, balance_api, service_env

MIGRATIONS = sorted(path.stem for path in (PROJECT_ROOT / "migrations").glob("*.sql"))


def migrate(url: str):
    return balance_api("migrate", env=service_env(database_url=url))


def test_migrate_creates_the_schema_and_seeds_user_1_with_10000_and_an_opening_entry(create_database):
    url = create_database()
    result = migrate(url)
    assert result.returncode == 0, result.stderr
    assert f"applied {len(MIGRATIONS)} migration(s): {', '.join(MIGRATIONS)}" in result.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id, balance FROM users").fetchall() == [(1, 10000)]
        assert conn.execute("SELECT user_id, amount, balance_after, kind FROM ledger_entries").fetchall() == [
            (1, 10000, 10000, "opening")
        ]


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
