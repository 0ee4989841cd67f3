"""End-to-end stories through the real service: a game economy, a marketplace and a checkout. (The
upgrade story, a database of a database made by the earlier migrations, is in tests/test_migrations.py.)"""

import datetime as dt

from tests.ledger_api import balance, new_account, new_user, send, transfer
from tests.service_process import balance_api, service_env


async def test_a_game_economy_with_two_assets_treasury_top_ups_spends_bonuses_and_a_frozen_cheater(
        http, database_url):
    suffix = dt.datetime.now().strftime("%H%M%S%f")
    gold, diamonds = f"gold_{suffix}", f"diamonds_{suffix}"
    for code in (gold, diamonds):
        assert (await send(http, "POST", "/api/assets", {"code": code, "scale": 0}))[0] == 201
    alice, cheater = await new_user(http), await new_user(http)

    async def top_up(user, asset, amount, why="topup"):
        status, body = await send(http, "POST", f"/api/users/{user}/credit",
                                  {"amount": amount, "asset": asset, "code": why})
        assert status == 200, body
        return body

    await top_up(alice, gold, 500)
    await top_up(alice, diamonds, 3)
    await top_up(alice, gold, 50, "bonus")
    cheater_gold = (await top_up(cheater, gold, 1000))["accountId"]
    status, spent = await send(http, "POST", f"/api/users/{alice}/debit", {"amount": 120, "asset": gold, "code": "spend"})
    assert (status, spent["balance"]) == (200, 430)
    status, body = await send(http, "POST", f"/api/users/{alice}/debit", {"amount": 4, "asset": diamonds})
    assert (status, body["code"]) == (409, "insufficient_funds")

    # the cheater is frozen: nothing moves in or out, and his coins stay where they are
    assert (await send(http, "POST", f"/api/accounts/{cheater_gold}/freeze"))[0] == 200
    status, body = await send(http, "POST", "/api/transfers",
                              {"fromUserId": cheater, "toUserId": alice, "amount": 100, "asset": gold})
    assert (status, body["code"], body["role"]) == (409, "account_frozen", "from")
    status, body = await send(http, "POST", f"/api/users/{cheater}/credit", {"amount": 1, "asset": gold})
    assert (status, body["code"]) == (409, "account_frozen")

    status, alice_user = await send(http, "GET", f"/api/users/{alice}")
    assert {a["asset"]: a["balance"] for a in alice_user["accounts"]} == {"default": 0, gold: 430, diamonds: 3}
    status, gold_asset = await send(http, "GET", f"/api/assets/{gold}")
    assert gold_asset["supply"] == 430 + 1000
    assert await balance(http, gold_asset["systemAccountId"]) == -(430 + 1000)  # conservation
    alice_gold = next(a["accountId"] for a in alice_user["accounts"] if a["asset"] == gold)
    status, bonuses = await send(http, "GET", f"/api/accounts/{alice_gold}/history", code="bonus")
    assert [(e["amount"], e["code"]) for e in bonuses["entries"]] == [(50, "bonus")]
    assert balance_api("check", env=service_env(database_url=database_url)).returncode == 0


async def test_a_marketplace_with_a_fee_account_and_an_overdraft_limited_merchant(http, database_url):
    usd = f"USD{dt.datetime.now().strftime('%H%M%S%f')}"
    status, asset = await send(http, "POST", "/api/assets", {"code": usd, "scale": 2, "name": "US dollar"})
    assert (status, asset["scale"]) == (201, 2)
    buyer, seller = await new_user(http), await new_user(http)
    buyer_account = await new_account(http, usd, userId=buyer)
    seller_account = await new_account(http, usd, userId=seller, overdraftLimit=5_00)
    fees = await new_account(http, usd, name="platform fees", metadata={"purpose": "fees"})
    started = dt.datetime.now(dt.UTC).isoformat()

    status, topped = await send(http, "POST", f"/api/accounts/{buyer_account['accountId']}/credit",
                                {"amount": 100_00, "code": "topup"})
    assert (status, topped["balance"]) == (200, 100_00)
    # a purchase of 40.00: the buyer pays the seller, the seller pays a 10% fee
    status, sale = await transfer(http, buyer_account["accountId"], seller_account["accountId"], 40_00, code="sale",
                                  metadata={"order": "A-1"})
    assert (status, sale["fromBalance"], sale["toBalance"]) == (201, 60_00, 40_00)
    status, fee = await transfer(http, seller_account["accountId"], fees["accountId"], 4_00, code="fee",
                                 metadata={"order": "A-1"})
    assert (status, fee["toBalance"]) == (201, 4_00)
    # the seller pays out everything, then refunds 40.00 of a returned order: the overdraft covers
    # 5.00 of it and no more
    await transfer(http, seller_account["accountId"], buyer_account["accountId"], 36_00, code="payout")
    status, body = await transfer(http, seller_account["accountId"], buyer_account["accountId"], 5_01, code="refund")
    assert (status, body["code"]) == (409, "insufficient_funds")
    status, refund = await transfer(http, seller_account["accountId"], buyer_account["accountId"], 5_00, code="refund")
    assert (status, refund["fromBalance"]) == (201, -5_00)

    status, listed = await send(http, "GET", "/api/transfers", accountId=str(fees["accountId"]), code="fee",
                                **{"from": started})
    assert [t["transferId"] for t in listed["transfers"]] == [fee["transferId"]]
    assert listed["transfers"][0]["metadata"] == {"order": "A-1"}
    status, at_sale = await send(http, "GET", f"/api/accounts/{buyer_account['accountId']}/balance",
                                 at=sale["createdAt"])
    assert at_sale["balance"] == 60_00
    assert await balance(http, buyer_account["accountId"]) == 60_00 + 36_00 + 5_00
    status, shown = await send(http, "GET", f"/api/assets/{usd}")
    assert shown["supply"] == 100_00  # the top-up; everything else moved between accounts
    assert balance_api("check", env=service_env(database_url=database_url)).returncode == 0


async def test_a_checkout_hold_partial_capture_fee_split_in_one_atomic_batch_and_a_refund_by_reversal(
        http, database_url):
    """The checkout of docs/api.md: the buyer's 100.00 is held at checkout; one item is out of stock, so
    80.00 is captured and, in the same atomic batch, the platform's 8.00 fee moves from the seller;
    the buyer later returns an item: 30.00 refunded by reversing part of the capture."""
    suffix = dt.datetime.now().strftime("%H%M%S%f")
    usd = f"USD_{suffix}"
    assert (await send(http, "POST", "/api/assets", {"code": usd, "scale": 2}))[0] == 201
    buyer, seller, platform = [(await new_account(http, usd, name=name))["accountId"]
                               for name in ("buyer", "seller", "platform fees")]
    assert (await send(http, "POST", f"/api/accounts/{buyer}/credit", {"amount": 150_00, "code": "topup"}))[0] == 200

    status, held = await transfer(http, buyer, seller, 100_00, pending=True, timeoutSeconds=7 * 86400,
                                  code="checkout", reference=f"order-{suffix}")
    assert (status, held["status"]) == (201, "pending")
    assert (await send(http, "GET", f"/api/accounts/{buyer}"))[1]["available"] == 50_00

    status, shipped = await send(http, "POST", "/api/transfers/batch", {"atomic": True, "transfers": [
        {"post": held["transferId"], "amount": 80_00},
        {"fromAccountId": seller, "toAccountId": platform, "amount": 8_00, "code": "fee"},
    ]})
    assert (status, shipped["committed"]) == (200, True)
    assert [await balance(http, x) for x in (buyer, seller, platform)] == [70_00, 72_00, 8_00]

    status, refund = await send(http, "POST", f"/api/transfers/{held['transferId']}/reverse",
                                {"amount": 30_00, "code": "refund", "reference": f"refund-{suffix}"})
    assert (status, refund["reverses"], refund["fromAccountId"], refund["toAccountId"]) == (
        201, held["transferId"], seller, buyer)
    assert [await balance(http, x) for x in (buyer, seller, platform)] == [100_00, 42_00, 8_00]
    assert (await send(http, "GET", f"/api/transfers/{held['transferId']}"))[1]["reversedAmount"] == 30_00
    assert balance_api("check", env=service_env(database_url=database_url)).returncode == 0
