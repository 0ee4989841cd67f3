"""apply_transfer_batch() (server/ledger/sql/transfer_batches.sql): a batch of 6 or more plain transfers that are all
accepted is written set-based, without one transfer_funds() call per item, and writes exactly what applying
the items one at a time (apply_transfer_batch_in_order()) writes; any other batch
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
                  array_fill(NULL::bigint, ARRAY[cardinality(%(froms)s::bigint[])]),
                  array_fill(NULL::text, ARRAY[cardinality(%(froms)s::bigint[])]))
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
    """A new asset with ``count`` accounts holding ``balance`` each (opening transfers from its system
    account); the function calls it took are not counted (:func:`calls`)."""
    asset = conn.execute("INSERT INTO assets (code, scale) VALUES (upper('S' || left(md5(random()::text), 10)), 0) RETURNING id"
                         ).fetchone()[0]
    system = conn.execute("INSERT INTO accounts (asset_id, name, is_system) VALUES (%s, 'System', true) RETURNING id",
                          (asset,)).fetchone()[0]
    ids = [row[0] for row in conn.execute(
        "INSERT INTO accounts (asset_id, balance) SELECT %s, 0 FROM generate_series(1, %s) RETURNING id",
        (asset, count)).fetchall()]
    conn.execute(CALL.format(function="apply_transfer_batch"),
                 {"froms": [system] * count, "tos": ids, "amounts": [balance] * count, "asset": asset})
    _funding_calls[id(conn)] = {name: _calls(conn, name) for name in ("transfer_funds", "apply_transfer_batch_in_order")}
    return asset, ids


_funding_calls: dict[int, dict[str, int]] = {}  # connection -> calls made funding its accounts


def _calls(conn, function: str) -> int:
    row = conn.execute("SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = %s", (function,)).fetchone()
    return row[0] if row else 0


def calls(conn, function: str) -> int:
    """Calls of ``function`` in this transaction since the accounts were funded."""
    return _calls(conn, function) - _funding_calls.get(id(conn), {}).get(function, 0)


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


# six transfers of 1 between two other accounts, to make a batch long enough for the set-based path
def padded(asset: int, ids: list[int], froms: list[int], tos: list[int], amounts: list[int]) -> dict:
    x, y = ids[-2:]
    return {"froms": froms + [x] * 6, "tos": tos + [y] * 6, "amounts": amounts + [1] * 6, "asset": asset}


def test_a_batch_with_one_refusal_is_applied_item_by_item(conn):
    asset, ids = funded_accounts(conn, 5, 10)
    a, b, c = ids[:3]
    rows = conn.execute(CALL.format(function="apply_transfer_batch"),
                        padded(asset, ids, [a, b, a], [b, c, a], [5, 16, 1])).fetchall()
    assert [row[1] for row in rows] == ["transferred", "insufficient_funds", "same_account"] + ["transferred"] * 6
    assert calls(conn, "transfer_funds") == 9
    assert conn.execute("SELECT balance FROM accounts WHERE id = ANY (%s) ORDER BY id", (ids,)).fetchall() == [
        (5,), (15,), (10,), (4,), (16,)]


def test_a_batch_with_a_transfer_between_two_assets_is_applied_item_by_item(conn):
    asset, ids = funded_accounts(conn, 3, 10)
    _, (other,) = funded_accounts(conn, 1, 10)
    rows = conn.execute(CALL.format(function="apply_transfer_batch"),
                        padded(asset, ids, [ids[0]], [other], [1])).fetchall()
    assert [row[1] for row in rows] == ["asset_mismatch"] + ["transferred"] * 6
    assert calls(conn, "transfer_funds") == 7


def test_a_batch_of_fewer_than_6_items_is_applied_item_by_item(conn):
    asset, ids = funded_accounts(conn, 2, 10)
    rows = conn.execute(CALL.format(function="apply_transfer_batch"),
                        {"froms": ids[:1] * 5, "tos": ids[1:] * 5, "amounts": [1] * 5, "asset": asset}).fetchall()
    assert [row[1] for row in rows] == ["transferred"] * 5
    assert calls(conn, "transfer_funds") == 5


def test_the_set_based_path_counts_the_running_balance_in_item_order(conn):
    asset, ids = funded_accounts(conn, 5, 10)
    a, b, c = ids[:3]
    # b can pay 15 only after a's 5 arrived: accepted in this order, whatever the accounts' id order
    rows = conn.execute(CALL.format(function="apply_transfer_batch"),
                        padded(asset, ids, [a, b, c], [b, c, a], [5, 15, 25])).fetchall()
    assert [row[1] for row in rows] == ["transferred"] * 9
    assert calls(conn, "transfer_funds") == 0
    assert conn.execute("SELECT balance FROM accounts WHERE id = ANY (%s) ORDER BY id", (ids[:3],)).fetchall() == [
        (30,), (0,), (0,)]
    assert conn.execute("SELECT account_id, balance_after FROM ledger_entries WHERE account_id = ANY (%s) "
                        "AND kind LIKE 'transfer_%%' ORDER BY id", (ids[:3],)).fetchall()[-6:] == [
        (a, 5), (b, 15), (b, 0), (c, 25), (c, 0), (a, 30)]


def test_a_refused_item_whose_running_balances_would_not_fit_bigint_is_refused_not_an_error(conn):
    # found by the HTTP state machine: assuming the 2^63-1 accepted, b's running balance overflows
    asset, ids = funded_accounts(conn, 4, 10)
    a, b = ids[:2]
    rows = conn.execute(CALL.format(function="apply_transfer_batch"),
                        padded(asset, ids, [a, a, b], [b, b, a], [1, 2**63 - 1, 1])).fetchall()
    assert [row[1] for row in rows] == ["transferred", "insufficient_funds"] + ["transferred"] * 7
