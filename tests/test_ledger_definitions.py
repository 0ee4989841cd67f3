"""The ledger's functions and views: defined once, in server/ledger/sql/, and applied by migrate.

What the folder promises: applying it after the migrations gives the database exactly the
catalogue that the history migrations (0001-0011) gave it, but for the functions changed or added
since (each named, with its issue), on a fresh database and on one already at that head, on the embedded PostgreSQL and on the machine's own (e.g. Debian's 15); the
database then has exactly the folder's functions and views; an unchanged folder is not applied
again; a failing file applies nothing; and applying it while requests run answers every request
as usual.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import threading
import uuid
from collections.abc import Callable

import aiohttp
import psycopg
import pytest

from server.ledger.definitions import DEFINITIONS_DIR
from server.running.migrations import MIGRATION_LOCK_KEY, apply_definitions, apply_migrations
from tests.request_kinds import KINDS, open_world
from tests.service_process import PROJECT_ROOT, balance_api, service_env
from tests.sql_catalogue import ledger_catalogue
from tests.system_postgres import create_database_on

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
# The migrations written before the folder existed, which defined functions and views themselves.
# They are history: left as they are (a database applied them once), and their digest is pinned.
LAST_MIGRATION_WITH_DEFINITIONS = "0011"
HISTORY = sorted(path for path in MIGRATIONS_DIR.glob("*.sql") if path.name[:4] <= LAST_MIGRATION_WITH_DEFINITIONS)
HISTORY_DIGEST = "cfa7f8d2d1f52283a1ac2497762f241278a31279503d490481f94e5b562401f9"
# What changed in the folder since the history, deliberately, each with the issue that changed it:
# the rest of the catalogue stays exactly what the history migrations gave.
CHANGED_SINCE_HISTORY = {  # issue 23: money to or from a system account adds to its stored shards
    "function apply_balance_changes(bigint[],bigint[],integer[],bigint[],text[],text[],text[],text[])",
    "function transfer_funds(bigint,bigint,bigint,bigint,integer,bigint,text,text,jsonb,text,boolean,integer,text)",
    ("function apply_transfer_batch(boolean,text[],bigint[],bigint[],bigint[],bigint[],integer[],bigint[],text[],"
    "text[],jsonb[],boolean[],integer[],text[],bigint[],text[])"),
    "function resolve_pending_transfer(bigint,boolean,bigint)",
    # issue 23: the batch's accounts locked through unnest(), not = ANY (PostgreSQL 15's re-checks)
    "function lock_transfer_batch_accounts(bigint[],bigint[],bigint[],bigint[],integer[],bigint[])",
    # issue 25: wrappers of the functions that take a creator now (rollback_signatures.sql), as are the
    # first three above
    "function reverse_transfer(bigint,bigint,text,text,text)",
    ("function apply_transfer_batch_in_order(boolean,text[],bigint[],bigint[],bigint[],bigint[],integer[],bigint[],"
    "text[],text[],jsonb[],boolean[],integer[],text[],bigint[],text[])"),
    ("function apply_ledger_batch(text[],bigint[],bigint[],bigint[],bigint[],integer[],bigint[],text[],text[],jsonb[],"
    "boolean[],integer[],text[],bigint[],text[])"),
    # issue 25: the same columns, read from transfer_documents (documents.sql says why)
    "view transfer_details",
}
ADDED_SINCE_HISTORY = {
    "function add_to_system_balances(integer[],bigint[])",  # issue 23
    # issue 24: the change feed's events, written by the functions above (apply_balance_changes,
    # transfer_funds, apply_transfer_batch, resolve_pending_transfer) and these
    "function feed_position_after(bigint)",
    "function record_account_event(event_type,accounts)",
    "function record_asset_event(assets,bigint)",
    "function feed_page(bigint,bigint,integer,integer,event_type[],integer,bigint,integer)",
    "function feed_span(bigint,bigint,integer,bigint,integer)",
    # issue 25: the audit log
    "function account_document(accounts)",
    "function record_audit(bigint,bigint,text,text,text,text,jsonb,jsonb)",
    # issue 25: tamper-evident histories (each entry's hash, written by the four functions above)
    "function entry_hash(bytea,bigint,bigint,bigint,bigint)",
    # issue 25: who made each transfer (p_created_by) and the documents that show it
    "function apply_balance_changes(bigint[],bigint[],integer[],bigint[],text[],text[],text[],text[],bigint[])",
    ("function transfer_funds(bigint,bigint,bigint,bigint,integer,bigint,text,text,jsonb,text,boolean,integer,text,"
    "bigint)"),
    "function reverse_transfer(bigint,bigint,text,text,text,bigint)",
    ("function apply_transfer_batch_in_order(boolean,text[],bigint[],bigint[],bigint[],bigint[],integer[],bigint[],"
    "text[],text[],jsonb[],boolean[],integer[],text[],bigint[],text[],bigint[])"),
    ("function apply_transfer_batch(boolean,text[],bigint[],bigint[],bigint[],bigint[],integer[],bigint[],text[],"
    "text[],jsonb[],boolean[],integer[],text[],bigint[],text[],bigint[])"),
    ("function apply_ledger_batch(text[],bigint[],bigint[],bigint[],bigint[],integer[],bigint[],text[],text[],jsonb[],"
    "boolean[],integer[],text[],bigint[],text[],bigint[])"),
    "view transfer_documents",
}
DEFINES = re.compile(r"^\s*(CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|VIEW|MATERIALIZED\s+VIEW|TRIGGER)"
                     r"|ALTER\s+(FUNCTION|PROCEDURE|VIEW))\b", re.IGNORECASE | re.MULTILINE)


@pytest.fixture
def new_database(each_postgres_admin_url) -> Callable[[], str]:
    """Factory of empty databases on the embedded PostgreSQL, then on the machine's own."""
    return lambda: create_database_on(each_postgres_admin_url)


def _history_only(url: str, tmp_path) -> None:
    """Migrate ``url`` the way main did before the folder existed: migrations 0001-0011 only."""
    history = tmp_path / f"history-{uuid.uuid4().hex[:6]}"
    history.mkdir()
    for path in HISTORY:
        shutil.copy(path, history)
    outcome = apply_migrations(url, history)
    assert not outcome.definitions_applied  # no ledger_definitions table yet: the folder waits


def _catalogue(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return ledger_catalogue(conn)


def _keyed(catalogue: dict) -> dict[str, object]:
    """``{"function f(...)" | "view v": definition}`` of a :func:`ledger_catalogue`."""
    return ({f"function {name}": value for name, value in catalogue["functions"].items()}
            | {f"view {name}": value for name, value in catalogue["views"].items()})


def _assert_history_but_what_changed_since(now: dict, history: dict) -> None:
    """``now`` is ``history`` but for CHANGED_SINCE_HISTORY (each one really changed) and
    ADDED_SINCE_HISTORY (new)."""
    now, history = _keyed(now), _keyed(history)
    assert set(now) == set(history) | ADDED_SINCE_HISTORY
    assert {key for key in history if now[key] != history[key]} == CHANGED_SINCE_HISTORY


def _migrate(url: str, *args: str):
    result = balance_api("migrate", *args, env=service_env(database_url=url))
    assert result.returncode == 0, result.stderr
    return result


def _folder_names() -> set[tuple[str, str]]:
    """``{("function" | "view", name)}`` that the folder's files define."""
    found = set()
    for path in DEFINITIONS_DIR.glob("*.sql"):
        for kind, name in re.findall(r"^CREATE OR REPLACE (FUNCTION|VIEW) (\w+)", path.read_text(), re.MULTILINE):
            found.add((kind.lower(), name))
    return found


def _database_names(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        catalogue = ledger_catalogue(conn)
    return ({("function", signature.split("(")[0]) for signature in catalogue["functions"]}
            | {("view", name) for name in catalogue["views"]})


def test_the_history_migrations_are_left_as_they_are():
    digest = hashlib.sha256(b"".join(path.name.encode() + b"\0" + path.read_bytes() for path in HISTORY))
    assert [path.name[:4] for path in HISTORY][::2] == [f"{n:04d}" for n in range(1, 12)]
    assert digest.hexdigest() == HISTORY_DIGEST


def test_no_migration_after_0011_defines_a_function_or_view():
    later = [path for path in sorted(MIGRATIONS_DIR.glob("*.sql"))
             if path.name[:4] > LAST_MIGRATION_WITH_DEFINITIONS and not path.stem.endswith(".rollback")]
    assert later, "migration 0012 (the ledger_definitions table) exists"
    defining = {path.name: DEFINES.findall(path.read_text()) for path in later}
    assert {name: found for name, found in defining.items() if found} == {}


def test_a_rollback_after_0011_defines_only_views_the_folder_defines_as_they_were_before_it():
    """A rollback may give a view of the folder back its older query (0018: transfer_details, so
    that the view it now reads can go); it defines no function and no view of its own."""
    rollbacks = [path for path in sorted(MIGRATIONS_DIR.glob("*.rollback.sql"))
                 if path.name[:4] > LAST_MIGRATION_WITH_DEFINITIONS]
    views = re.compile(r"^\s*CREATE\s+OR\s+REPLACE\s+VIEW\s+(\w+)", re.IGNORECASE | re.MULTILINE)
    folder_views = {name for kind, name in _folder_names() if kind == "view"}
    for path in rollbacks:
        text = path.read_text()
        assert len(DEFINES.findall(text)) == len(views.findall(text)), path.name
        assert set(views.findall(text)) <= folder_views, path.name


def test_a_fresh_database_gets_the_catalogue_the_history_migrations_gave_but_what_changed_since(new_database,
                                                                                               tmp_path):
    history, fresh = new_database(), new_database()
    _history_only(history, tmp_path)
    _migrate(fresh)
    _assert_history_but_what_changed_since(_catalogue(fresh), _catalogue(history))


def test_a_database_at_the_history_head_gets_the_same_catalogue_as_a_fresh_one(new_database, tmp_path):
    url, fresh = new_database(), new_database()
    _history_only(url, tmp_path)
    result = _migrate(url)
    later = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql")
                   if path.name[:4] > LAST_MIGRATION_WITH_DEFINITIONS and not path.stem.endswith(".rollback"))
    assert f"applied {len(later)} migration(s): {', '.join(later)}" in result.stdout
    assert "ledger definitions applied" in result.stdout
    _migrate(fresh)
    assert _catalogue(url) == _catalogue(fresh)


def test_after_migrate_the_database_has_exactly_the_functions_and_views_of_the_folder(create_database):
    url = create_database()
    _migrate(url)
    assert _database_names(url) == _folder_names()
    assert len(_folder_names()) == 21  # today: nineteen functions (six with a second signature) and two views


def test_an_unchanged_folder_is_not_applied_again(create_database):
    url = create_database()
    _migrate(url)
    with psycopg.connect(url) as conn:
        versions = conn.execute("SELECT oid, xmin::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
                                " ORDER BY oid").fetchall()
    assert "ledger definitions unchanged" in _migrate(url).stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT oid, xmin::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
                            " ORDER BY oid").fetchall() == versions


def test_a_function_that_no_file_defines_is_dropped_when_the_folder_is_applied(create_database):
    url = create_database()
    _migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION left_over(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1'")
        conn.execute("CREATE VIEW left_over_view AS SELECT 1 AS one")
    assert "ledger definitions applied" in _migrate(url, "--definitions").stdout
    assert _database_names(url) == _folder_names()


def test_a_failing_definition_applies_nothing(create_database, tmp_path):
    url = create_database()
    _migrate(url)
    broken = tmp_path / "sql"
    shutil.copytree(DEFINITIONS_DIR, broken)
    text = (broken / "transfers.sql").read_text()
    (broken / "transfers.sql").write_text(text + "\nCREATE OR REPLACE FUNCTION resolve_account(bigint) RETURNS"
                                          " text LANGUAGE sql AS 'SELECT 1';\nSELECT no_such_column FROM accounts;\n")
    before = _catalogue(url)
    with psycopg.connect(url, autocommit=True) as conn:
        digest = conn.execute("SELECT digest FROM ledger_definitions").fetchone()
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        with pytest.raises(psycopg.errors.UndefinedColumn):
            apply_definitions(conn, broken)
        assert conn.execute("SELECT digest FROM ledger_definitions").fetchone() == digest
    assert _catalogue(url) == before


def test_applying_the_folder_while_requests_run_answers_every_request_as_usual(service_url, database_url):
    """Every kind of request, from four clients, while the folder is applied five times: each
    kind asserts its usual answer, so a 500 (e.g. a cached statement that no longer fits) fails."""
    stop = threading.Event()
    applied: list[str] = []

    def apply_repeatedly() -> None:
        try:
            for _ in range(5):
                applied.append(_migrate(database_url, "--definitions").stdout)
        finally:
            stop.set()

    async def client(http: aiohttp.ClientSession) -> int:
        world = await open_world(http)  # its own accounts: a kind freezes and unfreezes them
        rounds = 0
        while not stop.is_set() or rounds == 0:
            for kind in KINDS:
                await kind(http, world)
            rounds += 1
        return rounds

    async def main() -> list[int]:
        async with aiohttp.ClientSession(base_url=service_url) as http:
            applier = threading.Thread(target=apply_repeatedly)
            applier.start()
            try:
                return await asyncio.gather(*(client(http) for _ in range(4)))
            finally:
                await asyncio.to_thread(applier.join)

    rounds = asyncio.run(main())
    assert len(applied) == 5 and all("ledger definitions applied" in out for out in applied)
    assert min(rounds) >= 1


def test_check_names_each_function_changed_added_or_dropped_by_hand_and_migrate_restores_them(create_database):
    url = create_database()
    _migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        # someone "fixing" expiry in psql
        conn.execute("CREATE OR REPLACE FUNCTION expired_holds(p_account_id bigint, OUT debits bigint,"
                     " OUT credits bigint) LANGUAGE sql STABLE AS 'SELECT 0::bigint, 0::bigint'")
        conn.execute("CREATE FUNCTION left_over(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1'")
        conn.execute("DROP FUNCTION resolve_account(bigint, bigint, integer)")
    result = balance_api("check", env=service_env(database_url=url))
    assert result.returncode == 1
    named = [line.strip() for line in result.stdout.splitlines() if line.startswith("     function ")]
    assert [line.split(":")[0] for line in named] == [
        "function expired_holds(bigint)", "function left_over(integer)",
        "function resolve_account(bigint,bigint,integer)"]
    assert ["changed" in named[0], "added" in named[1], "dropped" in named[2]] == [True, True, True]
    _migrate(url, "--definitions")
    assert balance_api("check", env=service_env(database_url=url)).returncode == 0


def test_check_says_when_the_applied_folder_is_not_this_installations(create_database):
    url = create_database()
    _migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE ledger_definitions SET digest = 'an older folder'")
    result = balance_api("check", env=service_env(database_url=url))
    assert result.returncode == 1 and "is not this installation's" in result.stdout
    assert "ledger definitions applied" in _migrate(url).stdout  # its digest differs: applied again
    assert balance_api("check", env=service_env(database_url=url)).returncode == 0
