"""Tamper-evident account histories: every ledger entry's hash is the SHA-256 of its account's
previous entry's hash and its own content, whichever route wrote it; the account shows the head;
a migrated database gets the same chains; and `balance-api check` names the first entry of an
account that was edited, deleted or moved with plain SQL (server/ledger/sql/entry_hashes.sql).

The hash is recomputed here independently of the SQL (tests/seeded_users.py ``chained``).
"""

import psycopg

from tests.ledger_api import account, credit, funded_pair, hold, new_account, new_asset, post, send, transfer, void
from tests.seeded_users import chained
from tests.service_process import PROJECT_ROOT, balance_api, service_env

SEEDED_ACCOUNT = 2  # user 1's account, 10000 from the migrations


def stored_chain(db: psycopg.Connection, account_id: int) -> tuple[list[tuple[int, int, int, int]], list[bytes]]:
    rows = db.execute("SELECT account_id, transfer_id, amount, balance_after, hash FROM ledger_entries"
                      " WHERE account_id = %s ORDER BY id", (account_id,)).fetchall()
    return [row[:4] for row in rows], [bytes(row[4]) for row in rows]


async def assert_chained(http, db: psycopg.Connection, account_id: int, entries: int) -> None:
    """Account ``account_id`` has ``entries`` entries, each hashed on its predecessor, and shows the last one's
    hash as its headHash."""
    content, hashes = stored_chain(db, account_id)
    assert len(content) == entries
    assert hashes == chained(content)
    assert (await account(http, account_id))["headHash"] == hashes[-1].hex()


def check(url: str):
    return balance_api("check", env=service_env(database_url=url))


def migrated_with_entries(create_database) -> str:
    """A fresh database whose seeded account has five entries (the seed's and four debits of 1-4)."""
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM apply_balance_changes(%s, ARRAY[NULL, NULL, NULL, NULL]::bigint[],"
                     " ARRAY[NULL, NULL, NULL, NULL]::integer[], ARRAY[-1, -2, -3, -4]::bigint[],"
                     " ARRAY['adjustment', 'adjustment', 'adjustment', 'adjustment'],"
                     " ARRAY['adjustment', 'adjustment', 'adjustment', 'adjustment'], ARRAY[NULL, NULL, NULL, NULL]::text[],"
                     " ARRAY[NULL, NULL, NULL, NULL]::text[])", ([SEEDED_ACCOUNT] * 4,))
    return url


def entry_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM ledger_entries WHERE account_id = %s ORDER BY id",
                                               (SEEDED_ACCOUNT,))]


async def test_balance_changes_chain_each_entry_to_the_accounts_previous_one(http, db):
    asset = await new_asset(http)
    target = (await new_account(http, asset))["accountId"]
    for amount in (5, 7, 11):
        assert (await credit(http, target, amount))[0] == 200
    assert (await send(http, "POST", f"/api/accounts/{target}/debit", {"amount": 3}))[0] == 200
    await assert_chained(http, db, target, 4)


async def test_a_user_balance_change_extends_the_users_chain(http, db, new_user):
    user = new_user(100)
    account_id = db.execute("SELECT id FROM accounts WHERE user_id = %s", (user,)).fetchone()[0]
    entries = len(stored_chain(db, account_id)[0])
    assert (await send(http, "PATCH", "/api/balance", {"userId": user, "amount": -2}))[0] == 200
    await assert_chained(http, db, account_id, entries + 1)


async def test_a_transfer_chains_both_sides(http, db):
    source, destination = await funded_pair(http, 100)
    assert (await transfer(http, source, destination, 40))[0] == 201
    assert (await transfer(http, destination, source, 15))[0] == 201
    await assert_chained(http, db, source, 3)
    await assert_chained(http, db, destination, 2)


async def test_a_posted_hold_chains_the_entries_it_writes_and_a_void_leaves_the_head_as_it_was(http, db):
    source, destination = await funded_pair(http, 100)
    _, posted = await hold(http, source, destination, 30)
    assert (await post(http, posted["transferId"], 20))[0] == 200
    head = (await account(http, source))["headHash"]
    _, voided = await hold(http, source, destination, 10)
    assert (await void(http, voided["transferId"]))[0] == 200
    assert (await account(http, source))["headHash"] == head
    await assert_chained(http, db, source, 2)
    await assert_chained(http, db, destination, 1)


async def test_a_reversal_chains_its_entries(http, db):
    source, destination = await funded_pair(http, 100)
    _, made = await transfer(http, source, destination, 40)
    assert (await send(http, "POST", f"/api/transfers/{made['transferId']}/reverse", {"amount": 10}))[0] == 201
    await assert_chained(http, db, source, 3)
    await assert_chained(http, db, destination, 2)


async def test_a_set_based_batch_chains_each_accounts_entries_in_item_order(http, db):
    asset = await new_asset(http)
    first, second, third = [(await new_account(http, asset))["accountId"] for _ in range(3)]
    for funded in (first, second, third):
        await credit(http, funded, 1000)
    legs = [(first, second), (second, third), (first, third), (third, first), (first, second), (second, first),
            (first, third), (third, second)]  # plain transfers that all pass: the set-based path
    items = [{"fromAccountId": a, "toAccountId": b, "amount": 10 + i} for i, (a, b) in enumerate(legs)]
    status, body = await send(http, "POST", "/api/transfers/batch", {"atomic": False, "transfers": items})
    assert status == 200 and all(item["status"] == 201 for item in body["results"])
    await assert_chained(http, db, first, 1 + 6)
    await assert_chained(http, db, second, 1 + 5)
    await assert_chained(http, db, third, 1 + 5)


async def test_a_batch_applied_item_by_item_chains_as_the_set_based_one(http, db):
    source, destination = await funded_pair(http, 100)
    items = [{"fromAccountId": source, "toAccountId": destination, "amount": 5},
             {"fromAccountId": source, "toAccountId": destination, "amount": 500},  # refused: one item at a time
             {"fromAccountId": destination, "toAccountId": source, "amount": 2, "pending": True}]
    status, body = await send(http, "POST", "/api/transfers/batch", {"atomic": False, "transfers": items})
    assert status == 200 and [item["status"] for item in body["results"]] == [201, 409, 201]
    await assert_chained(http, db, source, 2)
    await assert_chained(http, db, destination, 1)  # the hold writes no entry until posted


async def test_an_account_without_entries_and_a_system_account_have_no_head_hash(http):
    asset = await new_asset(http)
    created = await new_account(http, asset)
    assert created["headHash"] is None
    _, assets = await send(http, "GET", "/api/assets")
    system = next(a for a in assets["assets"] if a["code"] == asset)["systemAccountId"]
    await credit(http, created["accountId"], 5)
    assert (await account(http, system))["headHash"] is None


def test_the_migration_chains_the_entries_made_before_it_as_the_service_would(create_database):
    url = migrated_with_entries(create_database)
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT id, hash FROM ledger_entries ORDER BY id").fetchall()
        head = conn.execute("SELECT head_hash FROM accounts WHERE id = %s", (SEEDED_ACCOUNT,)).fetchone()
    since = sum(1 for path in (PROJECT_ROOT / "migrations").glob("*.sql")  # 0017 and every later one
                if path.name[:4] >= "0017" and not path.stem.endswith(".rollback"))
    rollback = balance_api("migrate", "--rollback", str(since), env=service_env(database_url=url))
    assert rollback.returncode == 0 and "0017.entry-hash-chains" in rollback.stdout, rollback.stderr
    assert balance_api("migrate", env=service_env(database_url=url)).returncode == 0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id, hash FROM ledger_entries ORDER BY id").fetchall() == before
        assert conn.execute("SELECT head_hash FROM accounts WHERE id = %s", (SEEDED_ACCOUNT,)).fetchone() == head
        content, hashes = stored_chain(conn, SEEDED_ACCOUNT)
    assert len(hashes) == 5 and hashes == chained(content)
    assert check(url).returncode == 0


def test_check_names_an_entry_whose_amount_was_edited(create_database):
    url = migrated_with_entries(create_database)
    edited = entry_ids(url)[2]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE ledger_entries SET amount = amount - 1 WHERE id = %s", (edited,))
    result = check(url)
    assert result.returncode == 1 and "FAIL entry hashes" in result.stdout
    assert f"account {SEEDED_ACCOUNT}: entry {edited} does not match its hash chain" in result.stdout


def test_check_names_an_entry_whose_amount_and_balances_were_all_made_to_agree(create_database):
    url = migrated_with_entries(create_database)
    edited = entry_ids(url)[1]  # the debit of 1 made one of 2: every later balance_after and the balance follow
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE ledger_entries SET amount = amount - 1 WHERE id = %s", (edited,))
        conn.execute("UPDATE ledger_entries SET balance_after = balance_after - 1 WHERE account_id = %s AND id >= %s",
                     (SEEDED_ACCOUNT, edited))
        conn.execute("UPDATE transfers SET amount = amount + 1, from_balance = from_balance - 1"
                     " WHERE id = (SELECT transfer_id FROM ledger_entries WHERE id = %s)", (edited,))
        conn.execute("UPDATE transfers t SET from_balance = e.balance_after FROM ledger_entries e"
                     " WHERE e.transfer_id = t.id AND e.account_id = %s AND e.id > %s", (SEEDED_ACCOUNT, edited))
        conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = %s", (SEEDED_ACCOUNT,))
    result = check(url)
    assert "FAIL entry hashes" in result.stdout
    assert f"account {SEEDED_ACCOUNT}: entry {edited} does not match its hash chain" in result.stdout
    for name in ("conservation", "balance = sum of entries", "balance_after chain", "transfers balanced"):
        assert f"PASS {name}" in result.stdout


def test_check_names_the_entry_after_one_that_was_deleted(create_database):
    url = migrated_with_entries(create_database)
    ids = entry_ids(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM ledger_entries WHERE id = %s", (ids[2],))
    result = check(url)
    assert "FAIL entry hashes" in result.stdout
    assert f"account {SEEDED_ACCOUNT}: entry {ids[3]} does not match its hash chain" in result.stdout


def test_check_names_an_account_whose_last_entry_was_deleted(create_database):
    url = migrated_with_entries(create_database)
    ids = entry_ids(url)
    with psycopg.connect(url, autocommit=True) as conn:
        last = conn.execute("DELETE FROM ledger_entries WHERE id = %s RETURNING encode(hash, 'hex')",
                            (ids[-1],)).fetchone()[0]
        previous = conn.execute("SELECT encode(hash, 'hex') FROM ledger_entries WHERE id = %s", (ids[-2],)).fetchone()[0]
    result = check(url)
    assert "FAIL entry hashes" in result.stdout
    assert f"account {SEEDED_ACCOUNT}: head hash {last}, its last entry ({ids[-2]}) has {previous}" in result.stdout


def test_check_names_the_first_of_two_entries_that_were_swapped(create_database):
    url = migrated_with_entries(create_database)
    ids = entry_ids(url)
    with psycopg.connect(url, autocommit=True) as conn:  # ids are identities: the two rows swap all else
        conn.execute("UPDATE ledger_entries e SET transfer_id = o.transfer_id, amount = o.amount,"
                     " balance_after = o.balance_after, kind = o.kind, description = o.description,"
                     " idempotency_key = o.idempotency_key, created_at = o.created_at, hash = o.hash"
                     "  FROM ledger_entries o WHERE (e.id, o.id) IN ((%s, %s), (%s, %s))", (ids[1], ids[3], ids[3], ids[1]))
    result = check(url)
    assert "FAIL entry hashes" in result.stdout
    assert f"account {SEEDED_ACCOUNT}: entry {ids[1]} does not match its hash chain" in result.stdout
