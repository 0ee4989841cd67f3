"""The audit log (issue 25): every change that is not a transfer writes, in its own transaction,
who made it, in which request, and the target before and after; GET /api/audit reads it in order."""

from __future__ import annotations

import concurrent.futures
import itertools
import uuid

import pytest

from tests.http_calls import call
from tests.service_process import running_service

ADMIN = "admin-token-for-the-audit-tests"


@pytest.fixture(scope="module")
def url(create_database, tmp_path_factory) -> str:
    log_path = tmp_path_factory.mktemp("audit") / "service.log"
    with running_service(log_path, database_url=create_database(), require_api_key="true", api_token=ADMIN,
                         webhook_dispatch="false", webhook_allow_private_targets="true") as (base_url, _):
        yield base_url


@pytest.fixture(scope="module")
def operator(url) -> dict:
    """A key with every admin scope: the actor of the changes below."""
    status, _, made = call(f"{url}/api/keys", "POST", {"name": "operator console", "scopes": [
        "read", "transfers", "accounts", "assets", "webhooks", "keys", "audit"]}, {"Authorization": f"Bearer {ADMIN}"})
    assert status == 201
    return made


def as_operator(url: str, operator: dict, method: str, path: str, body: dict | None = None):
    """A call by the operator's key with a fresh X-Request-ID: (status, body, the request id)."""
    request_id = f"req-{uuid.uuid4().hex}"
    status, _, answer = call(f"{url}{path}", method, body,
                             {"Authorization": f"Bearer {operator['key']}", "X-Request-ID": request_id})
    return status, answer, request_id


def entries(url: str, target: str | None = None, after: str | None = None, limit: int = 1000) -> tuple[list, str]:
    query = "&".join(f"{k}={v}" for k, v in (("target", target), ("after", after), ("limit", limit)) if v)
    status, _, page = call(f"{url}/api/audit?{query}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, page
    return page["entries"], page["nextCursor"]


def last_entry(url: str, target: str) -> dict:
    return entries(url, target)[0][-1]


def assert_logged(entry: dict, action: str, target: str, request_id: str, operator: dict) -> None:
    assert (entry["action"], entry["target"], entry["requestId"]) == (action, target, request_id)
    assert entry["actor"] == {"keyId": operator["keyId"], "name": "operator console"}
    assert set(entry) == {"id", "cursor", "at", "actor", "requestId", "action", "target", "before", "after"}


def new_account(url: str, operator: dict, **fields) -> int:
    status, account, _ = as_operator(url, operator, "POST", "/api/accounts", {"asset": "default", **fields})
    assert status == 201, account
    return account["accountId"]


def test_creating_an_asset_is_logged_with_the_asset_after(url, operator):
    code = f"A{uuid.uuid4().hex[:8]}"
    status, _, request_id = as_operator(url, operator, "POST", "/api/assets", {"code": code, "scale": 2})
    assert status == 201
    entry = last_entry(url, f"asset:{code}")
    assert_logged(entry, "asset.created", f"asset:{code}", request_id, operator)
    assert entry["before"] is None and (entry["after"]["code"], entry["after"]["scale"]) == (code, 2)


def test_creating_a_user_logs_its_account(url, operator):
    _, user, request_id = as_operator(url, operator, "POST", "/api/users", {})
    account_id = user["accounts"][0]["accountId"]
    entry = last_entry(url, f"account:{account_id}")
    assert_logged(entry, "account.created", f"account:{account_id}", request_id, operator)
    assert entry["after"]["user_id"] == user["userId"]


def test_opening_an_account_is_logged(url, operator):
    _, account, request_id = as_operator(url, operator, "POST", "/api/accounts",
                                              {"asset": "default", "name": "float", "overdraftLimit": 5})
    entry = last_entry(url, f"account:{account['accountId']}")
    assert_logged(entry, "account.created", f"account:{account['accountId']}", request_id, operator)
    assert entry["before"] is None and (entry["after"]["name"], entry["after"]["overdraft_limit"]) == ("float", 5)


def test_changing_an_account_logs_it_before_and_after(url, operator):
    account_id = new_account(url, operator, name="old")
    status, _, request_id = as_operator(url, operator, "PATCH", f"/api/accounts/{account_id}",
                                        {"name": "new", "maxBalance": 100})
    assert status == 200
    entry = last_entry(url, f"account:{account_id}")
    assert_logged(entry, "account.updated", f"account:{account_id}", request_id, operator)
    assert (entry["before"]["name"], entry["before"]["max_balance"]) == ("old", None)
    assert (entry["after"]["name"], entry["after"]["max_balance"]) == ("new", 100)


@pytest.mark.parametrize("route, action, status_after", [
    ("freeze", "account.frozen", "frozen"), ("close", "account.closed", "closed")])
def test_freezing_and_closing_are_logged(url, operator, route, action, status_after):
    account_id = new_account(url, operator)
    status, _, request_id = as_operator(url, operator, "POST", f"/api/accounts/{account_id}/{route}")
    assert status == 200
    entry = last_entry(url, f"account:{account_id}")
    assert_logged(entry, action, f"account:{account_id}", request_id, operator)
    assert (entry["before"]["status"], entry["after"]["status"]) == ("open", status_after)


def test_unfreezing_is_logged(url, operator):
    account_id = new_account(url, operator)
    as_operator(url, operator, "POST", f"/api/accounts/{account_id}/freeze")
    _, _, request_id = as_operator(url, operator, "POST", f"/api/accounts/{account_id}/unfreeze")
    entry = last_entry(url, f"account:{account_id}")
    assert_logged(entry, "account.unfrozen", f"account:{account_id}", request_id, operator)
    assert (entry["before"]["status"], entry["after"]["status"]) == ("frozen", "open")


def test_a_credit_that_opens_an_account_logs_the_opening(url, operator):
    code = f"C{uuid.uuid4().hex[:8]}"
    as_operator(url, operator, "POST", "/api/assets", {"code": code, "scale": 0})
    user_id = as_operator(url, operator, "POST", "/api/users", {})[1]["userId"]
    status, credited, request_id = as_operator(url, operator, "POST", f"/api/users/{user_id}/credit",
                                               {"amount": 5, "asset": code})
    assert status == 200
    entry = last_entry(url, f"account:{credited['accountId']}")
    assert_logged(entry, "account.created", f"account:{credited['accountId']}", request_id, operator)


def test_making_and_revoking_a_key_are_logged_without_its_text(url, operator):
    _, made, request_id = as_operator(url, operator, "POST", "/api/keys", {"name": "job", "scopes": ["read"]})
    entry = last_entry(url, f"key:{made['keyId']}")
    assert_logged(entry, "key.created", f"key:{made['keyId']}", request_id, operator)
    assert entry["after"]["name"] == "job" and "digest" not in entry["after"] and made["key"] not in str(entry)
    _, _, request_id = as_operator(url, operator, "DELETE", f"/api/keys/{made['keyId']}")
    entry = last_entry(url, f"key:{made['keyId']}")
    assert_logged(entry, "key.revoked", f"key:{made['keyId']}", request_id, operator)
    assert entry["before"]["revoked_at"] is None and entry["after"]["revoked_at"] is not None


def test_webhook_changes_are_logged_without_the_secret(url, operator):
    status, hook, request_id = as_operator(url, operator, "POST", "/api/webhooks", {"url": "http://127.0.0.1:9/h"})
    target = f"webhook:{hook['webhookId']}"
    entry = last_entry(url, target)
    assert_logged(entry, "webhook.created", target, request_id, operator)
    assert entry["after"]["url"] == "http://127.0.0.1:9/h" and "secret" not in entry["after"]
    _, _, request_id = as_operator(url, operator, "PATCH", f"/api/webhooks/{hook['webhookId']}",
                                        {"description": "ops"})
    entry = last_entry(url, target)
    assert_logged(entry, "webhook.updated", target, request_id, operator)
    assert (entry["before"]["description"], entry["after"]["description"]) == (None, "ops")
    _, _, request_id = as_operator(url, operator, "DELETE", f"/api/webhooks/{hook['webhookId']}")
    entry = last_entry(url, target)
    assert_logged(entry, "webhook.deleted", target, request_id, operator)
    assert entry["after"] is None and entry["before"]["description"] == "ops"
    assert hook["secret"] not in str(entries(url, target)[0])


def test_a_refused_change_is_not_logged(url, operator):
    account_id = new_account(url, operator)
    as_operator(url, operator, "POST", f"/api/accounts/{account_id}/close")
    before = entries(url, f"account:{account_id}")[0]
    assert as_operator(url, operator, "PATCH", f"/api/accounts/{account_id}", {"name": "x"})[0] == 409
    assert entries(url, f"account:{account_id}")[0] == before


def test_a_replayed_request_is_logged_once(url, operator):
    key = f"audit-{uuid.uuid4()}"
    headers = {"Authorization": f"Bearer {operator['key']}", "Idempotency-Key": key}
    first = call(f"{url}/api/accounts", "POST", {"asset": "default"}, headers)[2]
    assert call(f"{url}/api/accounts", "POST", {"asset": "default"}, headers)[2] == first
    assert len(entries(url, f"account:{first['accountId']}")[0]) == 1


def test_transfers_are_not_in_the_audit_log(url, operator):
    user_id = as_operator(url, operator, "POST", "/api/users", {})[1]["userId"]
    head = entries(url)[1]
    assert as_operator(url, operator, "POST", f"/api/users/{user_id}/credit", {"amount": 5})[0] == 200
    assert as_operator(url, operator, "PATCH", "/api/balance", {"userId": user_id, "amount": -2})[0] == 200
    assert entries(url, after=head)[0] == []


def test_without_authentication_the_actor_is_null(service_url):
    _, _, account = call(f"{service_url}/api/accounts", "POST", {"asset": "default"})
    page = call(f"{service_url}/api/audit?target=account:{account['accountId']}")[2]
    assert page["entries"][-1]["actor"] is None


def test_an_api_token_is_named_as_the_actor_by_the_key_it_is_stored_as(url):
    _, _, account = call(f"{url}/api/accounts", "POST", {"asset": "default"}, {"Authorization": f"Bearer {ADMIN}"})
    keys = call(f"{url}/api/keys", headers={"Authorization": f"Bearer {ADMIN}"})[2]["keys"]
    token_key = next(k["keyId"] for k in keys if k["name"] == "API_TOKEN")
    assert last_entry(url, f"account:{account['accountId']}")["actor"] == {"keyId": token_key, "name": "API_TOKEN"}


def test_pages_follow_one_another_from_the_cursor(url, operator):
    account_id = new_account(url, operator)
    for n in range(5):
        as_operator(url, operator, "PATCH", f"/api/accounts/{account_id}", {"name": f"n{n}"})
    target, seen, after = f"account:{account_id}", [], None
    while True:
        page, after = entries(url, target, after, limit=2)
        if not page:
            break
        seen += page
    assert [e["after"]["name"] for e in seen] == [None, "n0", "n1", "n2", "n3", "n4"]
    assert [e["id"] for e in seen] == sorted(e["id"] for e in seen)


def test_concurrent_changes_of_one_account_are_logged_in_the_order_applied(url, operator):
    """20 limit changes at once, some with idempotency keys (their transaction takes an id before it
    waits for the row): each entry's before is the previous entry's after."""
    account_id = new_account(url, operator)

    def change(n: int):
        headers = {"Authorization": f"Bearer {operator['key']}"}
        if n % 2:
            headers["Idempotency-Key"] = f"limit-{uuid.uuid4()}"
        return call(f"{url}/api/accounts/{account_id}", "PATCH", {"overdraftLimit": n + 1}, headers)[0]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert set(pool.map(change, range(20))) == {200}
    logged = entries(url, f"account:{account_id}")[0][1:]
    assert len(logged) == 20
    for previous, entry in itertools.pairwise(logged):
        assert entry["before"]["overdraft_limit"] == previous["after"]["overdraft_limit"]


@pytest.mark.parametrize("query, field", [
    ("target=account", "target"), ("target=bank:1", "target"), ("after=xyz", "after"), ("limit=0", "limit"),
    ("limit=1001", "limit"), ("actor=1", "actor")])
def test_a_malformed_audit_query_is_422_naming_its_parameter(url, query, field):
    status, _, problem = call(f"{url}/api/audit?{query}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert (status, problem["code"]) == (422, "validation_error")
    assert [e["field"] for e in problem["errors"]] == [field]


def test_reading_the_audit_log_needs_the_audit_scope(url):
    status, _, made = call(f"{url}/api/keys", "POST", {"name": "reader", "scopes": ["read"]},
                           {"Authorization": f"Bearer {ADMIN}"})
    status, _, problem = call(f"{url}/api/audit", headers={"Authorization": f"Bearer {made['key']}"})
    assert (status, problem["code"], problem["requiredScope"]) == (403, "forbidden", "audit")
