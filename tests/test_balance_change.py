"""PATCH /api/balance: one signed change, applied atomically, recorded in the ledger."""

import asyncio
import random

from tests.conftest import USER_ACCOUNT, database_fingerprint, ledger_state

MAX_BIGINT = 2**63 - 1


async def patch_balance(http, user_id, amount):
    response = await http.patch("/api/balance", json={"userId": user_id, "amount": amount})
    return response.status, await response.json(content_type=None)


def balance_shown(result):
    """``(status, {"userId", "balance"})`` of a 200: the fields the route has always answered."""
    status, body = result
    return status, {"userId": body["userId"], "balance": body["balance"]}


async def test_a_debit_returns_the_new_balance(http, new_user):
    user = new_user(100)
    assert balance_shown(await patch_balance(http, user, -2)) == (200, {"userId": user, "balance": 98})


async def test_a_credit_returns_the_new_balance(http, new_user):
    user = new_user(100)
    assert balance_shown(await patch_balance(http, user, 250)) == (200, {"userId": user, "balance": 350})


async def test_an_accepted_change_writes_one_ledger_entry_with_the_balance_after(http, new_user, db):
    user = new_user(100)
    await patch_balance(http, user, -30)
    entry = db.execute(
        f"SELECT amount, balance_after, kind FROM ledger_entries WHERE account_id = {USER_ACCOUNT} ORDER BY id DESC LIMIT 1",
        (user,),
    ).fetchone()
    assert entry == (-30, 70, "adjustment")
    assert ledger_state(db, user) == (70, 2, 70)


async def test_a_change_is_a_transfer_with_the_system_account_and_answers_its_account_and_transfer(
        http, new_user, db):
    user = new_user(100)
    status, body = await patch_balance(http, user, -30)
    account = db.execute(USER_ACCOUNT, (user,)).fetchone()[0]
    system = db.execute("SELECT a.id FROM accounts a JOIN assets s ON s.id = a.asset_id AND s.is_default "
                        "WHERE a.is_system").fetchone()[0]
    assert (status, body["accountId"]) == (200, account)
    assert db.execute("SELECT from_account_id, to_account_id, amount, code, from_balance, to_balance FROM transfers "
                      "WHERE id = %s", (body["transferId"],)).fetchone() == (account, system, 30, "adjustment", 70, None)
    # the account's side has its entry; the system account has none (its row is never touched)
    assert db.execute("SELECT account_id, amount, balance_after FROM ledger_entries WHERE transfer_id = %s",
                      (body["transferId"],)).fetchall() == [(account, -30, 70)]


async def test_a_debit_may_take_the_balance_to_exactly_zero(http, new_user):
    user = new_user(10)
    assert balance_shown(await patch_balance(http, user, -10)) == (200, {"userId": user, "balance": 0})


async def test_a_debit_that_would_overdraw_is_refused_with_insufficient_funds(http, new_user, db):
    user = new_user(10)
    before = database_fingerprint(db)
    status, body = await patch_balance(http, user, -11)
    assert status == 409
    assert body["code"] == "insufficient_funds"
    assert body["userId"] == user and body["amount"] == -11
    assert database_fingerprint(db) == before


async def test_an_unknown_user_is_404_user_not_found(http, db):
    before = database_fingerprint(db)
    status, body = await patch_balance(http, 987654321, 5)
    assert (status, body["code"], body["userId"]) == (404, "user_not_found", 987654321)
    assert database_fingerprint(db) == before


async def test_a_credit_past_the_bigint_range_is_refused_with_balance_overflow(http, new_user, db):
    user = new_user(1)
    before = database_fingerprint(db)
    status, body = await patch_balance(http, user, MAX_BIGINT)
    assert (status, body["code"]) == (409, "balance_overflow")
    assert database_fingerprint(db) == before


async def test_the_largest_amounts_are_accepted_when_they_fit(http, new_user):
    user = new_user(0)
    assert balance_shown(await patch_balance(http, user, MAX_BIGINT)) == (200, {"userId": user, "balance": MAX_BIGINT})
    assert balance_shown(await patch_balance(http, user, -MAX_BIGINT)) == (200, {"userId": user, "balance": 0})


async def test_concurrent_credits_and_debits_keep_balance_equal_to_the_ledger_sum(http, new_user, db):
    user = new_user(500)
    amounts = [random.choice((-7, -3, 2, 5)) for _ in range(400)]
    results = await asyncio.gather(*(patch_balance(http, user, amount) for amount in amounts))
    assert {status for status, _ in results} <= {200, 409}
    assert all(body["code"] == "insufficient_funds" for status, body in results if status == 409)
    state = ledger_state(db, user)
    applied = sum(amount for amount, (status, _) in zip(amounts, results) if status == 200)
    assert state.balance == state.entries_sum == 500 + applied >= 0
    assert state.entries == 1 + sum(status == 200 for status, _ in results)
