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
import urllib.parse
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


def _with_setting(url: str, name: str, value: str) -> str:
    """``url`` with ``-c name=value`` added to its ``options`` query parameter (``value``:
    letters, digits and ``_`` only, so no quoting is needed)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join([*(v for k, v in query if k == "options"), f"-c {name}={value}"])
    query = [(k, v) for k, v in query if k != "options"] + [("options", options)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


def apply_migrations(database_url: str, migrations_dir: Path, default_asset_code: str = "default",
                     rollback: int = 0) -> list[str]:
    """Apply every migration in ``migrations_dir`` not yet applied to ``database_url``, or with
    ``rollback`` > 0 roll back that many of the applied ones, newest first (each migration's
    ``.rollback.sql`` file, yoyo's convention).

    ``default_asset_code`` names the default asset if this call creates it (migration 0004 reads it
    from the session setting ``balance_api.default_asset_code``). Returns the ids of the migrations
    applied or rolled back by this call (empty when there was nothing to do). Blocks while another
    process is migrating the same database. Raises ``psycopg.Error`` when the database is
    unreachable and re-raises any error of a failing migration (which is rolled back).
    """
    # yoyo runs each migration on a new connection made from the URL, so the setting travels in it
    # (libpq's "options" connection parameter: -c name=value, PostgreSQL docs §34.1.2)
    backend = get_backend(_with_setting(yoyo_url(database_url), "balance_api.default_asset_code",
                                        default_asset_code))
    try:
        migrations = read_migrations(str(migrations_dir))
        backend.execute("SELECT pg_advisory_lock(%d)" % MIGRATION_LOCK_KEY)
        try:
            backend.break_lock()  # a row left by a killed migrator; no live one can hold it
            with backend.lock():
                if rollback:
                    done = backend.to_rollback(migrations)[:rollback]
                    backend.rollback_migrations(done)
                else:
                    done = backend.to_apply(migrations)
                    backend.apply_migrations(done)
        finally:
            backend.execute("SELECT pg_advisory_unlock(%d)" % MIGRATION_LOCK_KEY)
    finally:
        backend.connection.close()
    ids = [migration.id for migration in done]
    for migration_id in ids:
        log.info("%s migration %s", "rolled back" if rollback else "applied", migration_id)
    return ids
