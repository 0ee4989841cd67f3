"""Idempotency keys on every mutating route, with Stripe's semantics."""

import asyncio
import time
import uuid

import aiohttp
import pytest

from tests.conftest import USER_ACCOUNT, database_fingerprint, ledger_state
from tests.ledger_api import send
from tests.service_process import running_service

KEY = "Idempotency-Key"


def mutation(route: str, user: int, other: int, amount: int = 5) -> tuple[str, str, dict]:
    """(method, path, body) of one mutating request on ``user``."""
    return {
        "patch": ("PATCH", "/api/balance", {"userId": user, "amount": -amount}),
        "credit": ("POST", f"/api/users/{user}/credit", {"amount": amount}),
        "debit": ("POST", f"/api/users/{user}/debit", {"amount": amount}),
        "transfer": ("POST", "/api/transfers", {"fromUserId": user, "toUserId": other, "amount": amount}),
    }[route]


ROUTES = ["patch", "credit", "debit", "transfer"]


@pytest.mark.parametrize("route", ROUTES)
async def test_a_retry_with_the_same_key_replays_the_outcome_and_changes_nothing(http, new_user, db, route):
    user, other = new_user(100), new_user(0)
    method, path, body = mutation(route, user, other)
    first = await send(http, method, path, body, key=f"replay-{route}-{user}")
    after_first = database_fingerprint(db)
    second = await send(http, method, path, body, key=f"replay-{route}-{user}")
    assert (second.status, second.raw) == (first.status, first.raw)  # byte for byte
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert second.headers.get("Location") == first.headers.get("Location")
    assert database_fingerprint(db) == after_first


async def test_a_replay_returns_the_stored_outcome_even_after_the_state_changed(http, new_user, db):
    user = new_user(100)
    key = f"stale-{user}"
    first = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 10}, key=key)
    await send(http, "POST", f"/api/users/{user}/credit", {"amount": 1000})
    replay = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 10}, key=key)
    assert (replay.status, replay.raw) == (first.status, first.raw) and replay.body["balance"] == 90
    assert ledger_state(db, user).balance == 1090


async def test_a_refusal_is_stored_and_replayed_too(http, new_user, db):
    user = new_user(5)
    key = f"refused-{user}"
    first = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 10}, key=key)
    assert first.status == 409
    await send(http, "POST", f"/api/users/{user}/credit", {"amount": 100})
    replay = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 10}, key=key)
    assert (replay.status, replay.raw) == (first.status, first.raw) and replay.headers["Idempotent-Replayed"] == "true"
    assert ledger_state(db, user).balance == 105


async def test_the_same_key_with_another_body_is_422_idempotency_key_reused(http, new_user, db):
    user = new_user(100)
    key = f"reused-{user}"
    await send(http, "POST", f"/api/users/{user}/debit", {"amount": 10}, key=key)
    before = database_fingerprint(db)
    status, body = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 11}, key=key)
    assert (status, body["code"]) == (422, "idempotency_key_reused")
    assert database_fingerprint(db) == before


async def test_the_same_key_on_another_route_is_422_idempotency_key_reused(http, new_user, db):
    user = new_user(100)
    key = f"other-route-{user}"
    await send(http, "POST", f"/api/users/{user}/debit", {"amount": 10}, key=key)
    before = database_fingerprint(db)
    status, body = await send(http, "POST", f"/api/users/{user}/credit", {"amount": 10}, key=key)
    assert (status, body["code"]) == (422, "idempotency_key_reused")
    assert database_fingerprint(db) == before


async def test_the_same_body_written_differently_is_the_same_request(http, new_user, db):
    user = new_user(100)
    key = f"canonical-{user}"
    headers = {KEY: key, "Content-Type": "application/json"}
    first = await http.post(f"/api/users/{user}/debit", data=b'{"amount":10}', headers=headers)
    second = await http.post(f"/api/users/{user}/debit", data=b'{ "amount" : 10 , "description": null }', headers=headers)
    assert (first.status, second.status, second.headers["Idempotent-Replayed"]) == (200, 200, "true")
    assert ledger_state(db, user).balance == 90


async def test_an_accepted_change_records_its_key_in_the_ledger(http, new_user, db):
    user = new_user(100)
    await send(http, "PATCH", "/api/balance", {"userId": user, "amount": -1}, key=f"recorded-{user}")
    assert db.execute(f"SELECT idempotency_key FROM ledger_entries WHERE account_id = {USER_ACCOUNT} ORDER BY id DESC LIMIT 1",
                      (user,)).fetchone() == (f"recorded-{user}",)


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_an_invalid_key_is_422_and_changes_nothing(http, new_user, db, key):
    user = new_user(100)
    before = database_fingerprint(db)
    response = await http.post(f"/api/users/{user}/debit", json={"amount": 1}, headers={KEY: key})
    body = await response.json(content_type=None)
    assert (response.status, body["code"], body["errors"][0]["field"]) == (422, "validation_error", KEY)
    assert database_fingerprint(db) == before


async def test_a_request_refused_by_validation_does_not_use_up_its_key(http, new_user):
    user = new_user(100)
    key = f"validation-{user}"
    assert (await send(http, "POST", f"/api/users/{user}/debit", {"amount": 0}, key=key))[0] == 422
    answer = await send(http, "POST", f"/api/users/{user}/debit", {"amount": 3}, key=key)
    assert answer.status == 200 and "Idempotent-Replayed" not in answer.headers


@pytest.mark.parametrize("route", ROUTES)
async def test_100_concurrent_requests_with_one_key_make_exactly_one_change(service_url, new_user, db, route):
    user, other = new_user(1000), new_user(0)
    method, path, body = mutation(route, user, other)
    key = f"burst-{route}-{user}"
    before = ledger_state(db, user)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # one connection per request
    async with aiohttp.ClientSession(base_url=service_url, connector=connector) as client:
        results = await asyncio.gather(*(send(client, method, path, body, key=key) for _ in range(100)))
    statuses = {answer.status for answer in results}
    assert statuses <= {200, 201, 409}
    winners = [answer for answer in results if answer.status in (200, 201)]
    assert len({answer.raw for answer in winners}) == 1  # everyone got the same outcome
    assert sum("Idempotent-Replayed" not in answer.headers for answer in winners) == 1
    assert all(answer.body["code"] == "idempotency_key_in_use" for answer in results if answer.status == 409)
    assert ledger_state(db, user).entries == before.entries + 1
    assert db.execute("SELECT count(*) FROM ledger_entries WHERE idempotency_key = %s", (key,)).fetchone()[0] == (
        2 if route == "transfer" else 1)


def test_an_expired_key_is_purged_and_can_be_used_afresh(tmp_path, database_url, new_user, db):
    user = new_user(100)
    key = f"expiring-{user}"
    settings = {"database_url": database_url, "idempotency_key_retention": "1", "idempotency_purge_interval": "0.2"}
    with running_service(tmp_path / "service.log", **settings) as (url, _):
        async def scenario():
            async with aiohttp.ClientSession(base_url=url) as client:
                first = await send(client, "POST", f"/api/users/{user}/debit", {"amount": 10}, key=key)
                assert db.execute("SELECT count(*) FROM idempotency_keys WHERE key = %s", (key,)).fetchone() == (1,)
                deadline = time.monotonic() + 10
                while db.execute("SELECT count(*) FROM idempotency_keys WHERE key = %s", (key,)).fetchone() != (0,):
                    assert time.monotonic() < deadline, "expired key never purged"
                    await asyncio.sleep(0.2)
                second = await send(client, "POST", f"/api/users/{user}/debit", {"amount": 20}, key=key)
                return first, second

        first, second = asyncio.run(scenario())
    assert first.status == second.status == 200 and "Idempotent-Replayed" not in second.headers
    assert ledger_state(db, user).balance == 70


NEW_ROUTES = [
    ("POST", "/api/assets", lambda ids: {"code": f"idem_{ids['suffix']}", "scale": 2}, 201),
    ("POST", "/api/accounts", lambda ids: {"asset": "default", "name": "escrow"}, 201),
    ("PATCH", "/api/accounts/{account}", lambda ids: {"maxBalance": 1000}, 200),
    ("POST", "/api/accounts/{account}/freeze", lambda ids: {}, 200),
    ("POST", "/api/accounts/{account}/unfreeze", lambda ids: {}, 200),
    ("POST", "/api/accounts/{account}/credit", lambda ids: {"amount": 5, "code": "topup"}, 200),
    ("POST", "/api/accounts/{account}/debit", lambda ids: {"amount": 1}, 200),
    ("POST", "/api/transfers", lambda ids: {"fromAccountId": ids["account"], "toAccountId": ids["other"], "amount": 1,
                                            "code": "fee", "metadata": {"order": "1"}}, 201),
    ("POST", "/api/accounts/{empty}/close", lambda ids: {}, 200),
]


@pytest.mark.parametrize("method, path, body, status", NEW_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in NEW_ROUTES])
async def test_every_new_mutating_route_replays_a_key_and_changes_nothing_the_second_time(
        http, db, method, path, body, status):
    from tests.ledger_api import credit, new_account

    account, other, empty = [await new_account(http, "default") for _ in range(3)]
    ids = {"account": account["accountId"], "other": other["accountId"], "empty": empty["accountId"],
           "suffix": uuid.uuid4().hex[:12]}
    await credit(http, ids["account"], 10)
    url, key = path.format(**ids), f"new-route-{uuid.uuid4()}"
    first = await http.request(method, url, json=body(ids), headers={"Idempotency-Key": key})
    assert first.status == status, await first.text()
    after_first = database_fingerprint(db)
    again = await http.request(method, url, json=body(ids), headers={"Idempotency-Key": key})
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (status, "true")
    assert await again.json() == await first.json()
    assert database_fingerprint(db) == after_first


async def test_a_refusal_after_a_failed_lookup_is_stored_under_its_key_not_a_500(http):
    """Schemathesis found it: opening an account for an unknown user with an Idempotency-Key was a 500
    (the failed insert aborted the key's transaction before the refusal could be stored)."""
    code = f"idem_{uuid.uuid4().hex[:12]}"
    assert (await http.post("/api/assets", json={"code": code, "scale": 0})).status == 201
    body = {"asset": code, "userId": 68719476735}
    for _ in range(2):  # the refusal, then its replay
        async with http.post("/api/accounts", json=body, headers={"Idempotency-Key": f"k-{code}"}) as response:
            assert (response.status, (await response.json())["code"]) == (404, "user_not_found")
