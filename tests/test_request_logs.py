"""Structured logs: one JSON line per request with method, route, status, duration and request id;
the request id comes from X-Request-ID or is generated, and is echoed back."""

import json
import re
import time

import pytest

from tests.http_calls import call
from tests.service_process import running_service


def log_lines(log_path) -> list[dict]:
    """Every line the service wrote, each parsed as JSON (fails on a line that is not JSON)."""
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def request_lines(log_path, request_id: str, wait: float = 5) -> list[dict]:
    deadline = time.monotonic() + wait
    while True:
        found = [line for line in log_lines(log_path)
                 if line.get("event") == "request" and line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture(scope="module")
def logged_service(database_url, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("logs") / "service.log"
    with running_service(log_path, database_url=database_url, log_level="INFO") as (url, _):
        yield url, log_path


def test_a_request_is_logged_as_one_json_line_with_method_route_status_duration_and_id(logged_service):
    url, log_path = logged_service
    status, _, _ = call(f"{url}/api/balance", "PATCH", {"userId": 1, "amount": 1}, {"X-Request-ID": "trace-4711"})
    assert status == 200
    [line] = request_lines(log_path, "trace-4711")
    assert (line["method"], line["route"], line["path"], line["status"]) == ("PATCH", "/api/balance", "/api/balance", 200)
    assert line["level"] == "info" and isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])


def test_the_client_request_id_is_echoed_in_the_response(logged_service):
    url, _ = logged_service
    assert call(f"{url}/api/users/1", headers={"X-Request-ID": "abc-123"})[1]["X-Request-ID"] == "abc-123"


def test_without_a_request_id_one_is_generated_echoed_and_logged(logged_service):
    url, log_path = logged_service
    request_id = call(f"{url}/api/users/1")[1]["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert len(request_lines(log_path, request_id)) == 1


def test_a_malformed_request_id_is_replaced_not_echoed(logged_service):
    url, _ = logged_service
    echoed = call(f"{url}/api/users/1", headers={"X-Request-ID": "x" * 300})[1]["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_errors_are_logged_with_their_status_and_the_route_template(logged_service):
    url, log_path = logged_service
    status, headers, _ = call(f"{url}/api/users/987654321", headers={"X-Request-ID": "missing-user"})
    assert status == 404 and headers["X-Request-ID"] == "missing-user"
    [line] = request_lines(log_path, "missing-user")
    assert (line["route"], line["status"]) == ("/api/users/{id}", 404)


def test_every_line_the_service_writes_is_json(logged_service):
    _, log_path = logged_service
    lines = log_lines(log_path)
    assert lines and all({"event", "level", "timestamp", "logger"} <= line.keys() for line in lines)


def test_request_lines_below_the_log_level_are_not_written(database_url, tmp_path):
    log_path = tmp_path / "service.log"
    with running_service(log_path, database_url=database_url, log_level="INFO", request_log_level="DEBUG") as (url, _):
        call(f"{url}/api/users/1", headers={"X-Request-ID": "quiet"})
        assert request_lines(log_path, "quiet", wait=1) == []
    assert any(line["event"].startswith("listening on") for line in log_lines(log_path))


def test_generated_request_ids_differ_from_request_to_request(logged_service):
    url, _ = logged_service
    ids = {call(f"{url}/api/users/1")[1]["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20 and all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
