"""Watch PostgreSQL for sessions blocked on a row lock a test holds."""

import time

import psycopg
import pytest


def wait_for_lock_waiters(database_url: str, count: int, seconds: float = 20) -> None:
    """Wait until ``count`` sessions of the database are blocked on a lock (our row lock)."""
    deadline = time.monotonic() + seconds
    with psycopg.connect(database_url, autocommit=True) as conn:  # autocommit: a fresh stats snapshot each time
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()[0]
            if waiting >= count:
                return
            time.sleep(0.05)
    pytest.fail(f"{count} requests never reached the database")
