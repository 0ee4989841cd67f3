"""Client references (a transfer made once per reference, retries answered with it) and reversals
(a transfer the opposite way, never more than moved). `balance-api check` passes after the races."""

import asyncio
import collections

from tests.ledger_api import account, balance, credit, funded_pair, hold, send, transfer
from tests.service_process import assert_ledger_consistent


def reference(name: str) -> str:
    return f"{name}-{id(name)}-{asyncio.get_running_loop().time()}"


async def test_a_transfer_carries_its_reference_and_is_found_by_it(http):
    buyer, seller = await funded_pair(http, 100)
    ref = reference("order")
    status, made = await transfer(http, buyer, seller, 10, reference=ref)
    assert (status, made["reference"]) == (201, ref)
    status, found = await send(http, "GET", "/api/transfers", reference=ref)
    assert (status, [t["transferId"] for t in found["transfers"]]) == (200, [made["transferId"]])
    assert (await send(http, "GET", "/api/transfers", reference="never-used"))[1]["transfers"] == []


async def test_the_same_reference_and_content_again_answers_the_first_transfer_and_moves_nothing(http):
    buyer, seller = await funded_pair(http, 100)
    ref = reference("retry")
    _, made = await transfer(http, buyer, seller, 10, reference=ref, code="spend")
    async with http.post("/api/transfers", json={"fromAccountId": buyer, "toAccountId": seller, "amount": 10,
                                                 "reference": ref, "code": "spend"}) as response:
        again = await response.json()
        assert (response.status, response.headers.get("Idempotent-Replayed")) == (200, "true")
    assert again == made
    assert await balance(http, buyer) == 90


async def test_the_same_reference_with_other_content_is_409_reference_reused_naming_the_fields(http):
    buyer, seller = await funded_pair(http, 100)
    ref = reference("clash")
    _, made = await transfer(http, buyer, seller, 10, reference=ref)
    status, problem = await transfer(http, buyer, seller, 11, reference=ref, code="fee")
    assert (status, problem["code"], problem["fields"], problem["transferId"]) == (
        409, "reference_reused", ["amount", "code"], made["transferId"])
    assert await balance(http, buyer) == 90


async def test_a_refused_transfer_does_not_take_its_reference(http):
    buyer, seller = await funded_pair(http, 5)
    ref = reference("refused")
    assert (await transfer(http, buyer, seller, 10, reference=ref))[1]["code"] == "insufficient_funds"
    await credit(http, buyer, 5)
    assert (await transfer(http, buyer, seller, 10, reference=ref))[0] == 201


async def test_a_reference_is_1_to_128_printable_ascii_characters(http):
    buyer, seller = await funded_pair(http, 100)
    for bad in ("", "x" * 129, "caf\u00e9", "tab\there", 5):
        assert (await transfer(http, buyer, seller, 1, reference=bad))[1]["code"] == "validation_error", bad


async def test_100_concurrent_transfers_with_one_reference_make_exactly_one(http, database_url):
    buyer, seller = await funded_pair(http, 1000)
    ref = reference("storm")
    results = await asyncio.gather(*(transfer(http, buyer, seller, 7, reference=ref) for _ in range(100)))
    assert collections.Counter(status for status, _ in results) == {201: 1, 200: 99}
    assert len({body["transferId"] for _, body in results}) == 1
    assert (await balance(http, buyer), await balance(http, seller)) == (993, 7)
    assert_ledger_consistent(database_url)


async def test_reversing_a_transfer_moves_it_back_and_marks_both(http):
    buyer, seller = await funded_pair(http, 100)
    _, made = await transfer(http, buyer, seller, 30)
    status, reversal = await send(http, "POST", f"/api/transfers/{made['transferId']}/reverse", {})
    assert status == 201
    assert (reversal["fromAccountId"], reversal["toAccountId"], reversal["amount"], reversal["code"],
            reversal["reverses"]) == (seller, buyer, 30, "reversal", made["transferId"])
    assert (await send(http, "GET", f"/api/transfers/{made['transferId']}"))[1]["reversedAmount"] == 30
    assert (await balance(http, buyer), await balance(http, seller)) == (100, 0)


async def test_a_transfer_may_be_reversed_in_parts_but_never_beyond_what_it_moved(http):
    buyer, seller = await funded_pair(http, 100)
    _, made = await transfer(http, buyer, seller, 30)
    path = f"/api/transfers/{made['transferId']}/reverse"
    assert (await send(http, "POST", path, {"amount": 20, "code": "refund"}))[0] == 201
    status, problem = await send(http, "POST", path, {"amount": 11})
    assert (status, problem["code"]) == (422, "exceeds_reversible_amount")
    assert (await send(http, "POST", path, {}))[1]["amount"] == 10
    assert (await send(http, "POST", path, {}))[1]["code"] == "exceeds_reversible_amount"


async def test_reversing_a_hold_is_409_transfer_not_posted_but_a_posted_hold_reverses_what_was_posted(http):
    buyer, seller = await funded_pair(http, 100)
    _, held = await hold(http, buyer, seller, 30)
    path = f"/api/transfers/{held['transferId']}/reverse"
    assert (await send(http, "POST", path, {}))[1]["code"] == "transfer_not_posted"
    await send(http, "POST", f"/api/transfers/{held['transferId']}/post", {"amount": 12})
    assert (await send(http, "POST", path, {}))[1]["amount"] == 12


async def test_a_reversal_obeys_the_usual_limits(http):
    buyer, seller = await funded_pair(http, 100)
    _, made = await transfer(http, buyer, seller, 30)
    await send(http, "POST", f"/api/accounts/{seller}/debit", {"amount": 25})
    status, problem = await send(http, "POST", f"/api/transfers/{made['transferId']}/reverse", {})
    assert (status, problem["code"], problem["role"]) == (409, "insufficient_funds", "from")
    assert (await send(http, "GET", f"/api/transfers/{made['transferId']}"))[1]["reversedAmount"] == 0


async def test_reversing_an_unknown_transfer_is_404(http):
    assert (await send(http, "POST", f"/api/transfers/{2**62}/reverse", {}))[1]["code"] == "transfer_not_found"


async def test_a_reversal_with_a_reference_is_made_once(http):
    buyer, seller = await funded_pair(http, 100)
    _, made = await transfer(http, buyer, seller, 30)
    path, ref = f"/api/transfers/{made['transferId']}/reverse", reference("refund")
    first = await send(http, "POST", path, {"amount": 5, "reference": ref})
    again = await send(http, "POST", path, {"amount": 5, "reference": ref})
    assert (first[0], again[0], again[1]["transferId"]) == (201, 200, first[1]["transferId"])
    assert (await send(http, "POST", path, {"amount": 6, "reference": ref}))[1]["code"] == "reference_reused"
    assert (await account(http, buyer))["balance"] == 75


async def test_50_concurrent_full_reversals_of_one_transfer_reverse_it_exactly_once(http, database_url):
    buyer, seller = await funded_pair(http, 100)
    _, made = await transfer(http, buyer, seller, 40)
    results = await asyncio.gather(*(send(http, "POST", f"/api/transfers/{made['transferId']}/reverse", {})
                                     for _ in range(50)))
    assert collections.Counter(status if status < 400 else body["code"] for status, body in results) == {
        201: 1, "exceeds_reversible_amount": 49}
    assert (await balance(http, buyer), await balance(http, seller)) == (100, 0)
    assert_ledger_consistent(database_url)


async def test_retrying_a_full_reversal_with_its_reference_answers_the_reversal_it_made(http):
    """Found by the state machine: the retry of "reverse all that is left" was 422
    exceeds_reversible_amount, since the first attempt had left nothing to reverse."""
    buyer, seller = await funded_pair(http, 100)
    _, made = await transfer(http, buyer, seller, 30)
    path, ref = f"/api/transfers/{made['transferId']}/reverse", reference("refund-all")
    first = await send(http, "POST", path, {"reference": ref})
    again = await send(http, "POST", path, {"reference": ref})
    assert (first[0], again[0], again[1]["transferId"], again[1]["amount"]) == (201, 200, first[1]["transferId"], 30)
    assert (await balance(http, buyer), await balance(http, seller)) == (100, 0)


async def test_50_concurrent_batches_carrying_one_reference_make_exactly_one_transfer(http, database_url):
    buyer, seller = await funded_pair(http, 100)
    item = {"fromAccountId": buyer, "toAccountId": seller, "amount": 7, "reference": reference("batch")}
    results = await asyncio.gather(*(send(http, "POST", "/api/transfers/batch", {"atomic": True, "transfers": [item]})
                                     for _ in range(50)))
    answers = [body["results"][0] for _, body in results]
    assert collections.Counter((answer["status"], answer.get("replayed", False)) for answer in answers) == {
        (201, False): 1, (200, True): 49}
    assert len({answer["transfer"]["transferId"] for answer in answers}) == 1
    assert (await balance(http, buyer), await balance(http, seller)) == (93, 7)
    assert_ledger_consistent(database_url)
