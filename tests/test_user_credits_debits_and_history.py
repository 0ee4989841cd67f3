"""Accounts, credits and debits, and the ledger history."""

import json

import pytest

from tests.conftest import USER_ACCOUNT, database_fingerprint, ledger_state
from tests.ledger_api import send
from tests.seeded_users import chain_entries, seed_user


async def test_post_users_opens_a_user_with_balance_0_and_its_location(http):
    response = await send(http, "POST", "/api/users")
    status, body = response
    assert status == 201
    assert body["balance"] == 0
    assert response.headers["Location"] == f"/api/users/{body['userId']}"
    assert (await (await http.get(response.headers["Location"])).json())["balance"] == 0


async def test_post_users_accepts_an_empty_object(http):
    assert (await send(http, "POST", "/api/users", {}))[0] == 201


async def test_post_users_refuses_fields(http):
    status, body = await send(http, "POST", "/api/users", {"balance": 100})
    assert (status, body["code"]) == (422, "validation_error")


async def test_a_credit_adds_and_records_kind_and_description(http, new_user, db):
    user = new_user(10)
    status, body = await send(http, "POST", f"/api/users/{user}/credit", {"amount": 5, "description": "top-up"})
    assert (status, body["userId"], body["balance"]) == (200, user, 15)
    entry = db.execute("SELECT id, amount, balance_after, kind, description FROM ledger_entries WHERE id = %s",
                       (body["entryId"],)).fetchone()
    assert entry == (body["entryId"], 5, 15, "credit", "top-up")


async def test_a_debit_takes_and_records_a_negative_entry(http, new_user, db):
    user = new_user(10)
    status, body = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 4})
    assert (status, body["balance"]) == (200, 6)
    assert db.execute("SELECT amount, kind FROM ledger_entries WHERE id = %s", (body["entryId"],)).fetchone() == (-4, "debit")
    assert ledger_state(db, user) == (6, 2, 6)


async def test_a_debit_that_would_overdraw_is_409_and_changes_nothing(http, new_user, db):
    user = new_user(3)
    before = database_fingerprint(db)
    status, body = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 4})
    assert (status, body["code"]) == (409, "insufficient_funds")
    assert database_fingerprint(db) == before


async def test_a_credit_past_the_largest_balance_is_409_balance_overflow(http, new_user, db):
    user = new_user(2**63 - 1)
    before = database_fingerprint(db)
    status, body = await send(http, "POST", f"/api/users/{user}/credit", {"amount": 1})
    assert (status, body["code"]) == (409, "balance_overflow")
    assert database_fingerprint(db) == before


@pytest.mark.parametrize("route", ["credit", "debit"])
async def test_credit_and_debit_of_an_unknown_user_are_404(http, db, route):
    before = database_fingerprint(db)
    status, body = await send(http, "POST", f"/api/users/987654321/{route}", {"amount": 1})
    assert (status, body["code"]) == (404, "user_not_found")
    assert database_fingerprint(db) == before


BAD_CREDITS = {
    "zero": ({"amount": 0}, "amount"),
    "negative": ({"amount": -5}, "amount"),
    "fraction": ({"amount": 1.5}, "amount"),
    "string": ({"amount": "5"}, "amount"),
    "missing amount": ({"description": "x"}, "amount"),
    "unknown field": ({"amount": 5, "currency": "EUR"}, "currency"),
    "empty description": ({"amount": 5, "description": ""}, "description"),
    "description too long": ({"amount": 5, "description": "x" * 501}, "description"),
    "description with NUL": ({"amount": 5, "description": "a\u0000b"}, "description"),
    "description not a string": ({"amount": 5, "description": 7}, "description"),
}


@pytest.mark.parametrize("route", ["credit", "debit"])
@pytest.mark.parametrize("body, field", BAD_CREDITS.values(), ids=BAD_CREDITS.keys())
async def test_an_invalid_credit_or_debit_is_422_naming_the_field(http, new_user, db, route, body, field):
    user = new_user(100)
    before = database_fingerprint(db)
    status, problem = await send(http, "POST", f"/api/users/{user}/{route}", body)
    assert (status, problem["code"]) == (422, "validation_error")
    assert field in [error["field"] for error in problem["errors"]]
    assert database_fingerprint(db) == before


async def test_a_description_with_an_unpaired_surrogate_is_422(http, new_user, db):
    user = new_user(100)
    before = database_fingerprint(db)
    raw = b'{"amount": 5, "description": "a\\ud800b"}'
    response = await http.post(f"/api/users/{user}/credit", data=raw, headers={"Content-Type": "application/json"})
    assert (response.status, (await response.json(content_type=None))["code"]) == (422, "validation_error")
    assert database_fingerprint(db) == before


async def test_a_500_character_description_in_escapes_is_accepted(http, new_user):
    user = new_user(0)
    raw = json.dumps({"amount": 1, "description": "\U0001F600" * 500}).encode()  # ~6 KB of \uXXXX pairs
    response = await http.post(f"/api/users/{user}/credit", data=raw, headers={"Content-Type": "application/json"})
    assert response.status == 200


async def history(http, user, **query):
    response = await http.get(f"/api/users/{user}/history", params=query)
    return response.status, await response.json(content_type=None)


async def test_history_lists_entries_newest_first_with_all_fields(http, new_user):
    user = new_user(100)
    await send(http, "POST", f"/api/users/{user}/credit", {"amount": 7, "description": "gift"}, key="hist-1")
    await http.patch("/api/balance", json={"userId": user, "amount": -3})
    status, page = await history(http, user)
    assert status == 200 and page["userId"] == user and page["nextCursor"] is None
    kinds = [(e["kind"], e["amount"], e["balanceAfter"]) for e in page["entries"]]
    assert kinds == [("adjustment", -3, 104), ("credit", 7, 107), ("opening", 100, 100)]
    credit = page["entries"][1]
    assert (credit["description"], credit["idempotencyKey"]) == ("gift", "hist-1")
    assert all(isinstance(entry["transferId"], int) for entry in page["entries"])  # every change is a transfer
    assert page["entries"][0]["entryId"] > credit["entryId"] > page["entries"][2]["entryId"]


async def test_history_pages_through_every_entry_exactly_once(http, new_user):
    user = new_user(1)
    for _ in range(6):
        await http.patch("/api/balance", json={"userId": user, "amount": 1})
    seen, cursor, pages = [], None, 0
    while True:
        status, page = await history(http, user, limit=2, **({"cursor": cursor} if cursor else {}))
        assert status == 200 and len(page["entries"]) <= 2
        seen += [entry["entryId"] for entry in page["entries"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 4 and len(seen) == 7 and seen == sorted(seen, reverse=True) and len(set(seen)) == 7


async def test_history_of_a_user_without_entries_is_empty(http, new_user):
    user = new_user(0)
    assert await history(http, user) == (200, {"userId": user, "entries": [], "nextCursor": None})


async def test_history_of_an_unknown_user_is_404(http):
    status, body = await history(http, 987654321)
    assert (status, body["code"]) == (404, "user_not_found")


@pytest.mark.parametrize("query, field", [
    ({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"limit": "ten"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "AAAAAAAAAA="}, "cursor"), ({"page": 2}, "page"),
])
async def test_history_refuses_a_bad_limit_cursor_or_parameter(http, new_user, query, field):
    status, body = await history(http, new_user(1), **query)
    assert (status, body["code"]) == (422, "validation_error")
    assert field in [error["field"] for error in body["errors"]]


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_history_of_an_account_with_many_entries_reads_only_one_page_through_the_index(db):
    """EXPLAIN of the history query on a 100,000-entry account: an index scan of the account's
    entries that stops after the page (no Seq Scan, no Sort of the account)."""
    from server.ledger.history import READ_ENTRIES

    n = 100_000
    with db.transaction():  # n credits from the system account, as the service writes them (check still passes)
        user = seed_user(db, 0)
        account, system = db.execute(
            f"SELECT {USER_ACCOUNT}, (SELECT id FROM accounts WHERE is_system AND asset_id = 1)", (user,)).fetchone()
        db.execute("INSERT INTO transfers (asset_id, from_account_id, to_account_id, amount, code, to_balance) "
                   "SELECT 1, %s, %s, 1, 'credit', i FROM generate_series(1, %s) AS i", (system, account, n))
        db.execute("INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, hash) "
                   "SELECT %s, id, 1, to_balance, 'credit', '' FROM transfers WHERE to_account_id = %s ORDER BY id",
                   (account, account))
        chain_entries(db)
        db.execute("INSERT INTO events (position, type, asset_id, transfer_ids) SELECT feed_position_after(NULL), "
                   "'transfer.created', 1, array_agg(id ORDER BY id) FROM transfers WHERE to_account_id = %s",
                   (account,))
        db.execute("UPDATE accounts SET balance = %s WHERE id = %s", (n, account))
        db.execute("SELECT add_to_system_balances(ARRAY[1], ARRAY[-%s::bigint])", (n,))
    db.execute("ANALYZE ledger_entries")
    db.execute("ANALYZE transfers")
    query = READ_ENTRIES
    for number in range(6, 0, -1):
        query = query.replace(f"${number}", f"%(p{number})s")
    plan = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query,
                      {"p1": account, "p2": 2**63 - 1, "p3": None, "p4": None, "p5": None, "p6": 51}).fetchone()[0][0]
    scans = [node for node in _nodes(plan["Plan"]) if node.get("Relation Name") == "ledger_entries"]
    assert [scan["Node Type"] for scan in scans] == ["Index Scan"], json.dumps(plan)
    assert scans[0]["Actual Rows"] + scans[0].get("Rows Removed by Filter", 0) <= 51, json.dumps(plan)
    assert not any(node["Node Type"] in ("Seq Scan", "Sort") for node in _nodes(plan["Plan"])), json.dumps(plan)
