"""The change feed (issue 24): every committed change, exactly once, with its document as right
after the change, in one order that never changes; per account in the order the changes were
applied; long polls and Server-Sent Events; bad queries refused."""

import asyncio
import json
import sys
import threading

import aiohttp
import psycopg
import pytest

from tests.feed_reading import FeedModel, api_state, feed_head, read_feed, read_stream
from tests.ledger_api import account, assert_problem, credit, hold, new_account, new_asset, post, send, transfer, void
from tests.service_process import balance_api, service_env

TRANSFER_FUNDS = "SELECT outcome FROM transfer_funds(%s, NULL, %s, NULL, NULL, %s, 'transfer', NULL, NULL, NULL, " \
                 "false, NULL, NULL)"


async def _asset_with_accounts(http, count: int, funds: int = 0) -> tuple[str, list[int]]:
    code = await new_asset(http, prefix="feed")
    ids = [(await new_account(http, code))["accountId"] for _ in range(count)]
    for account_id in ids[:1] if funds else ():
        assert (await credit(http, account_id, funds))[0] == 200
    return code, ids


async def test_each_kind_of_change_is_one_event_with_its_document_as_right_after_it(http, db):
    start = feed_head(db)
    code = await new_asset(http, prefix="feed")
    alice, bob = (await new_account(http, code))["accountId"], (await new_account(http, code))["accountId"]
    assert (await credit(http, alice, 100))[0] == 200
    status, moved = await transfer(http, alice, bob, 30)
    assert status == 201
    held = (await hold(http, alice, bob, 20, timeoutSeconds=3600))[1]
    posted = (await post(http, held["transferId"], 15))[1]
    voided = (await void(http, (await hold(http, alice, bob, 5))[1]["transferId"]))[1]
    reversal = (await send(http, "POST", f"/api/transfers/{moved['transferId']}/reverse", {"amount": 10}))[1]
    assert (await send(http, "PATCH", f"/api/accounts/{bob}", {"overdraftLimit": 7}))[0] == 200
    assert (await send(http, "POST", f"/api/accounts/{bob}/freeze"))[0] == 200
    assert (await send(http, "POST", f"/api/accounts/{bob}/unfreeze"))[0] == 200

    events, _ = await read_feed(http, start, asset=code)
    assert [e["type"] for e in events] == [
        "asset.created", "account.created", "account.created", "transfer.created", "transfer.created",
        "transfer.pending", "transfer.posted", "transfer.pending", "transfer.voided", "transfer.created",
        "account.updated", "account.frozen", "account.unfrozen"]
    assert events[0]["data"]["code"] == code
    assert events[4]["data"] == {**moved, "reversedAmount": 0}  # as made, before the reversal took 10 back
    assert events[5]["data"]["status"] == "pending" and events[5]["data"]["expiresAt"] == held["expiresAt"]
    assert events[6]["data"] == posted
    assert events[8]["data"] == voided
    assert events[9]["data"] == reversal
    assert [e["data"]["status"] for e in events[-3:]] == ["open", "frozen", "open"]
    assert events[-3]["data"]["overdraftLimit"] == 7
    assert events[-1]["data"] == await account(http, bob)


async def test_every_transfer_event_carries_the_balances_its_entries_recorded(http, db):
    start = feed_head(db)
    code, (alice, bob) = await _asset_with_accounts(http, 2, funds=50)
    for amount in (1, 2, 3):
        assert (await transfer(http, alice, bob, amount))[0] == 201
    events, _ = await read_feed(http, start, asset=code, types="transfer.created")
    assert [(e["data"]["fromBalance"], e["data"]["toBalance"]) for e in events] == [
        (None, 50), (49, 1), (47, 3), (44, 6)]


async def test_a_refused_change_has_no_event(http, db):
    code, (alice, bob) = await _asset_with_accounts(http, 2, funds=10)
    start = feed_head(db)
    assert_problem(await transfer(http, alice, bob, 11), 409, "insufficient_funds")
    assert_problem(await send(http, "POST", f"/api/accounts/{alice}/close"), 409, "account_not_empty")
    assert_problem(await send(http, "PATCH", f"/api/accounts/{alice}", {"maxBalance": 5}), 409, "limit_violated")
    status, batch = await send(http, "POST", "/api/transfers/batch", {"atomic": True, "transfers": [
        {"fromAccountId": alice, "toAccountId": bob, "amount": 4},
        {"fromAccountId": alice, "toAccountId": bob, "amount": 7}]})
    assert status == 200 and batch["committed"] is False
    events, _ = await read_feed(http, start, asset=code)
    assert events == []


TRANSFER_ID = "SELECT transfer_id FROM transfer_funds(%s, NULL, %s, NULL, NULL, 1, 'transfer', NULL, NULL, NULL, " \
              "false, NULL, NULL)"


async def test_a_rolled_back_change_has_no_event(http, db, database_url):
    code, (alice, bob) = await _asset_with_accounts(http, 2, funds=10)
    with psycopg.connect(database_url) as conn:
        transfer_id = conn.execute(TRANSFER_ID, (alice, bob)).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM events WHERE %s = ANY (transfer_ids)",
                            (transfer_id,)).fetchone()[0] == 1
        conn.rollback()
    assert db.execute("SELECT count(*) FROM events WHERE %s = ANY (transfer_ids)", (transfer_id,)).fetchone()[0] == 0
    assert [e["type"] for e in (await read_feed(http, feed_head(db), asset=code))[0]] == []


async def test_a_change_cancelled_by_its_statement_timeout_has_no_event(http, db, database_url):
    _, (alice, bob) = await _asset_with_accounts(http, 2, funds=10)
    before = db.execute("SELECT max(id) FROM events").fetchone()[0]
    with psycopg.connect(database_url) as conn:
        conn.execute("SET statement_timeout = 200")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT f.transfer_id, pg_sleep(5) FROM transfer_funds(%s, NULL, %s, NULL, NULL, 1, "
                         "'transfer', NULL, NULL, NULL, false, NULL, NULL) f", (alice, bob))
        conn.rollback()
    assert db.execute("SELECT count(*) FROM events e JOIN transfers t ON t.id = ANY (e.transfer_ids) WHERE e.id > %s "
                      "AND t.from_account_id = %s", (before, alice)).fetchone()[0] == 0
    assert (await account(http, alice))["balance"] == 10


async def test_no_event_is_handed_out_before_an_older_transaction_ends(http, db, database_url):
    """A transaction that began first and commits last still gets its events in front of a later
    one's: the later one's events wait below the horizon, so no cursor is ever handed out past a
    place another event can still take."""
    code, (alice, bob, carol, dave) = await _asset_with_accounts(http, 4)
    assert (await credit(http, alice, 10))[0] == 200
    assert (await credit(http, carol, 10))[0] == 200
    start = feed_head(db)
    with psycopg.connect(database_url) as older:
        older.execute("SELECT pg_current_xact_id()")  # it has a transaction id before the transfer below
        status, later = await transfer(http, alice, bob, 1)
        assert status == 201
        page, cursor = await read_feed(http, start, asset=code)
        assert page == [] and cursor == start  # committed, but behind a transaction still running
        assert older.execute(TRANSFER_FUNDS, (carol, dave, 2)).fetchone()[0] == "transferred"
        older.commit()
    events, _ = await read_feed(http, start, asset=code)
    assert [(e["data"]["fromAccountId"], e["data"]["amount"]) for e in events] == [(carol, 2), (alice, 1)]
    assert events[1]["data"]["transferId"] == later["transferId"]


async def test_per_account_events_follow_the_order_the_changes_were_applied(http, db, database_url):
    """The older transaction takes its id first, then waits for the account's lock behind a younger
    one: ordered by transaction id alone, its change would come first in the feed, though it was
    applied second."""
    _, (alice, bob, carol) = await _asset_with_accounts(http, 3, funds=10)
    start = feed_head(db)
    with psycopg.connect(database_url) as older, psycopg.connect(database_url) as younger:
        older.execute("SELECT pg_current_xact_id()")
        assert younger.execute(TRANSFER_FUNDS, (alice, bob, 3)).fetchone()[0] == "transferred"  # holds alice
        outcome = []
        waiter = threading.Thread(target=lambda: outcome.append(
            older.execute(TRANSFER_FUNDS, (alice, carol, 4)).fetchone()[0]))
        waiter.start()
        await asyncio.sleep(0.5)
        assert waiter.is_alive()  # waiting for alice's row lock
        younger.commit()
        waiter.join(30)
        older.commit()
    assert outcome == ["transferred"]
    events, _ = await read_feed(http, start, accountId=str(alice))
    assert [(e["data"]["toAccountId"], e["data"]["fromBalance"]) for e in events] == [(bob, 7), (carol, 3)]


async def test_the_feed_read_again_from_any_cursor_is_the_same_under_concurrent_writes(http, db):
    code, ids = await _asset_with_accounts(http, 6)
    for account_id in ids:
        assert (await credit(http, account_id, 1000))[0] == 200
    start = feed_head(db)
    seen, cursor, writing, made = [], start, True, []

    async def writer(k: int) -> None:
        for n in range(40):
            status, body = await transfer(http, ids[(k + n) % 3], ids[3 + (k * n) % 3], 1 + n % 3)
            assert status == 201, body
            made.append(body["transferId"])

    async def reader() -> None:
        nonlocal cursor
        while writing:
            page, cursor = await read_feed(http, cursor, asset=code)
            seen.extend(page)
            await asyncio.sleep(0.01)

    reading = asyncio.ensure_future(reader())
    await asyncio.gather(*(writer(k) for k in range(8)))
    writing = False
    await reading
    page, _ = await read_feed(http, cursor, asset=code)
    seen.extend(page)
    again, _ = await read_feed(http, start, asset=code)
    assert [e["id"] for e in seen] == [e["id"] for e in again]
    assert sorted(e["data"]["transferId"] for e in again) == sorted(made) and len(made) == 320
    for middle in (again[50]["id"], again[200]["id"]):
        later, _ = await read_feed(http, middle, asset=code)
        assert [e["id"] for e in later] == [e["id"] for e in again][[e["id"] for e in again].index(middle) + 1:]


async def test_replaying_the_feed_into_an_empty_model_gives_every_account_as_get_reads_it(http, db):
    start = feed_head(db)
    code, ids = await _asset_with_accounts(http, 4, funds=500)
    alice, bob, carol, dave = ids
    await transfer(http, alice, bob, 100)
    await send(http, "PATCH", f"/api/accounts/{carol}", {"overdraftLimit": 40, "maxBalance": 1000})
    await transfer(http, carol, dave, 30)
    held = (await hold(http, bob, carol, 50))[1]
    await post(http, held["transferId"], 20)
    await hold(http, alice, dave, 60)
    await void(http, (await hold(http, dave, alice, 10))[1]["transferId"])
    await send(http, "POST", f"/api/accounts/{dave}/freeze")
    model = FeedModel()
    for event in (await read_feed(http, start, asset=code))[0]:
        model.apply(event)
    for account_id in ids:
        assert model.accounts[account_id].state() == api_state(await account(http, account_id)), account_id


async def test_a_long_poll_answers_at_the_next_event(http, db):
    code, (alice, bob) = await _asset_with_accounts(http, 2, funds=10)
    start = feed_head(db)

    async def later_transfer():
        await asyncio.sleep(0.3)
        return await transfer(http, alice, bob, 2)

    (status, page), (_, made) = await asyncio.gather(
        send(http, "GET", "/api/events", after=start, asset=code, wait="20"), later_transfer())
    assert status == 200
    assert [e["data"]["transferId"] for e in page["events"]] == [made["transferId"]]


async def test_a_long_poll_with_nothing_new_answers_an_empty_page_and_the_same_cursor(http, db):
    code = await new_asset(http, prefix="feed")
    _, cursor = await read_feed(http, feed_head(db), asset=code)
    status, page = await send(http, "GET", "/api/events", after=cursor, asset=code, wait="1")
    assert status == 200 and page == {"events": [], "nextCursor": cursor}


async def test_filters_by_type_asset_and_account(http, db):
    start = feed_head(db)
    code, (alice, bob, carol) = await _asset_with_accounts(http, 3, funds=30)
    await transfer(http, alice, bob, 5)
    await transfer(http, alice, carol, 6)
    only_bob, _ = await read_feed(http, start, accountId=str(bob))
    assert [e["type"] for e in only_bob] == ["account.created", "transfer.created"]
    created, _ = await read_feed(http, start, asset=code, types="account.created,asset.created")
    assert [e["type"] for e in created] == ["asset.created"] + ["account.created"] * 3


async def test_the_stream_sends_events_and_resumes_after_the_last_event_id(http, db, service_url):
    code, (alice, bob) = await _asset_with_accounts(http, 2, funds=100)
    start = feed_head(db)
    for amount in range(1, 6):
        await transfer(http, alice, bob, amount)
    async with aiohttp.ClientSession() as session:
        url = f"{service_url}/api/events/stream"
        first = await read_stream(session, url, 2, after=start, asset=code)
        rest = await read_stream(session, url, 3, last_event_id=first[-1]["id"], after=start, asset=code)
    amounts = [e["data"]["data"]["amount"] for e in first + rest]
    assert amounts == [1, 2, 3, 4, 5]
    assert all(e["event"] == "transfer.created" and e["id"] == e["data"]["id"] for e in first + rest)


@pytest.mark.parametrize("query, field", [
    ({"after": "not-a-cursor"}, "after"), ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
    ({"wait": "31"}, "wait"), ({"wait": "-1"}, "wait"), ({"types": "transfer.made"}, "types"),
    ({"accountId": "0"}, "accountId"), ({"asset": "no spaces"}, "asset"), ({"since": "x"}, "since"),
])
async def test_a_malformed_feed_query_is_refused_naming_its_field(http, query, field):
    answer = await send(http, "GET", "/api/events", **query)
    assert_problem(answer, 422, "validation_error")
    assert [e["field"] for e in answer.body["errors"]] == [field]


async def test_an_unknown_asset_filter_is_not_found(http):
    assert_problem(await send(http, "GET", "/api/events", asset="no_such_asset_here"), 404, "asset_not_found")


async def test_a_malformed_last_event_id_is_refused(http):
    answer = await send(http, "GET", "/api/events/stream", headers={"Last-Event-ID": "garbage"})
    assert_problem(answer, 422, "validation_error")


async def test_the_events_command_prints_the_feed_as_json_lines(http, db, service_url):
    start = feed_head(db)
    code, (alice, bob) = await _asset_with_accounts(http, 2, funds=9)
    await transfer(http, alice, bob, 4)
    printed = await asyncio.to_thread(balance_api, "events", "--url", service_url, "--after", start, "--asset", code)
    assert printed.returncode == 0, printed.stderr
    lines = [json.loads(line) for line in printed.stdout.splitlines()]
    assert lines == (await read_feed(http, start, asset=code))[0]
    assert [e["type"] for e in lines][-1] == "transfer.created"


async def test_the_events_command_follows_the_feed(http, db, service_url):
    code, (alice, bob) = await _asset_with_accounts(http, 2, funds=9)
    start = feed_head(db)
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "events", "--url", service_url, "--after", start, "--asset", code,
        "--follow", stdout=asyncio.subprocess.PIPE, env=service_env())
    try:
        await asyncio.sleep(0.5)
        made = (await transfer(http, alice, bob, 3))[1]
        line = await asyncio.wait_for(follower.stdout.readline(), 30)
        assert json.loads(line)["data"]["transferId"] == made["transferId"]
    finally:
        follower.kill()
        await follower.wait()


async def test_the_events_command_exits_1_with_the_problem_on_a_refusal(service_url):
    printed = await asyncio.to_thread(balance_api, "events", "--url", service_url, "--after", "bad")
    assert printed.returncode == 1
    assert json.loads(printed.stderr)["code"] == "validation_error"
