"""Holds (pending transfers): reserve at once, post all or part, void, expire without a job; each
exactly once under concurrency. `balance-api check` passes after the races."""

import asyncio
import collections

import aiohttp

from server.running.process_limits import raise_open_file_limit
from tests.ledger_api import account, balance, credit, funded_pair, hold, new_account, new_asset, post, send, transfer, void
from tests.service_process import assert_ledger_consistent


def sums(document: dict) -> tuple[int, int, int, int]:
    return document["balance"], document["available"], document["pendingDebits"], document["pendingCredits"]


async def test_a_hold_is_a_pending_transfer_that_moves_nothing_yet(http):
    buyer, seller = await funded_pair(http, 100)
    status, held = await hold(http, buyer, seller, 30)
    assert status == 201
    assert (held["status"], held["expiresAt"], held["postedAmount"]) == ("pending", None, 0)
    assert (held["fromBalance"], held["toBalance"]) == (None, None)
    assert sums(await account(http, buyer)) == (100, 70, 30, 0)
    assert sums(await account(http, seller)) == (0, 0, 0, 30)


async def test_a_plain_transfer_reads_posted_with_its_whole_amount(http):
    buyer, seller = await funded_pair(http, 100)
    status, moved = await transfer(http, buyer, seller, 40)
    assert (status, moved["status"], moved["postedAmount"], moved["expiresAt"]) == (201, "posted", 40, None)


async def test_a_hold_counts_against_the_next_debit_at_once(http):
    buyer, seller = await funded_pair(http, 100)
    await hold(http, buyer, seller, 80)
    status, refused = await send(http, "POST", f"/api/accounts/{buyer}/debit", {"amount": 21})
    assert (status, refused["code"]) == (409, "insufficient_funds")
    assert (await transfer(http, buyer, seller, 21))[1]["code"] == "insufficient_funds"
    assert (await send(http, "POST", f"/api/accounts/{buyer}/debit", {"amount": 20}))[0] == 200


async def test_a_hold_counts_against_the_receivers_max_balance(http):
    buyer, seller = await funded_pair(http, 100, maxBalance=50)
    await hold(http, buyer, seller, 40)
    assert (await credit(http, seller, 11))[1]["code"] == "max_balance_exceeded"
    assert (await hold(http, buyer, seller, 11))[1]["code"] == "max_balance_exceeded"
    assert (await credit(http, seller, 10))[0] == 200


async def test_posting_all_of_a_hold_moves_it_and_writes_both_entries(http):
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 30)
    status, posted = await post(http, held["transferId"])
    assert (status, posted["status"], posted["postedAmount"], posted["amount"]) == (200, "posted", 30, 30)
    assert (posted["fromBalance"], posted["toBalance"]) == (70, 30)
    assert sums(await account(http, buyer)) == (70, 70, 0, 0)
    assert sums(await account(http, seller)) == (30, 30, 0, 0)


async def test_posting_part_of_a_hold_moves_that_part_and_releases_the_rest(http):
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 30)
    status, posted = await post(http, held["transferId"], 12)
    assert (status, posted["postedAmount"], posted["fromBalance"], posted["toBalance"]) == (200, 12, 88, 12)
    assert sums(await account(http, buyer)) == (88, 88, 0, 0)


async def test_posting_more_than_is_held_is_422_exceeds_pending_amount(http):
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 30)
    status, problem = await post(http, held["transferId"], 31)
    assert (status, problem["code"]) == (422, "exceeds_pending_amount")
    assert sums(await account(http, buyer)) == (100, 70, 30, 0)


async def test_voiding_a_hold_releases_it_all(http):
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 30)
    status, voided = await void(http, held["transferId"])
    assert (status, voided["status"], voided["postedAmount"]) == (200, "voided", 0)
    assert sums(await account(http, buyer)) == (100, 100, 0, 0)
    assert sums(await account(http, seller)) == (0, 0, 0, 0)


async def test_a_hold_is_posted_or_voided_once_then_409(http):
    buyer, seller = await funded_pair(http, 100)
    _, first = await hold(http, buyer, seller, 10)
    _, second = await hold(http, buyer, seller, 10)
    await post(http, first["transferId"])
    await void(http, second["transferId"])
    assert (await post(http, first["transferId"]))[1]["code"] == "pending_transfer_already_posted"
    assert (await void(http, first["transferId"]))[1]["code"] == "pending_transfer_already_posted"
    assert (await post(http, second["transferId"]))[1]["code"] == "pending_transfer_already_voided"
    assert (await void(http, second["transferId"]))[0] == 409


async def test_posting_or_voiding_a_plain_transfer_is_409_transfer_not_pending(http):
    buyer, seller = await funded_pair(http, 100)
    _, moved = await transfer(http, buyer, seller, 10)
    assert (await post(http, moved["transferId"]))[1]["code"] == "transfer_not_pending"
    assert (await void(http, moved["transferId"]))[1]["code"] == "transfer_not_pending"


async def test_posting_an_unknown_transfer_is_404(http):
    assert (await post(http, 2**62))[1]["code"] == "transfer_not_found"


async def test_an_expired_hold_stops_counting_at_once_and_can_be_neither_posted_nor_voided(http):
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 60, timeoutSeconds=1)
    assert held["expiresAt"] is not None
    assert sums(await account(http, buyer)) == (100, 40, 60, 0)
    await asyncio.sleep(1.2)
    assert sums(await account(http, buyer)) == (100, 100, 0, 0)
    assert sums(await account(http, seller)) == (0, 0, 0, 0)
    assert (await send(http, "GET", f"/api/transfers/{held['transferId']}"))[1]["status"] == "expired"
    assert (await post(http, held["transferId"]))[1]["code"] == "pending_transfer_expired"
    assert (await void(http, held["transferId"]))[1]["code"] == "pending_transfer_expired"
    assert (await send(http, "POST", f"/api/accounts/{buyer}/debit", {"amount": 100}))[0] == 200


async def test_an_expired_hold_no_longer_stands_in_the_way_of_a_lower_limit(http):
    """Found by the state machine: the limit check still counted the expired hold's amount."""
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 60, timeoutSeconds=1)
    assert (await send(http, "PATCH", f"/api/accounts/{seller}", {"maxBalance": 10}))[1]["code"] == "limit_violated"
    await asyncio.sleep(1.2)
    assert (await send(http, "PATCH", f"/api/accounts/{seller}", {"maxBalance": 10}))[0] == 200


async def test_a_timeout_needs_pending_and_lies_within_30_days(http):
    buyer, seller = await funded_pair(http, 100)
    for fields in ({"timeoutSeconds": 5}, {"pending": True, "timeoutSeconds": 0},
                   {"pending": True, "timeoutSeconds": 2_592_001}, {"pending": "yes"}):
        status, problem = await transfer(http, buyer, seller, 1, **fields)
        assert (status, problem["code"]) == (422, "validation_error"), fields


async def test_a_frozen_account_refuses_new_holds_and_posts_but_not_voids(http):
    buyer, seller = await funded_pair(http, 100)
    _, first = await hold(http, buyer, seller, 10)
    _, second = await hold(http, buyer, seller, 10)
    await send(http, "POST", f"/api/accounts/{buyer}/freeze")
    assert (await hold(http, buyer, seller, 10))[1]["code"] == "account_frozen"
    status, problem = await post(http, first["transferId"])
    assert (status, problem["code"], problem["role"]) == (409, "account_frozen", "from")
    assert (await void(http, second["transferId"]))[0] == 200
    assert sums(await account(http, buyer)) == (100, 90, 10, 0)


async def test_an_account_with_an_open_hold_cannot_be_closed(http):
    code = await new_asset(http)
    source, empty = await new_account(http, code), await new_account(http, code)
    await credit(http, source["accountId"], 5)
    _, held = await hold(http, source["accountId"], empty["accountId"], 5)
    status, problem = await send(http, "POST", f"/api/accounts/{empty['accountId']}/close")
    assert (status, problem["code"]) == (409, "account_not_empty")
    await void(http, held["transferId"])
    assert (await send(http, "POST", f"/api/accounts/{empty['accountId']}/close"))[0] == 200


async def test_100_concurrent_posts_of_one_hold_post_it_exactly_once(http, database_url):
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 50)
    results = await asyncio.gather(*(post(http, held["transferId"]) for _ in range(100)))
    assert collections.Counter(status if status < 400 else body["code"] for status, body in results) == {
        200: 1, "pending_transfer_already_posted": 99}
    assert (await balance(http, buyer), await balance(http, seller)) == (50, 50)
    assert_ledger_consistent(database_url)


async def test_posts_racing_voids_of_one_hold_resolve_it_exactly_once(http, database_url):
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 50)
    results = await asyncio.gather(*(post(http, held["transferId"]) if i % 2 else void(http, held["transferId"])
                                     for i in range(100)))
    winners = [body["status"] for status, body in results if status == 200]
    assert len(winners) == 1
    loser_code = {"posted": "pending_transfer_already_posted", "voided": "pending_transfer_already_voided"}[winners[0]]
    assert [body["code"] for status, body in results if status != 200] == [loser_code] * 99
    assert sums(await account(http, buyer))[2:] == (0, 0)
    assert_ledger_consistent(database_url)


async def test_1000_simultaneous_holds_of_2_on_500_give_exactly_250_pending_and_750_refused(http, database_url):
    buyer, seller = await funded_pair(http, 500)
    results = await asyncio.gather(*(hold(http, buyer, seller, 2) for _ in range(1000)))
    assert collections.Counter(status if status < 400 else body["code"] for status, body in results) == {
        201: 250, "insufficient_funds": 750}
    assert sums(await account(http, buyer)) == (500, 0, 500, 0)
    assert_ledger_consistent(database_url)


async def test_10000_simultaneous_holds_of_2_on_10000_give_exactly_5000_pending_and_5000_refused(
        service_url, database_url):
    """The proof, for holds: every request on a connection of its own, all at once (the service is
    another process; this one raises its open-file limit for the 10,000 sockets)."""
    raise_open_file_limit()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(base_url=service_url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        buyer, seller = await funded_pair(session, 10_000)
        results = await asyncio.gather(*(hold(session, buyer, seller, 2) for _ in range(10_000)))
        assert collections.Counter(status if status < 400 else body["code"] for status, body in results) == {
            201: 5000, "insufficient_funds": 5000}
        assert sums(await account(session, buyer)) == (10_000, 0, 10_000, 0)
        assert sums(await account(session, seller)) == (0, 0, 0, 10_000)
    assert_ledger_consistent(database_url)
