"""Transfers: atomic, never half-applied, deadlock-free, and conserving money under concurrency."""

import asyncio
import random
import time

from tests.conftest import database_fingerprint, ledger_state
from tests.service_process import balance_api, service_env


async def transfer(http, from_user, to_user, amount, **extra):
    body = {"fromUserId": from_user, "toUserId": to_user, "amount": amount, **extra}
    response = await http.post("/api/transfers", json=body)
    return response.status, await response.json(content_type=None), response


async def test_a_transfer_moves_money_and_answers_201_with_both_balances(http, new_user):
    alice, bob = new_user(100), new_user(5)
    status, body, response = await transfer(http, alice, bob, 30, description="rent")
    assert status == 201
    assert {k: body[k] for k in ("fromUserId", "toUserId", "amount", "description", "fromBalance", "toBalance")} == {
        "fromUserId": alice, "toUserId": bob, "amount": 30, "description": "rent", "fromBalance": 70, "toBalance": 35}
    assert response.headers["Location"] == f"/api/transfers/{body['transferId']}"


async def test_a_transfer_writes_two_ledger_entries_sharing_its_id(http, new_user, db):
    alice, bob = new_user(100), new_user(0)
    _, body, _ = await transfer(http, alice, bob, 40)
    entries = db.execute("SELECT a.user_id, e.amount, e.balance_after, e.kind FROM ledger_entries e "
                         "JOIN accounts a ON a.id = e.account_id WHERE e.transfer_id = %s "
                         "ORDER BY e.amount", (body["transferId"],)).fetchall()
    assert entries == [(alice, -40, 60, "transfer_out"), (bob, 40, 40, "transfer_in")]
    assert ledger_state(db, alice) == (60, 2, 60) and ledger_state(db, bob) == (40, 1, 40)


async def test_get_transfer_reads_it_back(http, new_user):
    alice, bob = new_user(100), new_user(0)
    _, created, _ = await transfer(http, alice, bob, 10)
    response = await http.get(f"/api/transfers/{created['transferId']}")
    assert (response.status, await response.json()) == (200, created)


async def test_get_unknown_transfer_is_404_transfer_not_found(http):
    response = await http.get("/api/transfers/987654321")
    assert (response.status, (await response.json(content_type=None))["code"]) == (404, "transfer_not_found")


async def test_a_transfer_to_the_same_account_is_422_same_account(http, new_user, db):
    alice = new_user(100)
    before = database_fingerprint(db)
    status, body, _ = await transfer(http, alice, alice, 1)
    assert (status, body["code"]) == (422, "same_account")
    assert database_fingerprint(db) == before


async def test_a_transfer_from_an_unknown_user_is_404_naming_the_sender(http, new_user, db):
    bob = new_user(0)
    before = database_fingerprint(db)
    status, body, _ = await transfer(http, 987654321, bob, 1)
    assert (status, body["code"], body["userId"], body["role"]) == (404, "user_not_found", 987654321, "from")
    assert database_fingerprint(db) == before


async def test_a_transfer_to_an_unknown_user_is_404_naming_the_receiver(http, new_user, db):
    alice = new_user(100)
    before = database_fingerprint(db)
    status, body, _ = await transfer(http, alice, 987654321, 1)
    assert (status, body["code"], body["userId"], body["role"]) == (404, "user_not_found", 987654321, "to")
    assert database_fingerprint(db) == before


async def test_a_transfer_beyond_the_senders_balance_is_409_and_half_of_nothing_happens(http, new_user, db):
    alice, bob = new_user(10), new_user(0)
    before = database_fingerprint(db)
    status, body, _ = await transfer(http, alice, bob, 11)
    assert (status, body["code"]) == (409, "insufficient_funds")
    assert database_fingerprint(db) == before


async def test_a_transfer_that_would_overflow_the_receiver_is_409_balance_overflow(http, new_user, db):
    alice, bob = new_user(10), new_user(2**63 - 5)
    before = database_fingerprint(db)
    status, body, _ = await transfer(http, alice, bob, 10)
    assert (status, body["code"], body["userId"]) == (409, "balance_overflow", bob)
    assert database_fingerprint(db) == before


async def test_opposite_transfers_at_the_same_moment_all_complete(http, new_user, db):
    alice, bob = new_user(1000), new_user(1000)
    pairs = [transfer(http, alice, bob, 1) for _ in range(150)] + [transfer(http, bob, alice, 1) for _ in range(150)]
    random.shuffle(pairs)
    results = await asyncio.gather(*pairs)
    assert [status for status, _, _ in results] == [201] * 300
    assert ledger_state(db, alice).balance == ledger_state(db, bob).balance == 1000


async def test_jepsen_style_bank_conserves_money_under_concurrent_transfers_credits_and_debits(
    http, new_user, db, database_url
):
    """5 accounts, 40 concurrent clients, random transfers plus credits and debits on account 0,
    for 4 seconds. Afterwards: total = start + applied credits - applied debits, no negative balance,
    every balance = the sum of its entries, every transfer = exactly its two entries."""
    accounts = [new_user(1000) for _ in range(5)]
    outside = {"credits": 0, "debits": 0}
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + 4

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            roll = rng.random()
            if roll < 0.8:
                sender, receiver = rng.sample(accounts, 2)
                status, _, _ = await transfer(http, sender, receiver, rng.randint(1, 400))
            else:
                route, amount = ("credit", rng.randint(1, 100)) if roll < 0.9 else ("debit", rng.randint(1, 300))
                response = await http.post(f"/api/users/{accounts[0]}/{route}", json={"amount": amount})
                status = response.status
                if status == 200:
                    outside["credits" if route == "credit" else "debits"] += amount
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client(seed) for seed in range(40)))
    assert set(statuses) <= {200, 201, 409} and statuses.get(201, 0) > 100, statuses

    balances = [ledger_state(db, account) for account in accounts]
    assert sum(b.balance for b in balances) == 5000 + outside["credits"] - outside["debits"]
    assert all(b.balance >= 0 and b.balance == b.entries_sum for b in balances)
    unbalanced = db.execute(
        "SELECT t.id FROM transfers t JOIN accounts f ON f.id = t.from_account_id "
        "JOIN accounts d ON d.id = t.to_account_id LEFT JOIN ledger_entries e ON e.transfer_id = t.id "
        "WHERE f.user_id = ANY(%s) AND d.user_id IS NOT NULL GROUP BY t.id, t.amount, t.from_account_id, t.to_account_id "
        "HAVING count(*) <> 2 OR sum(e.amount) <> 0 "
        "OR count(*) FILTER (WHERE e.account_id = t.from_account_id AND e.amount = -t.amount) <> 1 "
        "OR count(*) FILTER (WHERE e.account_id = t.to_account_id AND e.amount = t.amount) <> 1",
        (accounts,),
    ).fetchall()
    assert unbalanced == []
    verdict = balance_api("check", env=service_env(database_url=database_url))
    assert verdict.returncode == 0, verdict.stdout
