"""Scoped API keys (issue 25): made by ``balance-api keys`` and ``POST /api/keys``, stored as
digests, checked per request on every worker, each route needing its scope."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import statistics
import time
import urllib.request

import aiohttp
import psycopg
import pytest

from server.http.app import ROUTES
from server.ledger.api_keys import SCOPES
from tests.http_calls import call
from tests.service_process import balance_api, running_service, service_env

ADMIN = "admin-token-for-the-key-tests"
MISSING_ID = "999999999"  # no account, user, transfer, webhook or key has it


@pytest.fixture(scope="module")
def keys_database(create_database) -> str:
    return create_database()


@pytest.fixture(scope="module")
def keyed_service(keys_database, tmp_path_factory):
    """Two workers, keys required, ADMIN an API_TOKEN (every scope)."""
    log_path = tmp_path_factory.mktemp("keys") / "service.log"
    with running_service(log_path, database_url=keys_database, workers="2", require_api_key="true",
                         api_token=ADMIN, webhook_dispatch="false", log_level="INFO",
                         request_log_level="INFO") as (url, _):
        yield url, log_path


@pytest.fixture(scope="module")
def url(keyed_service) -> str:
    return keyed_service[0]


def send(url: str, method: str, path: str, body: dict | None = None, key: str | None = ADMIN,
         headers: dict[str, str] | None = None):
    """One call with ``Authorization: Bearer key`` (none when ``key`` is None)."""
    auth = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return call(f"{url}{path}", method, body, {**auth, **(headers or {})})


def make_key(url: str, scopes: list[str], **fields) -> dict:
    status, _, made = send(url, "POST", "/api/keys", {"name": f"test {'+'.join(scopes)}", "scopes": scopes, **fields})
    assert status == 201, made
    return made


def test_post_api_keys_answers_201_with_the_key_shown_once(url):
    made = make_key(url, ["read", "transfers"], expiresInSeconds=3600)
    assert set(made) >= {"keyId", "key", "name", "scopes", "assets", "expiresAt", "createdAt"}
    assert made["key"].startswith("bak_") and made["scopes"] == ["read", "transfers"] and made["assets"] is None
    listed = send(url, "GET", "/api/keys")[2]["keys"]
    mine = next(k for k in listed if k["keyId"] == made["keyId"])
    assert "key" not in mine and mine["hint"] == made["key"][-4:]


def test_a_new_key_is_let_through_on_every_worker(url):
    key = make_key(url, ["read"])["key"]
    assert all(send(url, "GET", "/api/users/1", key=key)[0] == 200 for _ in range(20))


def test_the_database_holds_only_the_digest_of_a_key(url, keys_database):
    made = make_key(url, ["read"])
    with psycopg.connect(keys_database) as conn:
        digest, hint = conn.execute("SELECT digest, hint FROM api_keys WHERE id = %s", (made["keyId"],)).fetchone()
        dump = conn.execute("SELECT string_agg(k::text, '') || coalesce((SELECT string_agg(a::text, '') "
                            "FROM audit_log a), '') FROM api_keys k").fetchone()[0]
    assert bytes(digest) == hashlib.sha256(made["key"].encode()).digest() and hint == made["key"][-4:]
    assert made["key"] not in dump and made["key"][4:20] not in dump


def test_balance_api_keys_create_prints_the_key_once_and_list_never(keys_database, url):
    env = service_env(database_url=keys_database)
    created = balance_api("keys", "create", "--name", "cli", "--scopes", "read,events", "--expires-in", "90d", env=env)
    assert created.returncode == 0, created.stderr
    key = re.search(r'"key": "(bak_[A-Za-z0-9_-]{43})"', created.stdout)[1]
    assert send(url, "GET", "/api/events?limit=1", key=key)[0] == 200
    listed = balance_api("keys", "list", env=env)
    assert listed.returncode == 0 and '"name": "cli"' in listed.stdout and key not in listed.stdout
    key_id = re.search(r'"keyId": (\d+)', created.stdout)[1]
    revoked = balance_api("keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0 and '"revokedAt": "' in revoked.stdout
    assert send(url, "GET", "/api/events?limit=1", key=key)[0] == 401


def test_balance_api_keys_refuses_an_unknown_scope_and_a_bad_duration(keys_database):
    env = service_env(database_url=keys_database)
    assert balance_api("keys", "create", "--name", "x", "--scopes", "root", env=env).returncode == 2
    assert balance_api("keys", "create", "--name", "x", "--scopes", "read", "--expires-in", "soon",
                       env=env).returncode == 2
    assert balance_api("keys", "revoke", MISSING_ID, env=env).returncode == 1


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "scopes": []}, "scopes"),
    ({"name": "x", "scopes": ["root"]}, "scopes.0"),
    ({"name": "x", "scopes": ["read", "read"]}, "scopes"),
    ({"name": "", "scopes": ["read"]}, "name"),
    ({"name": "x", "scopes": ["read"], "expiresInSeconds": 0}, "expiresInSeconds"),
    ({"name": "x", "scopes": ["read"], "expiresInSeconds": 2.5}, "expiresInSeconds"),
    ({"name": "x", "scopes": ["read"], "owner": "me"}, "owner"),
])
def test_a_malformed_key_request_is_422_naming_its_field(url, body, field):
    status, _, problem = send(url, "POST", "/api/keys", body)
    assert (status, problem["code"]) == (422, "validation_error")
    assert field in [error["field"] for error in problem["errors"]]


def test_a_key_for_an_unknown_asset_is_404(url):
    status, _, problem = send(url, "POST", "/api/keys", {"name": "x", "scopes": ["read"], "assets": ["NOPE"]})
    assert (status, problem["code"]) == (404, "asset_not_found")


def test_revoking_an_unknown_key_is_404(url):
    status, _, problem = send(url, "DELETE", f"/api/keys/{MISSING_ID}")
    assert (status, problem["code"]) == (404, "api_key_not_found")


def test_a_revoked_key_is_401_and_revoking_it_again_is_204(url):
    made = make_key(url, ["read"])
    assert send(url, "DELETE", f"/api/keys/{made['keyId']}")[0] == 204
    status, headers, problem = send(url, "GET", "/api/users/1", key=made["key"])
    assert (status, problem["code"]) == (401, "unauthorized") and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert send(url, "DELETE", f"/api/keys/{made['keyId']}")[0] == 204
    listed = {k["keyId"]: k for k in send(url, "GET", "/api/keys")[2]["keys"]}
    assert listed[made["keyId"]]["revokedAt"] is not None


def test_an_expired_key_is_401(url):
    made = make_key(url, ["read"], expiresInSeconds=1)
    assert send(url, "GET", "/api/users/1", key=made["key"])[0] == 200
    time.sleep(1.2)
    assert send(url, "GET", "/api/users/1", key=made["key"])[0] == 401


def _concrete(path: str) -> str:
    path = re.sub(r"\{id[^}]*\}", MISSING_ID, path)
    return path.replace("{code}", "NOPE")


SCOPED_ROUTES = [(method, path, scope) for method, path, _, scope in ROUTES if scope is not None]


@pytest.fixture(scope="module")
def keys_by_scope(url) -> dict[str, tuple[str, str]]:
    """For each scope: (a key with only that scope, a key with every other scope)."""
    return {scope: (make_key(url, [scope])["key"], make_key(url, [s for s in SCOPES if s != scope])["key"])
            for scope in SCOPES}


@pytest.mark.parametrize("method, path, scope", SCOPED_ROUTES, ids=[f"{m} {p}" for m, p, _ in SCOPED_ROUTES])
def test_each_route_needs_its_scope_and_no_other(url, keys_by_scope, method, path, scope):
    only, all_but = keys_by_scope[scope]
    target = _concrete(path) + ("?limit=1" if path == "/api/events" else "")
    if path == "/api/events/stream":  # never ends: the status line is enough
        async def status_of(key: str) -> int:
            async with aiohttp.ClientSession() as session, session.get(
                    f"{url}{target}", headers={"Authorization": f"Bearer {key}"}) as response:
                return response.status
        assert asyncio.run(status_of(only)) == 200
        assert asyncio.run(status_of(all_but)) == 403
        return
    allowed = send(url, method, target, {} if method != "GET" else None, key=only)
    assert allowed[0] not in (401, 403), allowed
    status, _, problem = send(url, method, target, {} if method != "GET" else None, key=all_but)
    assert (status, problem["code"], problem["requiredScope"]) == (403, "forbidden", scope)


def test_a_refused_scope_changes_nothing(url, keys_by_scope, keys_database):
    read_only = keys_by_scope["read"][0]
    with psycopg.connect(keys_database) as conn:
        before = conn.execute("SELECT balance FROM accounts WHERE user_id = 1").fetchone()
        status, _, problem = send(url, "PATCH", "/api/balance", {"userId": 1, "amount": 5}, key=read_only)
        assert (status, problem["requiredScope"]) == (403, "transfers")
        assert conn.execute("SELECT balance FROM accounts WHERE user_id = 1").fetchone() == before


def test_a_transfers_key_moves_money_in_batches_too(url, keys_by_scope):
    spender = keys_by_scope["transfers"][0]
    users = [send(url, "POST", "/api/users", {})[2]["userId"] for _ in range(2)]
    assert send(url, "POST", f"/api/users/{users[0]}/credit", {"amount": 10}, key=spender)[0] == 200
    accounts = [send(url, "GET", f"/api/users/{u}")[2]["accounts"][0]["accountId"] for u in users]
    batch = {"atomic": True, "transfers": [{"fromAccountId": accounts[0], "toAccountId": accounts[1], "amount": 3}]}
    status, _, answer = send(url, "POST", "/api/transfers/batch", batch, key=spender)
    assert status in (200, 201), answer
    status, _, problem = send(url, "POST", "/api/transfers/batch", batch, key=keys_by_scope["transfers"][1])
    assert (status, problem["requiredScope"]) == (403, "transfers")


def test_api_token_keeps_every_scope(url):
    for method, path, scope in SCOPED_ROUTES:
        if path != "/api/events/stream":
            assert send(url, method, _concrete(path), {} if method != "GET" else None)[0] not in (401, 403), path


def test_revocation_racing_200_requests_on_two_workers_refuses_every_request_sent_after_it(url):
    """200 credits with one key over two workers while the key is revoked: every request sent after
    the revoke's answer is 401, and the ledger has exactly the credits answered 200."""
    made = make_key(url, ["transfers", "read"])
    user = send(url, "POST", "/api/users", {})[2]["userId"]
    revoked_at: list[float] = []

    async def race() -> list[tuple[float, int]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
            async def credit(n: int) -> tuple[float, int]:
                await asyncio.sleep(n * 0.002)  # spread over 0.4 s, the revoke in the middle
                sent = time.monotonic()
                async with session.post(f"{url}/api/users/{user}/credit", json={"amount": 1},
                                        headers={"Authorization": f"Bearer {made['key']}"}) as response:
                    return sent, response.status

            async def revoke() -> None:
                await asyncio.sleep(0.2)
                async with session.delete(f"{url}/api/keys/{made['keyId']}",
                                          headers={"Authorization": f"Bearer {ADMIN}"}) as response:
                    assert response.status == 204
                revoked_at.append(time.monotonic())

            results = await asyncio.gather(*(credit(n) for n in range(200)), revoke())
            return results[:-1]

    results = asyncio.run(race())
    after = [status for sent, status in results if sent > revoked_at[0]]
    assert after and set(after) == {401}
    succeeded = sum(status == 200 for _, status in results)
    assert {status for _, status in results} <= {200, 401} and 0 < succeeded < 200
    assert send(url, "GET", f"/api/users/{user}")[2]["balance"] == succeeded


def test_wrong_keys_are_401_in_the_same_time_however_close_to_a_real_one(url):
    """Random keys, a real key with its last character changed, and a revoked key: all 401, and no
    kind is answered measurably faster or slower (medians of interleaved samples)."""
    real = make_key(url, ["read"])["key"]
    revoked = make_key(url, ["read"])
    send(url, "DELETE", f"/api/keys/{revoked['keyId']}")
    kinds = {"random": lambda: "bak_" + secrets.token_urlsafe(32),
             "near miss": lambda: real[:-1] + ("A" if real[-1] != "A" else "B"),
             "revoked": lambda: revoked["key"]}

    async def measure() -> dict[str, list[float]]:
        timings: dict[str, list[float]] = {kind: [] for kind in kinds}
        async with aiohttp.ClientSession() as session:
            for _ in range(150):
                for kind, key in kinds.items():
                    started = time.perf_counter()
                    async with session.get(f"{url}/api/users/1", headers={"Authorization": f"Bearer {key()}"}) as r:
                        await r.read()
                        assert r.status == 401
                    timings[kind].append(time.perf_counter() - started)
        return timings

    medians = {kind: statistics.median(samples) for kind, samples in asyncio.run(measure()).items()}
    fastest, slowest = min(medians.values()), max(medians.values())
    assert slowest - fastest < max(0.25 * fastest, 0.0005), medians


def test_no_key_appears_in_the_logs_or_the_metrics(keyed_service):
    url, log_path = keyed_service
    made = make_key(url, ["read"])
    send(url, "GET", "/api/users/1", key=made["key"])
    send(url, "GET", "/api/users/1", key=made["key"] + "x")
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert made["key"] not in response.read().decode()
    assert made["key"] not in log_path.read_text() and ADMIN not in log_path.read_text()


@pytest.fixture(scope="module")
def limited_setup(url) -> dict:
    """Asset LIM with two funded accounts, a hold in the default asset, and a key limited to LIM."""
    code = f"LIM{secrets.token_hex(3)}"
    assert send(url, "POST", "/api/assets", {"code": code, "scale": 0})[0] == 201
    mine = [send(url, "POST", "/api/accounts", {"asset": code})[2]["accountId"] for _ in range(2)]
    assert send(url, "POST", f"/api/accounts/{mine[0]}/credit", {"amount": 100})[0] == 200
    users = [send(url, "POST", "/api/users", {})[2]["userId"] for _ in range(2)]
    theirs = [send(url, "GET", f"/api/users/{u}")[2]["accounts"][0]["accountId"] for u in users]
    assert send(url, "POST", f"/api/accounts/{theirs[0]}/credit", {"amount": 100})[0] == 200
    hold = send(url, "POST", "/api/transfers", {"fromAccountId": theirs[0], "toAccountId": theirs[1], "amount": 5,
                                                "pending": True})[2]["transferId"]
    key = make_key(url, ["read", "transfers", "accounts", "events"], assets=[code])
    assert key["assets"] == [code]
    return {"code": code, "mine": mine, "theirs": theirs, "users": users, "hold": hold, "key": key["key"]}


def _forbidden_asset(answer) -> str:
    status, _, problem = answer
    assert (status, problem["code"]) == (403, "forbidden"), problem
    return problem["requiredAsset"]


def test_a_key_limited_to_an_asset_moves_money_in_it(url, limited_setup):
    s = limited_setup
    moved = send(url, "POST", "/api/transfers", {"fromAccountId": s["mine"][0], "toAccountId": s["mine"][1],
                                                 "amount": 1}, key=s["key"])
    assert moved[0] == 201, moved
    assert send(url, "POST", f"/api/accounts/{s['mine'][1]}/debit", {"amount": 1}, key=s["key"])[0] == 200
    assert send(url, "GET", f"/api/accounts/{s['mine'][0]}", key=s["key"])[0] == 200


def test_a_key_limited_to_an_asset_cannot_touch_another_by_any_route(url, limited_setup, keys_database):
    s, key = limited_setup, limited_setup["key"]
    with psycopg.connect(keys_database) as conn:
        before = conn.execute("SELECT sum(amount), count(*) FROM ledger_entries").fetchone()
    refused = [
        send(url, "PATCH", "/api/balance", {"userId": s["users"][0], "amount": 1}, key=key),
        send(url, "POST", f"/api/users/{s['users'][0]}/credit", {"amount": 1}, key=key),
        send(url, "POST", f"/api/accounts/{s['theirs'][0]}/debit", {"amount": 1}, key=key),
        send(url, "POST", "/api/transfers", {"fromAccountId": s["theirs"][0], "toAccountId": s["theirs"][1],
                                             "amount": 1}, key=key),
        send(url, "POST", "/api/transfers", {"fromAccountId": s["mine"][0], "toAccountId": s["theirs"][1],
                                             "amount": 1}, key=key),
        send(url, "POST", "/api/transfers/batch", {"atomic": False, "transfers": [
            {"fromAccountId": s["mine"][0], "toAccountId": s["mine"][1], "amount": 1},
            {"fromAccountId": s["theirs"][0], "toAccountId": s["theirs"][1], "amount": 1}]}, key=key),
        send(url, "POST", "/api/transfers/batch", {"atomic": False, "transfers": [{"post": s["hold"]}]}, key=key),
        send(url, "POST", f"/api/transfers/{s['hold']}/post", {}, key=key),
        send(url, "POST", f"/api/transfers/{s['hold']}/void", {}, key=key),
        send(url, "POST", f"/api/transfers/{s['hold']}/reverse", {}, key=key),
        send(url, "POST", f"/api/accounts/{s['theirs'][0]}/freeze", {}, key=key),
        send(url, "PATCH", f"/api/accounts/{s['theirs'][0]}", {"name": "x"}, key=key),
        send(url, "POST", "/api/accounts", {"asset": "default"}, key=key),
        send(url, "POST", "/api/users", {}, key=key),
        send(url, "GET", f"/api/accounts/{s['theirs'][0]}", key=key),
        send(url, "GET", f"/api/accounts/{s['theirs'][0]}/history", key=key),
        send(url, "GET", f"/api/accounts/{s['theirs'][0]}/balance", key=key),
        send(url, "GET", f"/api/transfers/{s['hold']}", key=key),
        send(url, "GET", f"/api/transfers?accountId={s['theirs'][0]}", key=key),
        send(url, "GET", f"/api/users/{s['users'][0]}", key=key),
        send(url, "GET", f"/api/users/{s['users'][0]}/history", key=key),
        send(url, "GET", "/api/assets/default", key=key),
        send(url, "GET", "/api/events?asset=default", key=key),
    ]
    assert [_forbidden_asset(answer) for answer in refused] == ["default"] * len(refused)
    with psycopg.connect(keys_database) as conn:
        assert conn.execute("SELECT sum(amount), count(*) FROM ledger_entries").fetchone() == before


def test_a_key_limited_to_an_asset_lists_only_that_asset(url, limited_setup):
    s, key = limited_setup, limited_setup["key"]
    assert [a["code"] for a in send(url, "GET", "/api/assets", key=key)[2]["assets"]] == [s["code"]]
    assert {t["asset"] for t in send(url, "GET", "/api/transfers?limit=500", key=key)[2]["transfers"]} == {s["code"]}
    events = send(url, "GET", "/api/events?limit=1000", key=key)[2]["events"]
    assert events and {e["data"].get("asset", e["data"].get("code")) for e in events} == {s["code"]}


def test_a_key_limited_to_assets_cannot_have_a_scope_over_every_asset(url, limited_setup):
    status, _, problem = send(url, "POST", "/api/keys", {"name": "x", "scopes": ["read", "keys"],
                                                         "assets": [limited_setup["code"]]})
    assert (status, problem["code"]) == (422, "validation_error")


def test_a_balance_change_with_a_key_revoked_since_its_last_use_is_401_and_changes_nothing(url):
    """The balance-change routes admit a key on the grant its worker remembers: the batch refuses it."""
    made = make_key(url, ["transfers", "read"])
    user = send(url, "POST", "/api/users", {})[2]["userId"]
    assert all(send(url, "PATCH", "/api/balance", {"userId": user, "amount": 1}, key=made["key"])[0] == 200
               for _ in range(10))  # both workers have seen it
    assert send(url, "DELETE", f"/api/keys/{made['keyId']}")[0] == 204
    for path, body in (("/api/balance", {"userId": user, "amount": 1}),
                       (f"/api/users/{user}/credit", {"amount": 1}), (f"/api/users/{user}/debit", {"amount": 1})):
        for _ in range(4):
            status, _, problem = send(url, "PATCH" if path == "/api/balance" else "POST", path, body, key=made["key"])
            assert (status, problem["code"]) == (401, "unauthorized")
    assert send(url, "GET", f"/api/users/{user}")[2]["balance"] == 10


def test_a_balance_change_with_an_expired_key_is_401(url):
    made = make_key(url, ["transfers"], expiresInSeconds=1)
    user = send(url, "POST", "/api/users", {})[2]["userId"]
    assert send(url, "PATCH", "/api/balance", {"userId": user, "amount": 1}, key=made["key"])[0] == 200
    time.sleep(1.2)
    assert send(url, "PATCH", "/api/balance", {"userId": user, "amount": 1}, key=made["key"])[0] == 401


def test_a_replayed_key_request_answers_without_the_key_text_which_is_never_stored(url, keys_database):
    headers = {"Idempotency-Key": f"key-{secrets.token_hex(8)}"}
    body = {"name": "replayed", "scopes": ["read"]}
    status, _, first = send(url, "POST", "/api/keys", body, headers=headers)
    status_again, replay_headers, again = send(url, "POST", "/api/keys", body, headers=headers)
    assert (status, status_again, replay_headers["Idempotent-Replayed"]) == (201, 201, "true")
    assert first["key"].startswith("bak_") and again["key"] is None and again["keyId"] == first["keyId"]
    with psycopg.connect(keys_database) as conn:
        stored = conn.execute("SELECT string_agg(coalesce(body, ''), '') FROM idempotency_keys").fetchone()[0]
    assert first["key"] not in stored and first["key"][4:20] not in stored


def test_an_idempotency_key_used_by_another_api_key_is_refused_not_replayed(url):
    one, other = make_key(url, ["accounts"])["key"], make_key(url, ["accounts"])["key"]
    headers = {"Idempotency-Key": f"shared-{secrets.token_hex(8)}"}
    assert send(url, "POST", "/api/accounts", {"asset": "default"}, key=one, headers=headers)[0] == 201
    status, _, problem = send(url, "POST", "/api/accounts", {"asset": "default"}, key=other, headers=headers)
    assert (status, problem["code"]) == (422, "idempotency_key_reused")
