"""The Citus plan of docs/scaling.md, checked against the live schema (the session's migrated
database): every table has a place in the plan; every primary key and unique index of a distributed
table contains its distribution column, or is one the plan replaces; every foreign key is one Citus
accepts; co-located tables share the distribution column's type. A migration that adds a table, a
unique index or a foreign key fails here until the plan covers it."""

from pathlib import Path

import pytest

PLAN = (Path(__file__).resolve().parent.parent / "docs" / "scaling.md").read_text()
DISTRIBUTED = {"accounts": "id", "ledger_entries": "account_id", "transfers": "from_account_id",
               "idempotency_keys": "key", "system_balance_shards": "shard", "system_balance_changes": "shard",
               "events": "position", "webhook_deliveries": "webhook_id", "audit_log": "position"}
CO_LOCATED_WITH_ACCOUNTS = ("ledger_entries", "transfers")
REFERENCE = {"assets", "users", "webhook_endpoints", "api_keys"}
LOCAL = {"_yoyo_log", "_yoyo_migration", "_yoyo_version", "yoyo_lock", "ledger_definitions"}  # the coordinator's
# unique indexes the Citus DDL replaces (docs/scaling.md says with what)
REPLACED = {"one_account_per_user_and_asset", "accounts_one_system_account_per_asset", "transfers_pkey",
            "transfers_reference"}


@pytest.fixture(scope="module")
def schema(db):
    tables = {row[0] for row in db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    unique = db.execute("""
        SELECT t.relname, i.relname, array_agg(a.attname ORDER BY a.attnum)
          FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
          JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
          LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (x.indkey)
         WHERE x.indisunique GROUP BY t.relname, i.relname""").fetchall()
    foreign = db.execute("""
        SELECT conrelid::regclass::text, confrelid::regclass::text, conname FROM pg_constraint
         WHERE contype = 'f' AND connamespace = 'public'::regnamespace""").fetchall()
    return tables, unique, foreign


def test_every_table_has_a_place_in_the_plan(schema):
    tables, _, _ = schema
    assert tables == set(DISTRIBUTED) | REFERENCE | LOCAL


def test_every_unique_index_of_a_distributed_table_contains_its_distribution_column_or_is_replaced(schema):
    _, unique, _ = schema
    refused = [(table, index, columns) for table, index, columns in unique
               if table in DISTRIBUTED and DISTRIBUTED[table] not in columns and index not in REPLACED]
    assert refused == []
    assert {index for table, index, _ in unique if index in REPLACED} == REPLACED  # none left over


def test_every_foreign_key_points_at_a_reference_table(schema):
    _, _, foreign = schema
    assert [(source, target, name) for source, target, name in foreign if target not in REFERENCE] == []


def test_co_located_tables_share_the_distribution_columns_type(db):
    def type_of(table: str, column: str) -> str:
        return db.execute("SELECT data_type FROM information_schema.columns WHERE table_name = %s "
                          "AND column_name = %s", (table, column)).fetchone()[0]
    assert {type_of(table, DISTRIBUTED[table]) for table in ("accounts", *CO_LOCATED_WITH_ACCOUNTS)} == {"bigint"}


def test_the_plan_names_each_table_its_column_and_each_replaced_index():
    for table, column in DISTRIBUTED.items():
        assert f"| `{table}` | distributed | `{column}` |" in PLAN, table
    for table in REFERENCE:
        assert f"| `{table}` | reference |" in PLAN, table
    for index in REPLACED:
        assert f"`{index} (" in PLAN, index
