"""A system account's balance, stored in shards (server/ledger/sql/system_balances.sql, issue 23).

What it promises: the system account's balance, the asset's supply and the system account's
balance at any moment read what the transfer rows say, after every way of moving money to or from
a system account (credits, debits, PATCH, transfers either way, holds posted in part or voided,
batches, reversals); changes that run at once never wait for a shard (a held shard makes another
one); `balance-api check` names a shard or a history row changed by hand; and migration 0013
builds the shards of a ledger written before it, balances at past moments included.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import psycopg

from tests.ledger_api import account, credit, hold, new_account, new_asset, post, send, transfer, void
from tests.service_process import PROJECT_ROOT, assert_ledger_consistent, balance_api, service_env

# What the transfers say a system account's balance is (what moved in minus out), at a moment or now.
FROM_TRANSFERS = """
SELECT coalesce(sum(CASE WHEN t.to_account_id = a.id THEN 1 ELSE -1 END * coalesce(t.posted_amount, t.amount)), 0)
  FROM transfers t JOIN accounts a ON a.id = %(system)s AND a.id IN (t.from_account_id, t.to_account_id)
 WHERE t.status = 'posted' AND coalesce(t.resolved_at, t.created_at) <= %(at)s
"""


async def _asset_with_accounts(http, count: int) -> tuple[str, int, list[int]]:
    code = await new_asset(http)
    _, asset = await send(http, "GET", f"/api/assets/{code}")
    ids = [(await new_account(http, code, overdraftLimit=10**6))["accountId"] for _ in range(count)]
    return code, asset["systemAccountId"], ids


def _from_transfers(db: psycopg.Connection, system: int, at: dt.datetime | None = None) -> int:
    at = at or dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return int(db.execute(FROM_TRANSFERS, {"system": system, "at": at}).fetchone()[0])


async def _every_way_of_moving_money_to_or_from_the_system_account(http, code: str, system: int,
                                                                   ids: list[int]) -> None:
    a, b = ids
    assert (await credit(http, a, 500))[0] == 200
    assert (await send(http, "POST", f"/api/accounts/{b}/debit", {"amount": 30}))[0] == 200
    assert (await transfer(http, system, b, 70))[0] == 201
    assert (await transfer(http, a, system, 40))[0] == 201
    assert (await transfer(http, a, b, 25))[0] == 201  # not the system's: changes nothing of it
    status, held = await hold(http, a, system, 100)
    assert status == 201 and (await post(http, held["transferId"], 60))[0] == 200
    status, held = await hold(http, system, b, 80)
    assert status == 201 and (await void(http, held["transferId"]))[0] == 200
    status, made = await transfer(http, system, a, 15)
    assert (await send(http, "POST", f"/api/transfers/{made['transferId']}/reverse", {"amount": 5}))[0] == 201
    status, result = await send(http, "POST", "/api/transfers/batch", {"atomic": False, "transfers": [
        {"fromAccountId": system, "toAccountId": a, "amount": 9},
        {"fromAccountId": b, "toAccountId": system, "amount": 4},
        {"fromAccountId": a, "toAccountId": b, "amount": 1}]})
    assert status == 200 and [item["status"] for item in result["results"]] == [201, 201, 201]


async def test_the_system_balance_and_supply_are_what_the_transfers_say_after_every_way_of_moving_money(http, db):
    code, system, ids = await _asset_with_accounts(http, 2)
    await _every_way_of_moving_money_to_or_from_the_system_account(http, code, system, ids)
    expected = _from_transfers(db, system)
    assert expected != 0
    assert (await account(http, system))["balance"] == expected
    _, asset = await send(http, "GET", f"/api/assets/{code}")
    assert asset["supply"] == -expected == sum([(await account(http, x))["balance"] for x in ids])


async def test_the_system_balance_at_each_moment_is_what_the_transfers_made_by_then_say(http, db):
    _code, system, (a, b) = await _asset_with_accounts(http, 2)
    moments = []
    for amount in (11, 22, 33):
        assert (await credit(http, a, amount))[0] == 200
        assert (await transfer(http, b, system, amount + 1))[0] == 201
        await asyncio.sleep(0.01)
        moments.append(dt.datetime.now(dt.UTC))
        await asyncio.sleep(0.01)
    before = moments[0] - dt.timedelta(seconds=30)
    for moment in [before, *moments]:
        at = moment.isoformat().replace("+00:00", "Z")
        status, body = await send(http, "GET", f"/api/accounts/{system}/balance", at=at)
        assert (status, body["balance"]) == (200, _from_transfers(db, system, moment))
    assert [_from_transfers(db, system, m) for m in moments] == [1, 2, 3]  # each round: 1 more in than out


async def test_credits_that_run_at_once_never_wait_for_a_shard_a_held_shard_makes_another(http, db, database_url):
    _code, system, ids = await _asset_with_accounts(http, 1)
    assert (await credit(http, ids[0], 1))[0] == 200
    with psycopg.connect(database_url) as holder:  # someone holds every shard of the asset
        holder.execute("SELECT 1 FROM system_balance_shards b JOIN accounts a ON a.asset_id = b.asset_id "
                       "WHERE a.id = %s FOR UPDATE OF b", (system,))
        status, _ = await asyncio.wait_for(credit(http, ids[0], 2), timeout=5)  # not held up
        assert status == 200
        holder.rollback()
    shards = db.execute("SELECT count(*) FROM system_balance_shards b JOIN accounts a ON a.asset_id = b.asset_id "
                        "WHERE a.id = %s", (system,)).fetchone()[0]
    assert shards == 2
    assert (await account(http, system))["balance"] == -3 == _from_transfers(db, system)


async def test_200_simultaneous_credits_and_debits_of_200_accounts_leave_the_system_balance_exact(http, db,
                                                                                                   database_url):
    code, system, ids = await _asset_with_accounts(http, 200)
    moves = [credit(http, x, 7) if i % 2 else send(http, "POST", f"/api/accounts/{x}/debit", {"amount": 3})
             for i, x in enumerate(ids)]
    assert {status for status, _ in await asyncio.gather(*moves)} == {200}
    assert (await account(http, system))["balance"] == -(100 * 7) + 100 * 3 == _from_transfers(db, system)
    _, asset = await send(http, "GET", f"/api/assets/{code}")
    assert asset["supply"] == 400
    assert_ledger_consistent(database_url)


def _migrated(create_database) -> str:
    url = create_database()
    result = balance_api("migrate", env=service_env(database_url=url))
    assert result.returncode == 0, result.stderr
    return url


def test_check_names_a_shard_and_a_history_row_changed_by_hand(create_database):
    url = _migrated(create_database)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM apply_balance_changes(ARRAY[NULL]::bigint[], ARRAY[1]::bigint[], ARRAY[1], "
                     "ARRAY[500]::bigint[], ARRAY['credit'], ARRAY['credit'], ARRAY[NULL]::text[], "
                     "ARRAY[NULL]::text[])")
        assert_ledger_consistent(url)
        conn.execute("UPDATE system_balance_shards SET balance = balance + 1")
        result = balance_api("check", env=service_env(database_url=url))
        assert result.returncode == 1 and "system balance stored" in result.stdout
        assert "its history says" in result.stdout
        conn.execute("UPDATE system_balance_shards SET balance = balance - 1")
        conn.execute("UPDATE system_balance_changes SET balance_after = balance_after + 5")
        result = balance_api("check", env=service_env(database_url=url))
        assert result.returncode == 1 and "is not the running sum" in result.stdout


def test_migration_0013_builds_the_shards_of_a_ledger_written_before_it(create_database):
    url = _migrated(create_database)
    since = sum(1 for path in (PROJECT_ROOT / "migrations").glob("*.sql")  # 0013 and every later one
                if path.name[:4] >= "0013" and not path.stem.endswith(".rollback"))
    rollback = balance_api("migrate", "--rollback", str(since), env=service_env(database_url=url))
    assert rollback.returncode == 0 and "0013.system-balances" in rollback.stdout, rollback.stderr
    with psycopg.connect(url, autocommit=True) as conn:  # what the functions before 0013 wrote
        user_account, system = conn.execute(
            "SELECT (SELECT id FROM accounts WHERE user_id = 1), (SELECT id FROM accounts WHERE is_system "
            "AND asset_id = 1)").fetchone()
        rows = [  # (from, to, amount, status, posted amount, created_at, resolved_at)
            (system, user_account, 500, "posted", None, "2026-01-01T10:00Z", None),
            (user_account, system, 100, "posted", None, "2026-01-01T11:00Z", None),
            (user_account, system, 80, "posted", 50, "2026-01-01T12:00Z", "2026-01-01T14:00Z"),  # a hold, posted
            (user_account, system, 70, "voided", None, "2026-01-01T13:00Z", "2026-01-01T13:30Z"),
        ]
        for source, destination, amount, status, posted, created, resolved in rows:
            conn.execute("INSERT INTO transfers (asset_id, from_account_id, to_account_id, amount, code, status, "
                         "posted_amount, created_at, resolved_at, from_balance, to_balance) "
                         "VALUES (1, %s, %s, %s, 'legacy', %s, %s, %s, %s, NULL, NULL)",
                         (source, destination, amount, status, posted, created, resolved))
    assert balance_api("migrate", env=service_env(database_url=url)).returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        def balance_at(moment: str) -> int:
            return int(conn.execute(
                "SELECT coalesce(sum((SELECT c.balance_after FROM system_balance_changes c WHERE c.asset_id = 1 "
                "AND c.shard = b.shard AND c.at <= %s ORDER BY c.at DESC, c.number DESC LIMIT 1)), 0) "
                "FROM system_balance_shards b WHERE b.asset_id = 1", (moment,)).fetchone()[0])
        assert [balance_at(m) for m in ("2026-01-01T09:00Z", "2026-01-01T10:00Z", "2026-01-01T11:30Z",
                                        "2026-01-01T13:59Z", "2026-01-01T14:00Z")] == [0, -500, -400, -400, -350]
