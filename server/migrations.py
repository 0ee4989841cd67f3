"""Apply the SQL migrations in ``migrations/`` with yoyo-migrations, each exactly once.

yoyo records applied migrations in ``_yoyo_migration`` and runs each one in its own transaction.
Its own lock is a row in ``yoyo_lock``, which a process killed while holding it would leave
behind. So before taking it we take a PostgreSQL session-level advisory lock (PostgreSQL docs,
§13.3.5 "Advisory Locks"): two processes starting together queue on it, and the server releases it
by itself if the holder dies. Whoever holds it is the only live migrator, so a leftover yoyo lock
row is stale and safe to clear.
"""

from __future__ import annotations

import logging
from pathlib import Path

from yoyo import get_backend, read_migrations

log = logging.getLogger(__name__)

# Any fixed 64-bit key; it only has to differ from other advisory locks taken in this database.
MIGRATION_LOCK_KEY = 0x62616C616E6365  # "balance"


def yoyo_url(database_url: str) -> str:
    """Turn ``postgresql://…`` or ``postgres://…`` into yoyo's psycopg-3 URL ``postgresql+psycopg://…``."""
    _, sep, rest = database_url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {database_url!r}")
    return f"postgresql+psycopg://{rest}"


def apply_migrations(database_url: str, migrations_dir: Path) -> list[str]:
    """Apply every migration in ``migrations_dir`` not yet applied to ``database_url``.

    Returns the ids of the migrations applied by this call (empty when up to date). Blocks while
    another process is migrating the same database. Raises ``psycopg.Error`` when the database is
    unreachable and re-raises any error of a failing migration (which is rolled back).
    """
    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(str(migrations_dir))
        backend.execute("SELECT pg_advisory_lock(%d)" % MIGRATION_LOCK_KEY)
        try:
            backend.break_lock()  # a row left by a killed migrator; no live one can hold it
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
        finally:
            backend.execute("SELECT pg_advisory_unlock(%d)" % MIGRATION_LOCK_KEY)
    finally:
        backend.connection.close()
    applied = [migration.id for migration in pending]
    for migration_id in applied:
        log.info("applied migration %s", migration_id)
    return applied
