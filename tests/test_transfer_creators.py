"""Who made each transfer (issue 25): every transfer, whichever route made it, and its events name
the API key that asked for it as ``createdBy`` (key id and name), or null without authentication;
`balance-api check` names a transfer whose creator does not exist."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import psycopg
import pytest

from tests.http_calls import call
from tests.ledger_api import send as open_send
from tests.ledger_api import transfer as open_transfer
from tests.ledger_api import funded_pair
from tests.service_process import balance_api, running_service, service_env

ADMIN = "admin-token-for-the-creator-tests"


@pytest.fixture(scope="module")
def creators_database(create_database) -> str:
    return create_database()


@pytest.fixture(scope="module")
def url(creators_database, tmp_path_factory):
    """One worker, keys required, ADMIN an API_TOKEN (every scope)."""
    log_path = tmp_path_factory.mktemp("creators") / "service.log"
    with running_service(log_path, database_url=creators_database, workers="1", require_api_key="true",
                         api_token=ADMIN, webhook_dispatch="false") as (service_url, _):
        yield service_url


def send(url: str, method: str, path: str, body: dict | None = None, key: str = ADMIN):
    """One call with ``Authorization: Bearer key``: ``(status, JSON body)``."""
    status, _, document = call(f"{url}{path}", method, body, {"Authorization": f"Bearer {key}"})
    return status, document


def make_key(url: str, name: str) -> dict:
    status, made = send(url, "POST", "/api/keys", {"name": name, "scopes": ["transfers", "accounts", "read",
                                                                            "events", "assets"]})
    assert status == 201, made
    return made


def creator(key: dict) -> dict:
    return {"keyId": key["keyId"], "name": key["name"]}


def funded_accounts(url: str, count: int = 2, funds: int = 1000) -> tuple[str, list[int]]:
    """A new asset with ``count`` accounts, each credited ``funds`` by ADMIN."""
    code = f"c{uuid.uuid4().hex[:8]}"
    assert send(url, "POST", "/api/assets", {"code": code, "scale": 0})[0] == 201
    ids = []
    for _ in range(count):
        status, made = send(url, "POST", "/api/accounts", {"asset": code})
        assert status == 201
        assert send(url, "POST", f"/api/accounts/{made['accountId']}/credit", {"amount": funds})[0] == 200
        ids.append(made["accountId"])
    return code, ids


def transfer_of(url: str, transfer_id: int) -> dict:
    status, found = send(url, "GET", f"/api/transfers/{transfer_id}")
    assert status == 200
    return found


def test_a_transfer_names_the_key_that_made_it(url):
    key = make_key(url, "game server")
    _, (source, destination) = funded_accounts(url)
    status, made = send(url, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination,
                                                         "amount": 5}, key["key"])
    assert status == 201 and made["createdBy"] == creator(key)
    assert transfer_of(url, made["transferId"])["createdBy"] == creator(key)


def test_a_balance_change_credit_and_debit_name_the_key_on_their_transfers(url):
    key = make_key(url, "wallet")
    _, (account_id, _other) = funded_accounts(url)
    _, credited = send(url, "POST", f"/api/accounts/{account_id}/credit", {"amount": 7}, key["key"])
    _, debited = send(url, "POST", f"/api/accounts/{account_id}/debit", {"amount": 3}, key["key"])
    _, changed = send(url, "PATCH", "/api/balance", {"userId": 1, "amount": 2}, key["key"])
    for answer in (credited, debited, changed):
        assert transfer_of(url, answer["transferId"])["createdBy"] == creator(key)


def test_an_api_token_is_named_as_its_configured_key(url):
    _, (source, destination) = funded_accounts(url)
    _, made = send(url, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination, "amount": 1})
    assert made["createdBy"]["name"] == "API_TOKEN" and isinstance(made["createdBy"]["keyId"], int)


def test_a_hold_names_the_key_that_made_it_whoever_posts_it(url):
    maker, poster = make_key(url, "checkout"), make_key(url, "shipping")
    _, (source, destination) = funded_accounts(url)
    _, held = send(url, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination, "amount": 9,
                                                    "pending": True}, maker["key"])
    status, posted = send(url, "POST", f"/api/transfers/{held['transferId']}/post", {}, poster["key"])
    assert status == 200 and posted["createdBy"] == creator(maker)


def test_a_reversal_names_the_key_that_asked_for_it(url):
    maker, reverser = make_key(url, "shop"), make_key(url, "support")
    _, (source, destination) = funded_accounts(url)
    _, made = send(url, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination, "amount": 9},
                   maker["key"])
    status, reversal = send(url, "POST", f"/api/transfers/{made['transferId']}/reverse", {}, reverser["key"])
    assert status == 201 and reversal["createdBy"] == creator(reverser)
    assert transfer_of(url, made["transferId"])["createdBy"] == creator(maker)


@pytest.mark.parametrize("items", [8, 2], ids=["set-based", "item by item"])
def test_every_item_of_a_batch_names_the_key_that_sent_it(url, items):
    key = make_key(url, f"batch of {items}")
    _, (source, destination) = funded_accounts(url)
    body = {"atomic": False, "transfers": [{"fromAccountId": source, "toAccountId": destination, "amount": 1}] * items}
    status, result = send(url, "POST", "/api/transfers/batch", body, key["key"])
    assert status == 200 and [item["transfer"]["createdBy"] for item in result["results"]] == [creator(key)] * items


def test_the_change_feed_names_the_key_of_each_transfer_event(url):
    key = make_key(url, "feed reader")
    code, (source, destination) = funded_accounts(url)
    _, made = send(url, "POST", "/api/transfers", {"fromAccountId": source, "toAccountId": destination, "amount": 4},
                   key["key"])
    status, page = send(url, "GET", f"/api/events?asset={code}&types=transfer.created&limit=100")
    assert status == 200
    documents = {event["data"]["transferId"]: event["data"] for event in page["events"]}
    assert documents[made["transferId"]]["createdBy"] == creator(key)
    assert {document["createdBy"]["name"] for document in documents.values()} == {"API_TOKEN", "feed reader"}


async def test_changes_and_transfers_of_two_keys_batched_together_each_name_their_own(url):
    first, second = make_key(url, "racer one"), make_key(url, "racer two")
    _, (source, destination) = funded_accounts(url, funds=100_000)

    async def fire(session: aiohttp.ClientSession, key: dict, i: int) -> tuple[dict, int]:
        headers = {"Authorization": f"Bearer {key['key']}"}
        if i % 2:
            request = session.post(f"{url}/api/accounts/{source}/debit", json={"amount": 1}, headers=headers)
        else:
            request = session.post(f"{url}/api/transfers", json={"fromAccountId": source, "toAccountId": destination,
                                                                  "amount": 1}, headers=headers)
        async with request as response:
            assert response.status in (200, 201)
            return key, (await response.json())["transferId"]

    async with aiohttp.ClientSession() as session:  # one worker's batcher gathers them into mixed batches
        fired = await asyncio.gather(*(fire(session, (first, second)[i % 3 == 0], i) for i in range(120)))
    for key, transfer_id in fired:
        assert transfer_of(url, transfer_id)["createdBy"] == creator(key)


async def test_without_authentication_a_transfer_has_no_creator(http):
    source, destination = await funded_pair(http, 10)
    status, made = await open_transfer(http, source, destination, 3)
    assert status == 201 and made["createdBy"] is None
    assert (await open_send(http, "GET", f"/api/transfers/{made['transferId']}"))[1]["createdBy"] is None


def test_check_names_a_transfer_whose_creator_does_not_exist(create_database):
    url = create_database()
    balance_api("migrate", env=service_env(database_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE transfers SET created_by = 424242 WHERE id = 1")
    result = balance_api("check", env=service_env(database_url=url))
    assert result.returncode == 1 and "FAIL transfer creators" in result.stdout
    assert "transfer 1: created by key 424242, which does not exist" in result.stdout
