"""apply_transfer_batch() (migration 0009): a batch of plain transfers that are all accepted is
written set-based, without one transfer_funds() call per item, and writes exactly what applying
the items one at a time (apply_transfer_batch_in_order(), 0008's function) writes; any other batch
is applied item by item. Each test runs in a transaction it rolls back."""

import random

import psycopg
import pytest

ITEMS = 1_000

# apply_transfer_batch()'s arrays for plain transfers by account id ($1 froms, $2 tos, $3 amounts)
CALL = """
SELECT item, outcome, transfer_id, from_account_id, to_account_id
  FROM {function}(false, array_fill('transfer'::text, ARRAY[cardinality(%(froms)s::bigint[])]),
                  %(froms)s::bigint[], array_fill(NULL::bigint, ARRAY[cardinality(%(froms)s::bigint[])]),
                  %(tos)s::bigint[], array_fill(NULL::bigint, ARRAY[cardinality(%(froms)s::bigint[])]),
                  array_fill(%(asset)s::integer, ARRAY[cardinality(%(froms)s::bigint[])]), %(amounts)s::bigint[],
                  array_fill('transfer'::text, ARRAY[cardinality(%(froms)s::bigint[])]),
                  array_fill(NULL::text, ARRAY[cardinality(%(froms)s::bigint[])]),
                  array_fill(NULL::jsonb, ARRAY[cardinality(%(froms)s::bigint[])]),
                  array_fill(false, ARRAY[cardinality(%(froms)s::bigint[])]),
                  array_fill(NULL::integer, ARRAY[cardinality(%(froms)s::bigint[])]),
                  array_fill(NULL::text, ARRAY[cardinality(%(froms)s::bigint[])]),
                  array_fill(NULL::bigint, ARRAY[cardinality(%(froms)s::bigint[])]))
 ORDER BY item
"""


@pytest.fixture
def conn(database_url, service_url):
    """A connection in a transaction that is rolled back, with function calls counted
    (pg_stat_xact_user_functions, PostgreSQL docs §27.2.22)."""
    with psycopg.connect(database_url) as connection:
        connection.execute("SET track_functions = 'all'")
        yield connection
        connection.rollback()


def funded_accounts(conn, count: int, balance: int) -> tuple[int, list[int]]:
    """A new asset with ``count`` accounts holding ``balance`` each (opening transfers from its system account)."""
    asset = conn.execute("INSERT INTO assets (code, scale) VALUES (upper('S' || left(md5(random()::text), 10)), 0) RETURNING id"
                         ).fetchone()[0]
    system = conn.execute("INSERT INTO accounts (asset_id, name, is_system) VALUES (%s, 'System', true) RETURNING id",
                          (asset,)).fetchone()[0]
    ids = [row[0] for row in conn.execute(
        "INSERT INTO accounts (asset_id, balance) SELECT %s, 0 FROM generate_series(1, %s) RETURNING id",
        (asset, count)).fetchall()]
    conn.execute(CALL.format(function="apply_transfer_batch"),
                 {"froms": [system] * count, "tos": ids, "amounts": [balance] * count, "asset": asset})
    return asset, ids


def calls(conn, function: str) -> int:
    row = conn.execute("SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = %s", (function,)).fetchone()
    return row[0] if row else 0


def written(conn, ids: list[int]) -> tuple:
    """What a batch left on ``ids``: balances, and the entries and transfers in id order (without ids)."""
    return (
        conn.execute("SELECT id, balance FROM accounts WHERE id = ANY (%s) ORDER BY id", (ids,)).fetchall(),
        conn.execute("SELECT account_id, amount, balance_after, kind FROM ledger_entries WHERE account_id = ANY (%s) "
                     "AND transfer_id > (SELECT max(id) - %s FROM transfers) ORDER BY id", (ids, ITEMS)).fetchall(),
        conn.execute("SELECT from_account_id, to_account_id, amount, from_balance, to_balance, status FROM transfers "
                     "ORDER BY id DESC LIMIT %s", (ITEMS,)).fetchall()[::-1],
    )


def random_transfers(ids: list[int], seed: int) -> dict:
    rng = random.Random(seed)
    pairs = [rng.sample(ids, 2) for _ in range(ITEMS)]
    return {"froms": [a for a, _ in pairs], "tos": [b for _, b in pairs],
            "amounts": [rng.randint(1, 50) for _ in range(ITEMS)]}


def test_a_batch_whose_transfers_are_all_accepted_is_written_without_a_call_per_item(conn):
    asset, ids = funded_accounts(conn, 50, 100_000)
    rows = conn.execute(CALL.format(function="apply_transfer_batch"), {**random_transfers(ids, 1), "asset": asset}
                        ).fetchall()
    assert [row[1] for row in rows] == ["transferred"] * ITEMS
    assert (calls(conn, "transfer_funds"), calls(conn, "apply_transfer_batch_in_order")) == (0, 0)


def test_the_set_based_path_writes_exactly_what_item_by_item_writes(conn):
    asset, ids = funded_accounts(conn, 50, 100_000)
    transfers = {**random_transfers(ids, 2), "asset": asset}
    conn.execute("SAVEPOINT before")
    one_by_one = conn.execute(CALL.format(function="apply_transfer_batch_in_order"), transfers).fetchall()
    expected = written(conn, ids)
    conn.execute("ROLLBACK TO SAVEPOINT before")
    set_based = conn.execute(CALL.format(function="apply_transfer_batch"), transfers).fetchall()
    assert calls(conn, "transfer_funds") == ITEMS  # only the in-order run called it
    assert [row[1] for row in set_based] == [row[1] for row in one_by_one] == ["transferred"] * ITEMS
    assert written(conn, ids) == expected


def test_a_batch_with_one_refusal_is_applied_item_by_item(conn):
    asset, ids = funded_accounts(conn, 3, 10)
    a, b, c = ids
    rows = conn.execute(CALL.format(function="apply_transfer_batch"),
                        {"froms": [a, b, a], "tos": [b, c, c], "amounts": [5, 16, 1], "asset": asset}).fetchall()
    assert [row[1] for row in rows] == ["transferred", "insufficient_funds", "transferred"]
    assert calls(conn, "transfer_funds") == 3
    assert conn.execute("SELECT balance FROM accounts WHERE id = ANY (%s) ORDER BY id", (ids,)).fetchall() == [
        (4,), (15,), (11,)]


def test_the_set_based_path_counts_the_running_balance_in_item_order(conn):
    asset, ids = funded_accounts(conn, 3, 10)
    a, b, c = ids
    # b can pay 15 only after a's 5 arrived: accepted in this order, whatever the accounts' id order
    rows = conn.execute(CALL.format(function="apply_transfer_batch"),
                        {"froms": [a, b, c], "tos": [b, c, a], "amounts": [5, 15, 25], "asset": asset}).fetchall()
    assert [row[1] for row in rows] == ["transferred"] * 3
    assert calls(conn, "transfer_funds") == 0
    assert conn.execute("SELECT balance FROM accounts WHERE id = ANY (%s) ORDER BY id", (ids,)).fetchall() == [
        (30,), (0,), (0,)]
    assert conn.execute("SELECT account_id, balance_after FROM ledger_entries WHERE account_id = ANY (%s) "
                        "AND kind LIKE 'transfer_%%' ORDER BY id", (ids,)).fetchall()[-6:] == [
        (a, 5), (b, 15), (b, 0), (c, 25), (c, 0), (a, 30)]


def test_a_refused_item_whose_running_balances_would_not_fit_bigint_is_refused_not_an_error(conn):
    # found by the HTTP state machine: assuming the 2^63-1 accepted, b's running balance overflows
    asset, ids = funded_accounts(conn, 2, 10)
    a, b = ids
    rows = conn.execute(CALL.format(function="apply_transfer_batch"),
                        {"froms": [a, a, b], "tos": [b, b, a], "amounts": [1, 2**63 - 1, 1], "asset": asset}).fetchall()
    assert [row[1] for row in rows] == ["transferred", "insufficient_funds", "transferred"]
