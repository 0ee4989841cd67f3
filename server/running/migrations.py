"""Apply the SQL migrations in ``migrations/`` with yoyo-migrations, each exactly once, and then
the ledger's current functions and views (``server/ledger/sql/``).

yoyo records applied migrations in ``_yoyo_migration`` and runs each one in its own transaction.
Its own lock is a row in ``yoyo_lock``, which a process killed while holding it would leave
behind. So before taking it we take a PostgreSQL session-level advisory lock (PostgreSQL docs,
§13.3.5 "Advisory Locks"): two processes starting together queue on it, and the server releases it
by itself if the holder dies. Whoever holds it is the only live migrator, so a leftover yoyo lock
row is stale and safe to clear.

Migrations hold tables, indexes and data moves; the definitions folder holds the current
definition of every function and view, one file per concept. After the migrations, under the same
advisory lock, :func:`apply_definitions` runs the whole folder in one transaction unless its digest
is the one stored in ``ledger_definitions`` (migration 0012), with a fingerprint of each function
and view as applied, which ``balance-api check`` compares with the catalogue. yoyo's post-apply
hook would run only when some migration was applied, so this module calls it itself, on every
migrate and start-up.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import psycopg
from yoyo import get_backend, read_migrations

from server.ledger.definitions import CATALOGUE, DEFINITIONS_DIR, HAS_DEFINITIONS_TABLE, read_definitions

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


def apply_definitions(connection: psycopg.Connection, definitions_dir: Path = DEFINITIONS_DIR, *,
                      force: bool = False) -> bool:
    """Make the database's functions and views in schema ``public`` exactly those of
    ``definitions_dir``: run every ``*.sql`` file (``CREATE OR REPLACE`` statements), in name order,
    then drop any function or view of ``public`` that no file defines. One transaction: all of it
    or nothing. Skipped, returning False, when the folder's digest is the one stored by the last
    apply (``force`` applies anyway); returns True when applied.

    ``connection`` is an autocommit psycopg connection to a database at the migrations' head (the
    ``ledger_definitions`` table exists); the caller holds :data:`MIGRATION_LOCK_KEY`, so two
    processes never apply at once. ``CREATE OR REPLACE`` keeps each function's and view's OID, so
    sessions running meanwhile re-plan their cached statements against the new definition
    (PostgreSQL docs, PREPARE, "Notes") instead of failing on a dropped object.
    ``check_function_bodies`` is off while the files run (as pg_dump does, docs §19.11.2), so the
    files' order does not matter to functions that call each other. Raises ``psycopg.Error`` when
    a statement fails (nothing is applied), e.g. a signature change that ``CREATE OR REPLACE``
    cannot make, which then needs a migration that drops the old function.
    """
    digest, texts = read_definitions(definitions_dir)
    with connection.transaction():
        stored = connection.execute("SELECT digest FROM ledger_definitions").fetchone()
        if stored is not None and stored[0] == digest and not force:
            return False
        connection.execute("SET LOCAL check_function_bodies = off")
        for text in texts:
            connection.execute(text)
        # what no file (re)defined in this transaction is left over from an older folder or migration
        leftovers = connection.execute(
            "SELECT format('DROP FUNCTION %s', p.oid::regprocedure) FROM pg_proc p"
            " WHERE p.pronamespace = 'public'::regnamespace AND p.xmin <> pg_current_xact_id()::xid"
            "   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass"
            "                   AND d.objid = p.oid AND d.deptype = 'e')"
            " UNION ALL "
            "SELECT format('DROP VIEW %s', c.oid::regclass) FROM pg_class c"
            " WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace"
            "   AND NOT EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid"
            "                   AND r.xmin = pg_current_xact_id()::xid)").fetchall()
        for (drop,) in leftovers:
            log.info("ledger definitions: %s (no file defines it)", drop)
            connection.execute(drop)
        # what was applied, and a fingerprint of each function and view as it now is (balance-api check)
        connection.execute("INSERT INTO ledger_definitions (digest, catalogue)"
                           f" SELECT %s, coalesce(jsonb_object_agg(c.key, c.value), '{{}}') FROM ({CATALOGUE}) c"
                           " ON CONFLICT (singleton) DO UPDATE SET digest = excluded.digest,"
                           " catalogue = excluded.catalogue, applied_at = now()", (digest,))
    log.info("applied the ledger definitions (%s)", digest[:12])
    return True


@dataclass(frozen=True)
class MigrateOutcome:
    """What one :func:`apply_migrations` call did: the ids of the migrations it applied or rolled
    back (oldest first when applying, newest first when rolling back), and whether it applied the
    ledger definitions (False: unchanged, or not at their head, or a rollback)."""

    migrations: list[str]
    definitions_applied: bool


def apply_migrations(database_url: str, migrations_dir: Path, default_asset_code: str = "default",
                     rollback: int = 0, *, force_definitions: bool = False) -> MigrateOutcome:
    """Apply every migration in ``migrations_dir`` not yet applied to ``database_url``, or with
    ``rollback`` > 0 roll back that many of the applied ones, newest first (each migration's
    ``.rollback.sql`` file, yoyo's convention).

    ``default_asset_code`` names the default asset if this call creates it (migration 0004 reads it
    from the session setting ``balance_api.default_asset_code``). After applying (not after a
    rollback), applies the ledger definitions (:func:`apply_definitions`; even when unchanged with
    ``force_definitions`` or when any migration was applied) when the schema is at their head, i.e.
    ``migrations_dir`` reaches migration 0012. Blocks while another
    process is migrating the same database. Raises ``psycopg.Error`` when the database is
    unreachable and re-raises any error of a failing migration (which is rolled back).
    """
    # yoyo runs each migration on a new connection made from the URL, so the setting travels in it
    # (libpq's "options" connection parameter: -c name=value, PostgreSQL docs §34.1.2)
    backend = get_backend(_with_setting(yoyo_url(database_url), "balance_api.default_asset_code",
                                        default_asset_code))
    definitions_applied = False
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
                    if backend.connection.execute(HAS_DEFINITIONS_TABLE).fetchone()[0]:
                        # a migration may drop what the folder defines (a function whose result type
                        # changes, or one that a rollback dropped): applied after any migration
                        definitions_applied = apply_definitions(backend.connection,
                                                                force=force_definitions or bool(done))
        finally:
            backend.execute("SELECT pg_advisory_unlock(%d)" % MIGRATION_LOCK_KEY)
    finally:
        backend.connection.close()
    ids = [migration.id for migration in done]
    for migration_id in ids:
        log.info("%s migration %s", "rolled back" if rollback else "applied", migration_id)
    return MigrateOutcome(ids, definitions_applied)
