"""Assets, accounts, limits, freeze and close, history and balances at a moment, transfer listings:
the ledger model's routes, each behaviour on its own (real service, real PostgreSQL)."""

import datetime as dt

import pytest

from tests.conftest import database_fingerprint
from tests.ledger_api import (
    balance,
    credit,
    new_account,
    new_asset,
    new_user,
    send,
    transfer,
)

# --- assets ---------------------------------------------------------------------------------


async def test_creating_an_asset_answers_it_with_its_system_account_and_location(http):
    status, body = await send(http, "POST", "/api/assets", {"code": "gold_coins_a", "scale": 0, "name": "Gold coins"})
    assert status == 201
    assert {k: body[k] for k in ("code", "scale", "name", "default")} == {
        "code": "gold_coins_a", "scale": 0, "name": "Gold coins", "default": False}
    status, system = await send(http, "GET", f"/api/accounts/{body['systemAccountId']}")
    assert (status, system["system"], system["asset"], system["balance"]) == (200, True, "gold_coins_a", 0)


async def test_an_existing_asset_code_is_409_asset_exists(http, db):
    code = await new_asset(http)
    before = database_fingerprint(db)
    status, body = await send(http, "POST", "/api/assets", {"code": code, "scale": 2})
    assert (status, body["code"]) == (409, "asset_exists")
    assert database_fingerprint(db) == before


@pytest.mark.parametrize("asset", [{"code": "has-dash", "scale": 0}, {"code": "x" * 33, "scale": 0},
                                   {"code": "ok", "scale": 19}, {"code": "ok", "scale": -1}, {"code": "ok"},
                                   {"code": "ok", "scale": 0, "extra": 1}])
async def test_an_invalid_asset_is_422(http, asset):
    status, body = await send(http, "POST", "/api/assets", asset)
    assert (status, body["code"]) == (422, "validation_error")


async def test_the_default_asset_is_listed_and_flagged(http):
    status, body = await send(http, "GET", "/api/assets")
    assert status == 200
    assert [asset["code"] for asset in body["assets"] if asset["default"]] == ["default"]


async def test_an_assets_supply_is_the_sum_of_its_non_system_balances(http):
    code = await new_asset(http)
    one, two = await new_account(http, code), await new_account(http, code)
    await credit(http, one["accountId"], 70)
    await credit(http, two["accountId"], 30)
    status, body = await send(http, "GET", f"/api/assets/{code}")
    assert (status, body["supply"]) == (200, 100)
    assert await balance(http, body["systemAccountId"]) == -100


async def test_an_unknown_asset_is_404_asset_not_found(http):
    status, body = await send(http, "GET", "/api/assets/no_such_asset")
    assert (status, body["code"]) == (404, "asset_not_found")


# --- accounts -------------------------------------------------------------------------------


async def test_opening_an_account_answers_every_field_with_its_location(http):
    code = await new_asset(http)
    user = await new_user(http)
    status, body = await send(http, "POST", "/api/accounts", {
        "asset": code, "userId": user, "name": "wallet", "overdraftLimit": 5, "maxBalance": 500,
        "metadata": {"tier": "gold"}})
    assert status == 201
    assert {k: body[k] for k in ("asset", "userId", "name", "system", "balance", "available", "overdraftLimit",
                                 "maxBalance", "status", "metadata")} == {
        "asset": code, "userId": user, "name": "wallet", "system": False, "balance": 0, "available": 0,
        "overdraftLimit": 5, "maxBalance": 500, "status": "open", "metadata": {"tier": "gold"}}
    assert (await send(http, "GET", f"/api/accounts/{body['accountId']}"))[1] == body


async def test_a_second_account_of_a_user_in_one_asset_is_409_account_exists_naming_it(http):
    code = await new_asset(http)
    user = await new_user(http)
    first = await new_account(http, code, userId=user)
    status, body = await send(http, "POST", "/api/accounts", {"asset": code, "userId": user})
    assert (status, body["code"], body["accountId"]) == (409, "account_exists", first["accountId"])


async def test_operator_accounts_have_no_user_and_may_be_many(http):
    code = await new_asset(http)
    fees, escrow = await new_account(http, code, name="fees"), await new_account(http, code, name="escrow")
    assert fees["userId"] is None and escrow["userId"] is None and fees["accountId"] != escrow["accountId"]


async def test_an_account_for_an_unknown_user_or_asset_is_404(http):
    status, body = await send(http, "POST", "/api/accounts", {"asset": "default", "userId": 987654321})
    assert (status, body["code"]) == (404, "user_not_found")
    status, body = await send(http, "POST", "/api/accounts", {"asset": "no_such_asset"})
    assert (status, body["code"]) == (404, "asset_not_found")


async def test_an_unknown_account_is_404_account_not_found(http):
    status, body = await send(http, "GET", "/api/accounts/987654321")
    assert (status, body["code"]) == (404, "account_not_found")


@pytest.mark.parametrize("metadata", [
    {f"k{i}": "v" for i in range(17)}, {"": "v"}, {"k" * 65: "v"}, {"k": "v" * 513}, {"k": 1}, {"k": None},
    {"k": {"nested": "v"}}, ["k"], "text", {"k": "nul\u0000"},
])
async def test_metadata_other_than_16_string_keys_to_short_strings_is_422(http, db, metadata):
    before = database_fingerprint(db)
    status, body = await send(http, "POST", "/api/accounts", {"asset": "default", "metadata": metadata})
    assert (status, body["code"]) == (422, "validation_error")
    assert database_fingerprint(db) == before


async def test_metadata_of_16_keys_at_the_length_limits_is_kept(http):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    account = await new_account(http, "default", metadata=metadata)
    assert account["metadata"] == metadata


async def test_patching_an_account_changes_only_what_is_given(http):
    account = await new_account(http, await new_asset(http), name="old", maxBalance=100, metadata={"a": "b"})
    status, body = await send(http, "PATCH", f"/api/accounts/{account['accountId']}", {"overdraftLimit": 50})
    assert status == 200
    assert (body["name"], body["overdraftLimit"], body["maxBalance"], body["metadata"]) == ("old", 50, 100, {"a": "b"})
    status, body = await send(http, "PATCH", f"/api/accounts/{account['accountId']}",
                              {"maxBalance": None, "name": "new", "metadata": {}})
    assert (status, body["name"], body["maxBalance"], body["metadata"]) == (200, "new", None, {})


async def test_a_limit_the_balance_already_breaks_is_409_limit_violated(http, db):
    account = await new_account(http, await new_asset(http))
    await credit(http, account["accountId"], 80)
    before = database_fingerprint(db)
    status, body = await send(http, "PATCH", f"/api/accounts/{account['accountId']}", {"maxBalance": 79})
    assert (status, body["code"], body["balance"]) == (409, "limit_violated", 80)
    assert database_fingerprint(db) == before


async def test_a_system_account_cannot_be_given_limits_frozen_or_closed(http):
    code = await new_asset(http)
    system = (await send(http, "GET", f"/api/assets/{code}"))[1]["systemAccountId"]
    for method, path, body in (("PATCH", "", {"overdraftLimit": 1}), ("POST", "/freeze", None),
                               ("POST", "/close", None)):
        status, problem = await send(http, method, f"/api/accounts/{system}{path}", body)
        assert (status, problem["code"]) == (422, "system_account"), path


# --- limits in transfers --------------------------------------------------------------------


async def test_an_overdraft_limit_lets_the_balance_go_that_far_below_zero_and_no_further(http):
    code = await new_asset(http)
    merchant, other = await new_account(http, code, overdraftLimit=100), await new_account(http, code)
    status, body = await transfer(http, merchant["accountId"], other["accountId"], 100)
    assert (status, body["fromBalance"]) == (201, -100)
    status, body = await transfer(http, merchant["accountId"], other["accountId"], 1)
    assert (status, body["code"], body["role"]) == (409, "insufficient_funds", "from")


async def test_a_transfer_past_the_receivers_max_balance_is_409_max_balance_exceeded(http, db):
    code = await new_asset(http)
    source, capped = await new_account(http, code), await new_account(http, code, maxBalance=50)
    await credit(http, source["accountId"], 100)
    assert (await transfer(http, source["accountId"], capped["accountId"], 50))[0] == 201
    before = database_fingerprint(db)
    status, body = await transfer(http, source["accountId"], capped["accountId"], 1)
    assert (status, body["code"], body["role"], body["accountId"]) == (
        409, "max_balance_exceeded", "to", capped["accountId"])
    assert database_fingerprint(db) == before


async def test_a_credit_past_max_balance_is_409_max_balance_exceeded(http):
    account = await new_account(http, await new_asset(http), maxBalance=10)
    status, body = await credit(http, account["accountId"], 11)
    assert (status, body["code"]) == (409, "max_balance_exceeded")


async def test_a_transfer_between_two_assets_is_422_asset_mismatch(http, db):
    one, two = await new_account(http, await new_asset(http)), await new_account(http, await new_asset(http))
    await credit(http, one["accountId"], 10)
    before = database_fingerprint(db)
    status, body = await transfer(http, one["accountId"], two["accountId"], 1)
    assert (status, body["code"]) == (422, "asset_mismatch")
    assert database_fingerprint(db) == before


async def test_a_transfer_to_the_same_account_is_422_same_account(http):
    account = await new_account(http, await new_asset(http))
    status, body = await transfer(http, account["accountId"], account["accountId"], 1)
    assert (status, body["code"]) == (422, "same_account")


async def test_a_transfer_naming_an_unknown_account_is_404_with_its_role(http):
    account = await new_account(http, await new_asset(http))
    status, body = await transfer(http, account["accountId"], 987654321, 1)
    assert (status, body["code"], body["role"]) == (404, "account_not_found", "to")
    status, body = await transfer(http, 987654321, account["accountId"], 1)
    assert (status, body["code"], body["role"]) == (404, "account_not_found", "from")


@pytest.mark.parametrize("fields", [
    {"fromAccountId": 1, "fromUserId": 1, "toAccountId": 2}, {"toAccountId": 2}, {"fromAccountId": 1},
    {"fromAccountId": 1, "toAccountId": 2, "asset": "default"}, {"fromAccountId": 1, "toAccountId": 2, "code": "Fee"},
])
async def test_a_transfer_must_name_each_side_exactly_once(http, fields):
    status, body = await send(http, "POST", "/api/transfers", {"amount": 1, **fields})
    assert (status, body["code"]) == (422, "validation_error")


async def test_a_transfer_from_a_system_account_mints_and_to_it_burns(http):
    code = await new_asset(http)
    system = (await send(http, "GET", f"/api/assets/{code}"))[1]["systemAccountId"]
    account = await new_account(http, code)
    status, body = await transfer(http, system, account["accountId"], 40, code="topup")
    assert (status, body["fromBalance"], body["toBalance"], body["code"]) == (201, None, 40, "topup")
    assert (await transfer(http, account["accountId"], system, 15, code="spend"))[0] == 201
    assert (await balance(http, system), await balance(http, account["accountId"])) == (-25, 25)


# --- freeze and close -----------------------------------------------------------------------


async def test_a_transfer_touching_a_frozen_account_is_409_account_frozen_with_its_role(http, db):
    code = await new_asset(http)
    one, two = await new_account(http, code), await new_account(http, code)
    await credit(http, one["accountId"], 10)
    await credit(http, two["accountId"], 10)
    status, frozen = await send(http, "POST", f"/api/accounts/{two['accountId']}/freeze")
    assert (status, frozen["status"]) == (200, "frozen")
    before = database_fingerprint(db)
    status, body = await transfer(http, one["accountId"], two["accountId"], 1)
    assert (status, body["code"], body["role"]) == (409, "account_frozen", "to")
    status, body = await transfer(http, two["accountId"], one["accountId"], 1)
    assert (status, body["code"], body["role"]) == (409, "account_frozen", "from")
    status, body = await credit(http, two["accountId"], 1)
    assert (status, body["code"]) == (409, "account_frozen")
    assert database_fingerprint(db) == before


async def test_unfreezing_lets_transfers_through_again(http):
    code = await new_asset(http)
    account = await new_account(http, code)
    await send(http, "POST", f"/api/accounts/{account['accountId']}/freeze")
    status, body = await send(http, "POST", f"/api/accounts/{account['accountId']}/unfreeze")
    assert (status, body["status"]) == (200, "open")
    assert (await credit(http, account["accountId"], 5))[0] == 200


async def test_closing_needs_a_zero_balance_409_account_not_empty(http):
    account = await new_account(http, await new_asset(http))
    await credit(http, account["accountId"], 5)
    status, body = await send(http, "POST", f"/api/accounts/{account['accountId']}/close")
    assert (status, body["code"], body["balance"]) == (409, "account_not_empty", 5)


async def test_closed_is_final_and_refuses_every_transfer(http):
    code = await new_asset(http)
    account, other = await new_account(http, code), await new_account(http, code)
    status, body = await send(http, "POST", f"/api/accounts/{account['accountId']}/close")
    assert (status, body["status"]) == (200, "closed")
    for action in ("unfreeze", "freeze", "close"):
        status, body = await send(http, "POST", f"/api/accounts/{account['accountId']}/{action}")
        assert (status, body["code"]) == (409, "account_closed"), action
    status, body = await transfer(http, other["accountId"], account["accountId"], 1)
    assert (status, body["code"], body["role"]) == (409, "account_closed", "to")


# --- users across assets --------------------------------------------------------------------


async def test_a_credit_to_a_user_in_another_asset_opens_the_account(http):
    code = await new_asset(http)
    user = await new_user(http)
    status, body = await send(http, "POST", f"/api/users/{user}/credit", {"amount": 9, "asset": code, "code": "bonus"})
    assert (status, body["balance"]) == (200, 9)
    status, shown = await send(http, "GET", f"/api/users/{user}")
    assert sorted((a["asset"], a["balance"]) for a in shown["accounts"]) == sorted([("default", 0), (code, 9)])
    assert shown["balance"] == 0  # the default asset's


async def test_a_debit_or_patch_of_a_user_without_an_account_in_that_asset_is_404_account_not_found(http):
    code = await new_asset(http)
    user = await new_user(http)
    status, body = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 1, "asset": code})
    assert (status, body["code"]) == (404, "account_not_found")
    status, body = await send(http, "PATCH", "/api/balance", {"userId": user, "amount": 1, "asset": code})
    assert (status, body["code"]) == (404, "account_not_found")


async def test_a_transfer_between_users_in_a_named_asset_uses_their_accounts_in_it(http):
    code = await new_asset(http)
    alice, bob = await new_user(http), await new_user(http)
    await send(http, "POST", f"/api/users/{alice}/credit", {"amount": 20, "asset": code})
    await send(http, "POST", f"/api/users/{bob}/credit", {"amount": 1, "asset": code})
    status, body = await send(http, "POST", "/api/transfers",
                              {"fromUserId": alice, "toUserId": bob, "amount": 5, "asset": code})
    assert (status, body["asset"], body["fromUserId"], body["toUserId"], body["fromBalance"], body["toBalance"]) == (
        201, code, alice, bob, 15, 6)


# --- history, balance at a moment, transfer listings ---------------------------------------


async def test_account_history_shows_signed_entries_with_counterparty_code_and_metadata(http):
    code = await new_asset(http)
    one, two = await new_account(http, code), await new_account(http, code)
    await credit(http, one["accountId"], 50, code="topup")
    await transfer(http, one["accountId"], two["accountId"], 20, code="fee", description="platform",
                   metadata={"order": "7"})
    status, page = await send(http, "GET", f"/api/accounts/{one['accountId']}/history")
    assert status == 200 and page["accountId"] == one["accountId"] and page["nextCursor"] is None
    newest, oldest = page["entries"]
    assert (newest["amount"], newest["balanceAfter"], newest["counterpartyAccountId"], newest["code"],
            newest["description"], newest["metadata"]) == (-20, 30, two["accountId"], "fee", "platform", {"order": "7"})
    assert (oldest["amount"], oldest["balanceAfter"], oldest["code"]) == (50, 50, "topup")


async def test_account_history_filters_by_code_and_time_and_pages_by_cursor(http):
    code = await new_asset(http)
    account = await new_account(http, code)
    for _ in range(3):
        await credit(http, account["accountId"], 1, code="fee")
        await credit(http, account["accountId"], 1, code="bonus")
    status, page = await send(http, "GET", f"/api/accounts/{account['accountId']}/history", code="fee", limit="2")
    assert status == 200 and [e["code"] for e in page["entries"]] == ["fee", "fee"] and page["nextCursor"]
    status, rest = await send(http, "GET", f"/api/accounts/{account['accountId']}/history", code="fee",
                              cursor=page["nextCursor"])
    assert len(rest["entries"]) == 1 and rest["nextCursor"] is None
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    status, none = await send(http, "GET", f"/api/accounts/{account['accountId']}/history", **{"from": future})
    assert (status, none["entries"]) == (200, [])
    status, everything = await send(http, "GET", f"/api/accounts/{account['accountId']}/history", to=future)
    assert len(everything["entries"]) == 6


@pytest.mark.parametrize("query", [{"from": "yesterday"}, {"to": "2026-11-01"}, {"from": "2026-11-01T00:00:00"},
                                   {"code": "Fee"}, {"at": "now"}])
async def test_account_history_refuses_bad_filters(http, query):
    account = await new_account(http, "default")
    status, body = await send(http, "GET", f"/api/accounts/{account['accountId']}/history", **query)
    assert (status, body["code"]) == (422, "validation_error")


async def test_the_balance_at_a_moment_is_the_one_right_after_the_last_change_before_it(http):
    account = await new_account(http, await new_asset(http))
    _, first = await credit(http, account["accountId"], 10)
    _, shown = await send(http, "GET", f"/api/transfers/{first['transferId']}")
    await credit(http, account["accountId"], 5)
    path = f"/api/accounts/{account['accountId']}/balance"
    assert (await send(http, "GET", path, at="2000-01-01T00:00:00Z"))[1]["balance"] == 0
    status, at_first = await send(http, "GET", path, at=shown["createdAt"])
    assert (status, at_first["balance"], at_first["asset"]) == (200, 10, account["asset"])
    assert (await send(http, "GET", path))[1]["balance"] == 15


async def test_a_system_accounts_balance_at_a_moment_is_the_sum_of_its_entries_until_then(http):
    code = await new_asset(http)
    system = (await send(http, "GET", f"/api/assets/{code}"))[1]["systemAccountId"]
    await credit(http, (await new_account(http, code))["accountId"], 12)
    assert (await send(http, "GET", f"/api/accounts/{system}/balance"))[1]["balance"] == -12
    assert (await send(http, "GET", f"/api/accounts/{system}/balance", at="2000-01-01T00:00:00Z"))[1]["balance"] == 0


async def test_transfers_are_listed_newest_first_by_account_and_code(http):
    code = await new_asset(http)
    one, two = await new_account(http, code), await new_account(http, code)
    await credit(http, one["accountId"], 10, code="topup")
    _, fee = await transfer(http, one["accountId"], two["accountId"], 3, code="fee")
    _, gift = await transfer(http, one["accountId"], two["accountId"], 2, code="gift")
    status, page = await send(http, "GET", "/api/transfers", accountId=str(two["accountId"]))
    assert status == 200 and [t["transferId"] for t in page["transfers"]] == [gift["transferId"], fee["transferId"]]
    status, page = await send(http, "GET", "/api/transfers", code="fee", limit="1")
    assert page["transfers"][0]["code"] == "fee" and page["transfers"][0]["transferId"] == fee["transferId"]


async def test_listing_the_transfers_of_an_unknown_account_is_404(http):
    status, body = await send(http, "GET", "/api/transfers", accountId="987654321")
    assert (status, body["code"]) == (404, "account_not_found")


# --- I-JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, body", [
    ("PATCH", "/api/balance", b'{"userId": 1, "amount": 5, "amount": -99999}'),
    ("POST", "/api/users/1/credit", b'{"amount": 5, "amount": 7}'),
    ("POST", "/api/accounts", b'{"asset": "default", "asset": "other"}'),
    ("POST", "/api/assets", b'{"code": "dup_a", "scale": 0, "scale": 1}'),
    ("POST", "/api/transfers", b'{"fromUserId": 1, "toUserId": 2, "amount": 1, "metadata": {"k": "a", "k": "b"}}'),
])
async def test_a_body_repeating_a_member_name_is_400_malformed_json_and_changes_nothing(http, db, method, path, body):
    before = database_fingerprint(db)
    async with http.request(method, path, data=body, headers={"Content-Type": "application/json"}) as response:
        problem = await response.json(content_type=None)
    assert (response.status, problem["code"]) == (400, "malformed_json")
    assert "more than once" in problem["detail"]
    assert database_fingerprint(db) == before
