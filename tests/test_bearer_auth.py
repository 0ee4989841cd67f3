"""Optional bearer-token authentication (RFC 6750): off by default; with API_TOKEN or
API_TOKENS_FILE every route but /api/health, /metrics and the API reference page (/api/docs)
needs the token."""

import urllib.request

import pytest

from tests.conftest import database_fingerprint
from tests.http_calls import call
from tests.service_process import balance_api, running_service, service_env

TOKEN = "s3cret-token_1.A~b+c/d="


def authorized_call(url: str, method: str = "GET", body: dict | None = None, token: str | None = None,
         authorization: str | None = None):
    """:func:`tests.http_calls.call` with ``Authorization: Bearer <token>`` or the header as given."""
    if token is not None:
        authorization = f"Bearer {token}"
    return call(url, method, body, {"Authorization": authorization} if authorization is not None else None)


@pytest.fixture(scope="module")
def protected_url(database_url, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("auth") / "service.log"
    with running_service(log_path, database_url=database_url, api_token=TOKEN) as (url, _):
        yield url


def test_without_a_token_configured_no_authorization_is_needed(service_url):
    status, headers, _ = authorized_call(f"{service_url}/api/users/1")
    assert status == 200 and "WWW-Authenticate" not in headers


def test_a_request_without_a_token_is_401_problem_with_a_bearer_challenge(protected_url):
    status, headers, problem = authorized_call(f"{protected_url}/api/balance", "PATCH", {"userId": 1, "amount": 1})
    assert (status, headers["Content-Type"], problem["code"]) == (401, "application/problem+json", "unauthorized")
    assert headers["WWW-Authenticate"] == 'Bearer realm="balance-api"'


def test_a_wrong_token_is_401_with_error_invalid_token(protected_url):
    status, headers, problem = authorized_call(f"{protected_url}/api/users/1", token="not-the-token")
    assert (status, problem["code"]) == (401, "unauthorized")
    assert headers["WWW-Authenticate"] == 'Bearer realm="balance-api", error="invalid_token"'


@pytest.mark.parametrize("authorization", [f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"])
def test_other_schemes_and_near_misses_are_refused(protected_url, authorization):
    assert authorized_call(f"{protected_url}/api/users/1", authorization=authorization)[0] == 401


def test_the_right_token_is_let_through(protected_url):
    status, _, body = authorized_call(f"{protected_url}/api/balance", "PATCH", {"userId": 1, "amount": 1}, token=TOKEN)
    assert status == 200 and body["userId"] == 1


def test_the_scheme_name_is_case_insensitive(protected_url):
    assert authorized_call(f"{protected_url}/api/users/1", authorization=f"bearer {TOKEN}")[0] == 200


def test_a_refused_request_changes_nothing(protected_url, db):
    before = database_fingerprint(db)
    assert authorized_call(f"{protected_url}/api/balance", "PATCH", {"userId": 1, "amount": 5}, token="wrong")[0] == 401
    assert database_fingerprint(db) == before


def test_the_api_reference_page_its_assets_and_its_document_need_no_token(protected_url):
    for path in ("/api/docs", "/api/docs/", "/api/docs/static/swagger-ui.css", "/api/docs/openapi.json"):
        with urllib.request.urlopen(f"{protected_url}{path}", timeout=10) as response:
            assert response.status == 200, path
    assert authorized_call(f"{protected_url}/api/docsx")[0] == 401  # only the page's own paths are open


def test_health_and_metrics_need_no_token(protected_url):
    assert authorized_call(f"{protected_url}/api/health")[0] == 200
    with urllib.request.urlopen(f"{protected_url}/metrics", timeout=10) as response:
        assert response.status == 200


def test_every_other_route_needs_the_token(protected_url):
    for method, path in [("GET", "/api/openapi.json"), ("POST", "/api/users"), ("GET", "/api/transfers/1"),
                         ("GET", "/api/users/1/history"), ("GET", "/no/such/route")]:
        assert authorized_call(f"{protected_url}{path}", method)[0] == 401, path


def test_a_tokens_file_grants_each_of_its_tokens_and_ignores_comments(database_url, tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# one token per line\nfirst-token\n\n  second-token  \n")
    with running_service(tmp_path / "service.log", database_url=database_url,
                         api_tokens_file=str(tokens_file)) as (url, _):
        assert authorized_call(f"{url}/api/users/1", token="first-token")[0] == 200
        assert authorized_call(f"{url}/api/users/1", token="second-token")[0] == 200
        assert authorized_call(f"{url}/api/users/1", token="# one token per line")[0] == 401


def test_a_missing_tokens_file_is_refused_at_start_up(tmp_path):
    result = balance_api("serve", env=service_env(api_tokens_file=str(tmp_path / "absent")))
    assert result.returncode == 2 and "API_TOKENS_FILE" in result.stderr


def test_a_token_with_characters_outside_rfc_6750_is_refused_at_start_up():
    result = balance_api("serve", env=service_env(api_token="has space"))
    assert result.returncode == 2 and "b64token" in result.stderr and "has space" not in result.stderr


def test_configured_tokens_are_keys_with_every_scope_that_can_be_revoked(create_database, tmp_path):
    """Each API_TOKENS_FILE line becomes a key (every scope) when the service starts; revoking one
    refuses it, also after a restart, while the others keep working."""
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# rotation\nfirst-token\nsecond-token\n")
    database = create_database()
    with running_service(tmp_path / "a.log", database_url=database, api_tokens_file=str(tokens_file)) as (url, _):
        keys = authorized_call(f"{url}/api/keys", token="first-token")[2]["keys"]
        assert [(k["name"], len(k["scopes"])) for k in keys] == [("API_TOKENS_FILE line 2", 8),
                                                                ("API_TOKENS_FILE line 3", 8)]
        assert authorized_call(f"{url}/api/keys/{keys[1]['keyId']}", "DELETE", token="first-token")[0] == 204
        assert authorized_call(f"{url}/api/users/1", token="second-token")[0] == 401
    with running_service(tmp_path / "b.log", database_url=database, api_tokens_file=str(tokens_file)) as (url, _):
        assert authorized_call(f"{url}/api/users/1", token="second-token")[0] == 401
        assert authorized_call(f"{url}/api/users/1", token="first-token")[0] == 200
        assert len(authorized_call(f"{url}/api/keys", token="first-token")[2]["keys"]) == 2
