"""POST /api/transfers/batch: transfers, posts and voids applied in order in one transaction; atomic
batches all or nothing. `balance-api check` passes after the races."""

import asyncio
import collections

from tests.ledger_api import balance, credit, hold, new_account, new_asset, send
from tests.service_process import assert_ledger_consistent


async def accounts(http, count: int, funded: int = 0) -> list[int]:
    code = await new_asset(http)
    ids = [(await new_account(http, code))["accountId"] for _ in range(count)]
    if funded:
        await credit(http, ids[0], funded)
    return ids


def move(source: int, destination: int, amount: int, **fields) -> dict:
    return {"fromAccountId": source, "toAccountId": destination, "amount": amount, **fields}


async def batch(http, items: list[dict], atomic: bool, headers: dict | None = None) -> tuple[int, dict]:
    return await send(http, "POST", "/api/transfers/batch", {"atomic": atomic, "transfers": items}, headers=headers)


async def test_items_apply_in_order_each_seeing_the_ones_before(http):
    a, b, c = await accounts(http, 3, funded=10)
    status, result = await batch(http, [move(a, b, 10), move(b, c, 7)], atomic=True)
    assert (status, result["committed"]) == (200, True)
    assert [item["status"] for item in result["results"]] == [201, 201]
    assert [item["transfer"]["toBalance"] for item in result["results"]] == [10, 7]
    assert [await balance(http, x) for x in (a, b, c)] == [0, 3, 7]


async def test_an_atomic_batch_with_one_refusal_commits_nothing_and_says_which_item_failed(http):
    a, b, c = await accounts(http, 3, funded=10)
    status, result = await batch(http, [move(a, b, 5), move(b, c, 6), move(a, c, 1)], atomic=True)
    assert (status, result["committed"]) == (200, False)
    assert [item["status"] for item in result["results"]] == [409, 409, 409]
    assert [item["problem"]["code"] for item in result["results"]] == [
        "linked_transfer_failed", "insufficient_funds", "linked_transfer_failed"]
    assert result["results"][0]["problem"]["failedItem"] == 1
    assert [await balance(http, x) for x in (a, b, c)] == [10, 0, 0]


async def test_a_non_atomic_batch_applies_each_item_on_its_own(http):
    a, b, c = await accounts(http, 3, funded=10)
    status, result = await batch(http, [move(a, b, 5), move(b, c, 6), move(a, c, 1)], atomic=False)
    assert (status, result["committed"]) == (200, True)
    assert [item["status"] for item in result["results"]] == [201, 409, 201]
    assert result["results"][1]["problem"]["code"] == "insufficient_funds"
    assert [await balance(http, x) for x in (a, b, c)] == [4, 5, 1]


async def test_holds_posts_and_voids_mix_in_a_batch(http):
    a, b = await accounts(http, 2, funded=100)
    _, first = await hold(http, a, b, 30)
    _, second = await hold(http, a, b, 20)
    status, result = await batch(http, [{"post": first["transferId"], "amount": 25}, {"void": second["transferId"]},
                                        move(a, b, 10, pending=True)], atomic=True)
    assert [item["status"] for item in result["results"]] == [200, 200, 201]
    assert [item["transfer"]["status"] for item in result["results"]] == ["posted", "voided", "pending"]
    assert (await send(http, "GET", f"/api/accounts/{a}"))[1]["available"] == 100 - 25 - 10


async def test_a_fee_split_commits_together(http):
    buyer, seller, platform = await accounts(http, 3, funded=1000)
    _, result = await batch(http, [move(buyer, seller, 900, code="purchase"), move(buyer, platform, 100, code="fee")],
                            atomic=True)
    assert result["committed"] and [await balance(http, x) for x in (buyer, seller, platform)] == [0, 900, 100]


async def test_items_with_a_reference_are_made_once_across_retries(http):
    a, b = await accounts(http, 2, funded=100)
    items = [move(a, b, 10, reference=f"batch-ref-{a}")]
    first = (await batch(http, items, atomic=False))[1]["results"][0]
    again = (await batch(http, items, atomic=False))[1]["results"][0]
    assert (first["status"], again["status"], again["replayed"]) == (201, 200, True)
    assert again["transfer"]["transferId"] == first["transfer"]["transferId"] and await balance(http, a) == 90


async def test_an_unknown_asset_fails_only_its_item(http):
    a, b = await accounts(http, 2, funded=10)
    _, result = await batch(http, [{"fromUserId": 1, "toUserId": 2, "amount": 1, "asset": "no_such_asset"},
                                   move(a, b, 1)], atomic=False)
    assert [item["status"] for item in result["results"]] == [404, 201]
    assert result["results"][0]["problem"]["code"] == "asset_not_found"


async def test_a_malformed_batch_is_422_naming_the_item_and_field(http):
    a, b = await accounts(http, 2, funded=10)
    for body, field in (({"atomic": True, "transfers": []}, "transfers"),
                        ({"atomic": True, "transfers": [move(a, b, 0)]}, "transfers.0.transfer.amount"),
                        ({"atomic": True, "transfers": [{"post": 1, "void": 2}]}, "transfers.0.post.void"),
                        ({"transfers": [move(a, b, 1)]}, "atomic")):
        status, problem = await send(http, "POST", "/api/transfers/batch", body)
        assert (status, problem["code"]) == (422, "validation_error"), body
        assert field in [error["field"] for error in problem["errors"]], problem["errors"]


async def test_more_than_1000_items_is_422(http):
    a, b = await accounts(http, 2, funded=10)
    status, problem = await batch(http, [move(a, b, 1)] * 1001, atomic=False)
    assert (status, problem["errors"]) == (422, [{"field": "transfers", "reason": "at most 1000 items"}])


async def test_1000_items_in_one_batch_are_applied(http, database_url):
    a, b = await accounts(http, 2, funded=1000)
    status, result = await batch(http, [move(a, b, 1)] * 1000, atomic=True)
    assert (status, result["committed"], await balance(http, b)) == (200, True, 1000)
    assert_ledger_consistent(database_url)


async def test_concurrent_atomic_batches_in_opposite_directions_never_deadlock_and_all_commit(http, database_url):
    a, b = await accounts(http, 2, funded=100)
    await credit(http, b, 100)
    results = await asyncio.gather(*(batch(http, [move(a, b, 1), move(b, a, 1)] if i % 2 else
                                           [move(b, a, 1), move(a, b, 1)], atomic=True) for i in range(60)))
    assert collections.Counter((status, body["committed"]) for status, body in results) == {(200, True): 60}
    assert (await balance(http, a), await balance(http, b)) == (100, 100)
    assert_ledger_consistent(database_url)


async def test_concurrent_atomic_batches_draining_one_account_commit_exactly_as_funds_allow(http, database_url):
    a, b, c = await accounts(http, 3, funded=100)
    results = await asyncio.gather(*(batch(http, [move(a, b, 3), move(a, c, 2)], atomic=True) for _ in range(40)))
    assert collections.Counter(body["committed"] for _, body in results) == {True: 20, False: 20}
    assert [await balance(http, x) for x in (a, b, c)] == [0, 60, 40]
    assert_ledger_consistent(database_url)


async def test_a_batch_body_over_transfer_batch_max_bytes_is_413_and_changes_nothing(http):
    a, b = await accounts(http, 2, funded=10)
    padding = "x" * 490
    items = [move(a, b, 1, description=padding)] * 2100  # about 1.2 MB, past the 1 MiB default
    status, problem = await batch(http, items, atomic=False)
    assert (status, problem["code"]) == (413, "payload_too_large")
    assert (await balance(http, a), await balance(http, b)) == (10, 0)


async def test_a_batch_body_over_the_other_routes_limit_is_accepted_within_its_own(http):
    a, b = await accounts(http, 2, funded=1000)
    items = [move(a, b, 1, description="y" * 400)] * 100  # about 50 KB: past MAX_BODY_BYTES (16 KiB)
    status, result = await batch(http, items, atomic=True)
    assert (status, result["committed"], await balance(http, b)) == (200, True, 100)
