"""Webhooks (issue 24): endpoints made, read, changed and deleted; every event delivered in feed
order, signed as Standard Webhooks says (verified with the library); failures retried on the
schedule, then disabled; one delivery at a time per endpoint across two workers; nothing lost by
kill -9; non-public targets refused unless allowed."""

import asyncio
import signal

import aiohttp
import pytest

from tests.feed_reading import read_feed
from tests.ledger_api import assert_problem, credit, new_account, new_asset, send, transfer
from tests.metrics_reading import scrape
from tests.service_process import free_port, running_service
from tests.webhook_receiver import Receiver

SETTINGS = {"webhook_allow_private_targets": "true", "webhook_retry_schedule": "0.2,0.2,0.2",
            "events_poll_interval": "0.05"}


@pytest.fixture(scope="module")
def webhook_service(create_database, tmp_path_factory):
    """A service of two workers on a database of its own that sends webhooks to loopback targets."""
    log_path = tmp_path_factory.mktemp("webhooks") / "service.log"
    with running_service(log_path, database_url=create_database(), workers="2", **SETTINGS) as (url, _):
        yield url


@pytest.fixture
async def hooks(webhook_service):
    async with aiohttp.ClientSession(base_url=webhook_service) as session:
        yield session


@pytest.fixture
async def receiver():
    got = Receiver()
    await got.start()
    yield got
    await got.stop()


async def _webhook(http, url: str, **fields) -> dict:
    status, body = await send(http, "POST", "/api/webhooks", {"url": url, **fields})
    assert status == 201, body
    return body


async def _until(condition, seconds: float = 30) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def _pair(http, funds: int) -> tuple[str, int, int]:
    code = await new_asset(http, prefix="hook")
    alice, bob = (await new_account(http, code))["accountId"], (await new_account(http, code))["accountId"]
    assert (await credit(http, alice, funds))[0] == 200
    return code, alice, bob


async def test_an_endpoint_is_made_with_its_secret_shown_once(hooks, receiver):
    status, made = await send(hooks, "POST", "/api/webhooks", {"url": receiver.url, "types": ["transfer.created"],
                                                               "description": "receipts"})
    assert status == 201
    assert made["secret"].startswith("whsec_") and made["status"] == "enabled" and made["types"] == ["transfer.created"]
    webhook_id = made["webhookId"]
    status, read = await send(hooks, "GET", f"/api/webhooks/{webhook_id}")
    assert status == 200 and "secret" not in read and read["url"] == receiver.url
    assert webhook_id in [w["webhookId"] for w in (await send(hooks, "GET", "/api/webhooks"))[1]["webhooks"]]
    assert all("secret" not in w for w in (await send(hooks, "GET", "/api/webhooks"))[1]["webhooks"])
    await send(hooks, "DELETE", f"/api/webhooks/{webhook_id}")


async def test_an_endpoint_is_changed_and_deleted(hooks, receiver):
    webhook_id = (await _webhook(hooks, receiver.url))["webhookId"]
    status, changed = await send(hooks, "PATCH", f"/api/webhooks/{webhook_id}",
                                 {"types": ["account.frozen"], "description": "x", "status": "disabled"})
    assert status == 200
    assert (changed["types"], changed["description"], changed["status"]) == (["account.frozen"], "x", "disabled")
    status, changed = await send(hooks, "PATCH", f"/api/webhooks/{webhook_id}", {"types": None})
    assert changed["types"] is None and changed["status"] == "disabled"
    answer = await send(hooks, "DELETE", f"/api/webhooks/{webhook_id}")
    assert answer.status == 204 and answer.raw == b""
    assert_problem(await send(hooks, "GET", f"/api/webhooks/{webhook_id}"), 404, "webhook_not_found")
    assert_problem(await send(hooks, "GET", f"/api/webhooks/{webhook_id}/deliveries"), 404, "webhook_not_found")
    assert_problem(await send(hooks, "DELETE", f"/api/webhooks/{webhook_id}"), 404, "webhook_not_found")


async def test_every_event_is_delivered_in_feed_order_signed_as_standard_webhooks_says(hooks, receiver):
    made = await _webhook(hooks, receiver.url)
    code, alice, bob = await _pair(hooks, 100)
    for amount in range(1, 11):
        assert (await transfer(hooks, alice, bob, amount))[0] == 201
    feed, _ = await read_feed(hooks, made["cursor"], asset=code)
    assert len(feed) == 14  # the asset, two accounts, the credit, ten transfers
    assert await _until(lambda: len(receiver.events(code)) == len(feed))
    assert [{k: v for k, v in e.items() if k != "timestamp"} for e in receiver.events(code)] == feed
    assert all(e["timestamp"] == e["occurredAt"] for e in receiver.events(code))
    receiver.verify_all(made["secret"])
    headers = receiver.got[-1][0]
    assert headers["webhook-id"] == receiver.events()[-1]["id"]
    await send(hooks, "DELETE", f"/api/webhooks/{made['webhookId']}")


async def test_a_signature_made_with_another_secret_does_not_verify(hooks, receiver):
    from standardwebhooks import Webhook, WebhookVerificationError
    made = await _webhook(hooks, receiver.url)
    await _pair(hooks, 1)
    assert await _until(lambda: receiver.got)
    headers, body = receiver.got[0]
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(body, {k.lower(): v for k, v in headers.items()})
    await send(hooks, "DELETE", f"/api/webhooks/{made['webhookId']}")


async def test_an_endpoint_gets_only_the_types_it_asked_for(hooks, receiver):
    made = await _webhook(hooks, receiver.url, types=["account.created"])
    code, _, _ = await _pair(hooks, 5)
    assert await _until(lambda: len(receiver.events(code)) == 2)
    await asyncio.sleep(0.3)
    assert [e["type"] for e in receiver.events(code)] == ["account.created", "account.created"]
    await send(hooks, "DELETE", f"/api/webhooks/{made['webhookId']}")


async def test_a_failed_delivery_is_retried_with_the_same_id_and_nothing_after_it_goes_first(hooks, receiver):
    receiver.fail_next = 2
    made = await _webhook(hooks, receiver.url, types=["transfer.created"])
    code, alice, bob = await _pair(hooks, 10)
    await transfer(hooks, alice, bob, 1)
    assert await _until(lambda: len(receiver.events(code)) == 2)
    assert [e["data"]["toBalance"] for e in receiver.events(code)] == [10, 1]
    _, deliveries = await send(hooks, "GET", f"/api/webhooks/{made['webhookId']}/deliveries")
    attempts = list(reversed(deliveries["deliveries"]))
    assert [(d["attempt"], d["statusCode"]) for d in attempts] == [(1, 500), (2, 500), (3, 204), (1, 204)]
    assert attempts[0]["eventId"] == attempts[1]["eventId"] == attempts[2]["eventId"] != attempts[3]["eventId"]
    assert attempts[0]["error"] == "answered HTTP 500" and attempts[0]["nextRetryAt"] is not None
    assert attempts[2]["nextRetryAt"] is None
    await send(hooks, "DELETE", f"/api/webhooks/{made['webhookId']}")


async def test_an_endpoint_that_keeps_failing_is_disabled_after_the_schedule_and_resumes_when_enabled(hooks,
                                                                                                    receiver):
    receiver.fail_next = 10**6
    made = await _webhook(hooks, receiver.url, types=["transfer.created"])
    code, _, _ = await _pair(hooks, 10)

    async def status() -> dict:
        return (await send(hooks, "GET", f"/api/webhooks/{made['webhookId']}"))[1]

    for _ in range(200):
        if (await status())["status"] == "disabled":
            break
        await asyncio.sleep(0.05)
    disabled = await status()
    assert disabled["status"] == "disabled" and disabled["disabledAt"] is not None
    assert receiver.attempts == 4  # the first attempt and one per delay of the schedule (3)
    receiver.fail_next = 0
    enabled = (await send(hooks, "PATCH", f"/api/webhooks/{made['webhookId']}", {"status": "enabled"}))[1]
    assert (enabled["status"], enabled["failures"]) == ("enabled", 0)
    assert await _until(lambda: len(receiver.events(code)) == 1)
    await send(hooks, "DELETE", f"/api/webhooks/{made['webhookId']}")


async def test_two_workers_send_an_endpoint_one_event_at_a_time(hooks):
    receiver = Receiver(delay=0.01)
    await receiver.start()
    try:
        made = await _webhook(hooks, receiver.url, types=["transfer.created"])
        code, alice, bob = await _pair(hooks, 1000)
        await asyncio.gather(*(transfer(hooks, alice, bob, 1) for _ in range(60)))
        assert await _until(lambda: len(receiver.events(code)) == 61)
        assert receiver.max_in_flight == 1
        assert [e["data"]["fromBalance"] for e in receiver.events(code)[1:]] == list(range(999, 939, -1))
        await send(hooks, "DELETE", f"/api/webhooks/{made['webhookId']}")
    finally:
        await receiver.stop()


async def test_delivery_metrics_count_outcomes_and_lag(hooks, receiver, webhook_service):
    receiver.fail_next = 1
    made = await _webhook(hooks, receiver.url)
    code, _, _ = await _pair(hooks, 1)
    assert await _until(lambda: len(receiver.events(code)) == 4)
    samples = scrape(webhook_service)
    assert samples[("webhook_deliveries_total", frozenset({("outcome", "delivered")}))] >= 4
    assert samples[("webhook_deliveries_total", frozenset({("outcome", "failed")}))] >= 1
    lag = {("webhook_lag_events", frozenset({("webhook", str(made["webhookId"]))})),
           ("webhook_lag_seconds", frozenset({("webhook", str(made["webhookId"]))}))}
    assert await _until(lambda: lag <= scrape(webhook_service).keys(), 15)
    await send(hooks, "DELETE", f"/api/webhooks/{made['webhookId']}")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/", "https://192.168.0.1/",
                                 "http://0.0.0.0/", "http://no-such-host.invalid/"])
async def test_a_non_public_target_is_refused_unless_allowed(http, url):
    answer = await send(http, "POST", "/api/webhooks", {"url": url})
    assert_problem(answer, 422, "webhook_target_not_allowed")
    assert answer.body["url"] == url


@pytest.mark.parametrize("body", [{"url": "ftp://example.com/"}, {"url": "example.com"}, {},
                                  {"url": "https://example.com/", "types": ["transfer.made"]},
                                  {"url": "https://example.com/", "types": []},
                                  {"url": "https://example.com/", "types": ["asset.created", "asset.created"]},
                                  {"url": "https://example.com/", "secret": "mine"}])
async def test_a_malformed_webhook_is_refused(http, body):
    assert_problem(await send(http, "POST", "/api/webhooks", body), 422, "validation_error")


async def test_an_unknown_webhook_is_not_found(http):
    assert_problem(await send(http, "GET", "/api/webhooks/424242"), 404, "webhook_not_found")
    assert_problem(await send(http, "PATCH", "/api/webhooks/424242", {"description": "x"}), 404, "webhook_not_found")


async def test_kill_9_of_the_service_mid_delivery_loses_nothing(create_database, tmp_path):
    """Deliveries are at least once: after kill -9 and a restart every event arrives, in feed
    order, an event at most repeated (the one in flight when the process died)."""
    database_url, port = create_database(), str(free_port())
    receiver = Receiver(delay=0.005)
    await receiver.start()
    try:
        with running_service(tmp_path / "first.log", database_url=database_url, port=port, **SETTINGS) as (url,
                                                                                                          first):
            async with aiohttp.ClientSession(base_url=url) as http:
                made = await _webhook(http, receiver.url, types=["transfer.created"])
                code, alice, bob = await _pair(http, 1000)
                for _ in range(150):
                    await transfer(http, alice, bob, 1)
                assert await _until(lambda: len(receiver.got) >= 20)
                first.send_signal(signal.SIGKILL)
                first.wait(10)
        delivered_before = len(receiver.got)
        with running_service(tmp_path / "second.log", database_url=database_url, port=port, **SETTINGS) as (url, _):
            async with aiohttp.ClientSession(base_url=url) as http:
                feed, _ = await read_feed(http, made["cursor"], asset=code, types="transfer.created")
                assert len(feed) == 151
                assert await _until(lambda: {e["id"] for e in receiver.events(code)} == {e["id"] for e in feed}, 60)
        got = [e["id"] for e in receiver.events(code)]
        order = [e["id"] for e in feed]
        assert delivered_before < 151 and len(got) - 151 <= 1  # at most the one in flight again
        assert [order.index(i) for i in got] == sorted(order.index(i) for i in got)
        receiver.verify_all(made["secret"])
    finally:
        await receiver.stop()
