"""The edges of the error contract: path and query parameters, headers, and the HTTP layer itself.

Every bad request is answered 4xx/5xx problem details with a stable ``code``, changes nothing,
quotes none of the request's bytes, and is logged without a traceback (issue 21). The service is
this module's own, so that its log holds only what these tests sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import aiohttp
import pytest

from tests.conftest import database_fingerprint
from tests.ledger_api import assert_problem, new_account, new_asset, send
from tests.openapi_contract import contract_middleware
from tests.service_process import running_service

HUGE = "9" * 5000  # past Python's 4,300-digit int() limit


@pytest.fixture(scope="module")
def edge_service(database_url, service_url, tmp_path_factory):
    """This module's service (BODY_READ_TIMEOUT=1 s) and its log file."""
    log_path = tmp_path_factory.mktemp("edges") / "service.log"
    with running_service(log_path, database_url=database_url, body_read_timeout="1",
                         log_level="INFO") as (url, _process):
        yield url, log_path


@pytest.fixture
async def edge_http(edge_service, openapi_contract):
    async with aiohttp.ClientSession(base_url=edge_service[0],
                                     middlewares=(contract_middleware(openapi_contract),)) as session:
        yield session


async def raw_exchange(url: str, request: bytes, wait: float = 10) -> bytes:
    """Send ``request`` as bytes on a new connection; everything answered until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    try:
        async with asyncio.timeout(wait):
            return await reader.read()
    finally:
        writer.close()


def parsed(answer: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


# --- path parameters --------------------------------------------------------------------------

BAD_IDS = {"5000 digits": HUGE, "past bigint": "9223372036854775808", "zero": "0", "negative": "-1",
           "fraction": "1.5", "letters": "abc", "non-ASCII digits": "%D9%A1"}
ID_ROUTES = ["/api/users/{}", "/api/users/{}/history", "/api/accounts/{}", "/api/accounts/{}/history",
             "/api/accounts/{}/balance", "/api/transfers/{}"]


@pytest.mark.parametrize("route", ID_ROUTES)
@pytest.mark.parametrize("raw", BAD_IDS.values(), ids=BAD_IDS.keys())
async def test_an_id_in_the_path_that_is_no_bigint_is_422_naming_id(edge_http, route, raw):
    status, body = await send(edge_http, "GET", route.format(raw))
    assert_problem((status, body), 422, "validation_error")
    assert [error["field"] for error in body["errors"]] == ["id"]


@pytest.mark.parametrize("route", ["/api/accounts/{}/freeze", "/api/transfers/{}/void", "/api/users/{}/credit"])
async def test_a_5000_digit_id_on_a_mutating_route_is_422_and_changes_nothing(edge_http, db, route):
    before = database_fingerprint(db)
    status, body = await send(edge_http, "POST", route.format(HUGE), {"amount": 1} if "credit" in route else {})
    assert_problem((status, body), 422, "validation_error")
    assert database_fingerprint(db) == before


@pytest.mark.parametrize("code", ["a%00b", "a-b", "x" * 33, "%C3%A9"], ids=["NUL", "dash", "33 characters", "é"])
async def test_an_asset_code_in_the_path_outside_the_bodies_pattern_is_422(edge_http, code):
    status, body = await send(edge_http, "GET", f"/api/assets/{code}")
    assert_problem((status, body), 422, "validation_error")
    assert [error["field"] for error in body["errors"]] == ["code"]


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "PUT"])
async def test_another_method_on_the_batch_route_is_405_allowing_only_post(edge_http, method):
    async with edge_http.request(method, "/api/transfers/batch") as response:
        body = await response.json(content_type=None)
        assert_problem((response.status, body), 405, "method_not_allowed")
        assert response.headers["Allow"] == "POST"


# --- query parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("limit", HUGE), ("accountId", HUGE), ("limit", "0"), ("accountId", "-3")])
async def test_an_integer_query_parameter_out_of_range_is_422_naming_it(edge_http, name, value):
    status, body = await send(edge_http, "GET", "/api/transfers", **{name: value})
    assert_problem((status, body), 422, "validation_error")
    assert [error["field"] for error in body["errors"]] == [name]


OUT_OF_RANGE_TIMES = {"year 1 east of UTC": "0001-01-01T00:30:00+01:00",
                      "year 9999 west of UTC": "9999-12-31T23:30:00-01:00"}


@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize("moment", OUT_OF_RANGE_TIMES.values(), ids=OUT_OF_RANGE_TIMES.keys())
async def test_a_time_outside_years_1_to_9999_in_utc_is_422_in_from_and_to(edge_http, name, moment):
    status, body = await send(edge_http, "GET", "/api/transfers", **{name: moment})
    assert_problem((status, body), 422, "validation_error")
    assert [error["field"] for error in body["errors"]] == [name]


@pytest.mark.parametrize("moment", OUT_OF_RANGE_TIMES.values(), ids=OUT_OF_RANGE_TIMES.keys())
async def test_a_balance_at_a_time_outside_years_1_to_9999_in_utc_is_422(edge_http, moment):
    account = await new_account(edge_http, await new_asset(edge_http))
    status, body = await send(edge_http, "GET", f"/api/accounts/{account['accountId']}/balance", at=moment)
    assert_problem((status, body), 422, "validation_error")
    assert [error["field"] for error in body["errors"]] == ["at"]


async def test_a_time_with_an_offset_is_compared_in_utc(edge_http):
    account = await new_account(edge_http, await new_asset(edge_http))
    status, body = await send(edge_http, "GET", f"/api/accounts/{account['accountId']}/balance",
                              at="9999-12-31T23:30:00+01:00")
    assert (status, body["balance"]) == (200, 0)


# --- headers and bodies -----------------------------------------------------------------------

async def test_a_repeated_idempotency_key_header_is_400_header_repeated_and_changes_nothing(edge_service, db):
    before = database_fingerprint(db)
    key = uuid.uuid4().hex
    answer = await raw_exchange(edge_service[0], (
        "POST /api/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n"
        f"Idempotency-Key: {key}\r\nIdempotency-Key: {key}-2\r\n\r\n").encode())
    status, headers, body = parsed(answer)
    assert_problem((status, body), 400, "header_repeated")
    assert body["header"] == "Idempotency-Key"
    assert database_fingerprint(db) == before


async def test_post_users_with_an_idempotency_key_makes_one_user_and_replays_it(edge_http):
    key = {"Idempotency-Key": uuid.uuid4().hex}
    async with edge_http.post("/api/users", headers=key) as first:
        made = await first.json()
    async with edge_http.post("/api/users", headers=key) as second:
        again = await second.json()
        assert (first.status, second.status, second.headers.get("Idempotent-Replayed")) == (201, 201, "true")
    assert again == made


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
async def test_a_body_in_utf_16_or_utf_32_is_400_malformed_json_and_changes_nothing(edge_http, db, encoding):
    before = database_fingerprint(db)
    async with edge_http.post("/api/assets", data=json.dumps({"code": "utf16_x", "scale": 0}).encode(encoding),
                              headers={"Content-Type": "application/json"}) as response:
        assert_problem((response.status, await response.json(content_type=None)), 400, "malformed_json")
    assert database_fingerprint(db) == before


async def test_a_body_with_a_utf_8_byte_order_mark_is_read(edge_http):
    code = f"bom_{uuid.uuid4().hex[:8]}"
    async with edge_http.post("/api/assets", data=b"\xef\xbb\xbf" + json.dumps({"code": code, "scale": 0}).encode(),
                              headers={"Content-Type": "application/json"}) as response:
        assert response.status == 201


async def test_a_problem_about_a_path_or_query_parameter_is_not_titled_as_a_body_problem(edge_http):
    status, body = await send(edge_http, "GET", "/api/transfers", limit="0")
    assert body["title"] == "Request is invalid"


async def test_a_closed_account_refuses_limit_and_metadata_changes_with_409_account_closed(edge_http, db):
    account = await new_account(edge_http, await new_asset(edge_http))
    path = f"/api/accounts/{account['accountId']}"
    assert (await send(edge_http, "POST", f"{path}/close", {}))[0] == 200
    before = database_fingerprint(db)
    for change in ({"overdraftLimit": 5}, {"maxBalance": 10}, {"metadata": {"a": "b"}}, {"name": "renamed"}):
        status, body = await send(edge_http, "PATCH", path, change)
        assert_problem((status, body), 409, "account_closed")
    assert database_fingerprint(db) == before


# --- the HTTP layer, over raw sockets ---------------------------------------------------------

TRANSFER = b'{"fromAccountId": 1, "toAccountId": 2, "amount": 1}'
MALFORMED_REQUESTS = {
    "control byte in a header": b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Secret: a\x01secret\r\n\r\n",
    "Content-Length with chunked": (b"POST /api/transfers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "invalid method": b"G@T /api/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown HTTP version": b"GET /api/health HTTP/7.1\r\nHost: x\r\n\r\n",
    "request line over 8 KiB": b"GET /api/secret" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8 KiB": b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Secret: " + b"a" * 9000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
async def test_a_request_the_http_parser_refuses_is_400_problem_details_quoting_nothing(edge_service, request_bytes):
    status, headers, body = parsed(await raw_exchange(edge_service[0], request_bytes))
    assert headers["content-type"].startswith("application/problem+json")
    assert_problem((status, body), 400, "malformed_http_request")
    assert "secret" not in json.dumps(body) and "aaaa" not in json.dumps(body)


async def test_nothing_after_a_malformed_request_on_its_connection_is_executed(edge_service, db):
    before = database_fingerprint(db)
    answer = await raw_exchange(edge_service[0], (
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n"
        b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
    status_lines = re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3})", answer)
    assert status_lines == [b"400"]
    assert database_fingerprint(db) == before


@pytest.mark.parametrize("coding", ["gzip", "gzip, chunked", "deflate, chunked"])
async def test_a_transfer_coding_other_than_chunked_is_501_and_changes_nothing(edge_service, db, coding):
    before = database_fingerprint(db)
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(TRANSFER), TRANSFER)
    status, headers, body = parsed(await raw_exchange(edge_service[0], (
        b"POST /api/transfers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: %s\r\n\r\n%s" % (coding.encode(), chunk))))
    assert_problem((status, body), 501, "unsupported_transfer_coding")
    assert database_fingerprint(db) == before


async def test_an_expectation_other_than_100_continue_is_417_problem_details(edge_service):
    status, headers, body = parsed(await raw_exchange(edge_service[0], (
        b"POST /api/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n"
        b"Expect: secret-thing\r\n\r\n")))
    assert_problem((status, body), 417, "expectation_failed")
    assert "secret" not in json.dumps(body)


async def test_expect_100_continue_is_answered_100_then_the_request_runs(edge_service):
    answer = await raw_exchange(edge_service[0], (
        b"POST /api/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n"
        b"Content-Type: application/json\r\nExpect: 100-continue\r\n\r\n{}"))
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 ")


async def test_a_body_that_stalls_is_cut_off_with_408_and_the_connection_closed(edge_service, db):
    before = database_fingerprint(db)
    host, port = edge_service[0].removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 10\r\n\r\n{")
    await writer.drain()
    async with asyncio.timeout(15):  # BODY_READ_TIMEOUT is 1 s here
        answer = await reader.read()  # until the server closes
    writer.close()
    status, headers, body = parsed(answer)
    assert_problem((status, body), 408, "request_timeout")
    assert headers.get("connection", "").lower() == "close"
    assert database_fingerprint(db) == before


@pytest.mark.parametrize("path", ["/api/docs/static/no-such-file.js", "/api/docs/static/"])
async def test_a_static_path_naming_no_file_is_404_route_not_found(edge_http, path):
    async with edge_http.get(path) as response:
        body = await response.json(content_type=None)
        assert response.content_type == "application/problem+json"
        assert_problem((response.status, body), 404, "route_not_found")


async def test_a_static_file_that_exists_is_served(edge_http):
    async with edge_http.get("/api/docs") as page:
        html = await page.text()
    script = html.split('src="')[1].split('"')[0]
    async with edge_http.get(script) as response:
        assert response.status == 200


# --- the log ----------------------------------------------------------------------------------

async def test_zz_the_log_holds_no_traceback_after_every_bad_request_above(edge_service):
    """Named to run last in this module: every test above sent its bad input to this service."""
    log = edge_service[1].read_text()
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]
    assert "malformed HTTP request" in log
