"""GET /metrics: Prometheus text format, counting requests and balance changes, with pool and
process gauges (prometheus-client multiprocess mode; several workers: tests/test_workers.py)."""

import uuid

from tests.metrics_reading import labelled, scrape, value


async def test_metrics_are_prometheus_text_format(http):
    response = await http.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert "# TYPE http_requests_total counter" in await response.text()


async def test_requests_are_counted_by_method_route_template_and_status(http, service_url, new_user):
    user = new_user(5)
    before = scrape(service_url)
    for _ in range(2):
        assert (await http.get(f"/api/users/{user}")).status == 200
    assert (await http.get("/api/users/987654321")).status == 404
    after = scrape(service_url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"method": "GET", "route": "/api/users/{id}"}
    assert delta("http_requests_total", **route, status="200") == 2
    assert delta("http_requests_total", **route, status="404") == 1
    assert delta("http_request_duration_seconds_count", **route, status="200") == 2
    assert delta("http_request_duration_seconds_bucket", **route, status="200", le="+Inf") == 2


async def test_unknown_routes_share_one_label_so_clients_cannot_grow_the_series(http, service_url):
    before = scrape(service_url)
    for path in ("/nope", "/nope/2", "/api/whatever"):
        await http.get(path)
    after = scrape(service_url)
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "http_requests_total", **labels) - value(before, "http_requests_total", **labels) == 3


async def test_balance_changes_are_counted_by_outcome(http, service_url, new_user):
    user = new_user(10)
    key = {"Idempotency-Key": f"metrics-{uuid.uuid4()}"}
    before = scrape(service_url)
    assert (await http.patch("/api/balance", json={"userId": user, "amount": -4})).status == 200
    assert (await http.post(f"/api/users/{user}/debit", json={"amount": 100})).status == 409
    assert (await http.patch("/api/balance", json={"userId": 987654321, "amount": 1})).status == 404
    for _ in range(2):
        assert (await http.post(f"/api/users/{user}/credit", json={"amount": 1}, headers=key)).status == 200
    after = scrape(service_url)
    deltas = {outcome: value(after, "balance_changes_total", outcome=outcome)
              - value(before, "balance_changes_total", outcome=outcome)
              for outcome in ("applied", "insufficient_funds", "not_found", "idempotent_replay")}
    assert deltas == {"applied": 2, "insufficient_funds": 1, "not_found": 1, "idempotent_replay": 1}


def test_pool_gauges_show_the_configured_pool(service_url):
    samples = scrape(service_url)
    assert value(samples, "db_pool_max_connections") == 20  # DB_POOL_MAX_SIZE's default, one worker
    assert 2 <= value(samples, "db_pool_connections") <= 20  # DB_POOL_MIN_SIZE is 2
    assert 0 <= value(samples, "db_pool_connections_in_use") <= value(samples, "db_pool_connections")
    assert value(samples, "db_pending_requests") >= 0


def test_process_metrics_are_reported_per_worker_pid(service_url):
    samples = scrape(service_url)
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        per_pid = labelled(samples, name)
        assert len(per_pid) == 1 and all(dict(labels).keys() == {"pid"} for labels in per_pid), name
        assert all(reading > 0 for reading in per_pid.values()), name
