"""Every bad request gets a 4xx RFC 9457 problem with a stable code, and changes nothing."""

import pytest

from tests.conftest import database_fingerprint
from tests.ledger_api import assert_problem, send



INVALID_BODIES = {
    "amount true": (b'{"userId": %d, "amount": true}', "amount"),
    "amount false": (b'{"userId": %d, "amount": false}', "amount"),
    "amount string": (b'{"userId": %d, "amount": "2"}', "amount"),
    "amount fraction": (b'{"userId": %d, "amount": 2.5}', "amount"),
    "amount 2.0": (b'{"userId": %d, "amount": 2.0}', "amount"),
    "amount NaN": (b'{"userId": %d, "amount": NaN}', "amount"),
    "amount Infinity": (b'{"userId": %d, "amount": Infinity}', "amount"),
    "amount -Infinity": (b'{"userId": %d, "amount": -Infinity}', "amount"),
    "amount 1e400": (b'{"userId": %d, "amount": 1e400}', "amount"),
    "amount zero": (b'{"userId": %d, "amount": 0}', "amount"),
    "amount minus zero": (b'{"userId": %d, "amount": -0}', "amount"),
    "amount null": (b'{"userId": %d, "amount": null}', "amount"),
    "amount list": (b'{"userId": %d, "amount": [2]}', "amount"),
    "amount past bigint": (b'{"userId": %d, "amount": 9223372036854775808}', "amount"),
    "amount below -bigint": (b'{"userId": %d, "amount": -9223372036854775808}', "amount"),
    "amount 30 digits": (b'{"userId": %d, "amount": 999999999999999999999999999999}', "amount"),
    "amount 5000 digits": (b'{"userId": %d, "amount": -' + b"9" * 5000 + b"}", "amount"),
    "amount missing": (b'{"userId": %d}', "amount"),
    "unknown field": (b'{"userId": %d, "amount": -2, "currency": "EUR"}', "currency"),
    "userId string": (b'{"userId": "%d", "amount": -2}', "userId"),
    "userId zero": (b'{"userId": 0, "amount": -2}', "userId"),
    "userId negative": (b'{"userId": -1, "amount": -2}', "userId"),
    "userId missing": (b'{"amount": -2}', "userId"),
    "snake_case userId": (b'{"user_id": %d, "amount": -2}', "userId"),
    "body is a list": (b"[1]", "(body)"),
    "body is a number": (b"5", "(body)"),
    "body is null": (b"null", "(body)"),
}


@pytest.mark.parametrize("template, field", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
async def test_an_invalid_body_is_422_validation_error_naming_the_field(http, new_user, db, template, field):
    user = new_user(100)
    body = template % user if b"%d" in template else template
    before = database_fingerprint(db)
    response = await send(http, "PATCH", "/api/balance", data=body)
    assert_problem(response, 422, "validation_error")
    assert field in [error["field"] for error in response.body["errors"]]
    assert all(error["reason"] for error in response.body["errors"])
    assert database_fingerprint(db) == before


MALFORMED_BODIES = {
    "truncated": b'{"userId": 1, "amount": -2',
    "trailing garbage": b'{"userId": 1, "amount": -2} x',
    "single quotes": b"{'userId': 1, 'amount': -2}",
    "empty": b"",
    "not utf-8": b'{"userId": 1, "amount": -2, "\xff": 1}',
    "deeply nested": b"[" * 2000 + b"]" * 2000,
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
async def test_malformed_json_is_400_malformed_json(http, db, body):
    before = database_fingerprint(db)
    response = await send(http, "PATCH", "/api/balance", data=body)
    assert_problem(response, 400, "malformed_json")
    assert database_fingerprint(db) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_non_json_content_type_is_415(http, db, content_type):
    before = database_fingerprint(db)
    response = await send(http, "PATCH", "/api/balance", data=b'{"userId": 1, "amount": -2}', content_type=content_type)
    assert_problem(response, 415, "unsupported_media_type")
    assert database_fingerprint(db) == before


async def test_a_json_content_type_with_charset_is_accepted(http, new_user):
    user = new_user(5)
    body = b'{"userId": %d, "amount": -1}' % user
    response = await send(http, "PATCH", "/api/balance", data=body, content_type="application/json; charset=utf-8")
    assert (response.status, response.body["balance"]) == (200, 4)


async def test_an_oversized_body_is_413(http, new_user, db):
    user = new_user(100)
    body = b'{"userId": %d, "amount": -2, "pad": "%s"}' % (user, b"x" * 20_000)
    before = database_fingerprint(db)
    response = await send(http, "PATCH", "/api/balance", data=body)
    assert_problem(response, 413, "payload_too_large")
    assert database_fingerprint(db) == before


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
async def test_a_wrong_method_is_405_with_allow(http, db, method):
    before = database_fingerprint(db)
    response = await send(http, method, "/api/balance", data=b'{"userId": 1, "amount": -2}')
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "PATCH"
    assert database_fingerprint(db) == before


async def test_an_unknown_route_is_404_route_not_found(http):
    response = await send(http, "GET", "/api/nothing-here", content_type=None)
    assert_problem(response, 404, "route_not_found")
    assert response.body["instance"] == "/api/nothing-here"


def test_zz_the_service_log_holds_no_traceback_after_the_bad_input_above(service_url, service_log_path):
    """Named to run last in this module: bad input is logged as a request line, never a traceback."""
    log = service_log_path.read_text()
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]
