"""balance-api serve --workers N: N processes on one port (SO_REUSEPORT), the proof still exact,
metrics summed over the workers, a dead worker replaced, SIGTERM stopping them all."""

import json
import os
import signal
import subprocess
import time

import pytest

from server.running.workers import START_GRACE
from tests.metrics_reading import labelled, scrape, value
from tests.service_process import (
    balance_api,
    health,
    poll_until,
    running_service,
    service_env,
)


def worker_pids(supervisor: subprocess.Popen) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True).stdout
    return {int(pid) for pid in found.split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def two_workers(create_database, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("workers") / "service.log"
    with running_service(log_path, database_url=create_database(), workers="2") as (url, supervisor):
        assert poll_until(lambda: len(worker_pids(supervisor)) == 2, seconds=30)
        yield url, supervisor


def test_the_10000_burst_is_exact_with_two_workers_and_metrics_add_up_over_both(two_workers, tmp_path):
    url, supervisor = two_workers
    report_path = tmp_path / "burst.json"
    result = balance_api("burst", "--url", url, "--user-id", "1", "--requests", "10000", "--amount", "-2",
                         "--start-balance", "10000", "--json", str(report_path), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["counts"] == {"200": 5000, "409 insufficient_funds": 5000}
    assert all(check["passed"] for check in report["checks"]) and len(report["checks"]) == 4

    samples = scrape(url)
    patch = {"method": "PATCH", "route": "/api/balance"}
    assert value(samples, "http_requests_total", **patch, status="409") == 5000
    assert value(samples, "balance_changes_total", outcome="insufficient_funds") == 5000
    assert value(samples, "db_pool_max_connections") == 40  # 2 workers x DB_POOL_MAX_SIZE 20
    reporting = {dict(labels)["pid"] for labels in labelled(samples, "process_resident_memory_bytes")}
    assert reporting == {str(pid) for pid in worker_pids(supervisor)}


def test_a_killed_worker_is_replaced_and_its_gauges_dropped(two_workers):
    url, supervisor = two_workers
    victim = min(worker_pids(supervisor))
    time.sleep(START_GRACE)  # a worker dying sooner after its start counts as a failed start
    os.kill(victim, signal.SIGKILL)
    assert poll_until(lambda: len(worker_pids(supervisor) - {victim}) == 2, seconds=30), "no replacement started"
    assert poll_until(lambda: health(url)[0] == 200, seconds=30)
    pids = {dict(labels)["pid"] for labels in labelled(scrape(url), "process_resident_memory_bytes")}
    assert str(victim) not in pids


def test_sigterm_stops_every_worker_and_the_supervisor_exits_0(create_database, tmp_path):
    with running_service(tmp_path / "service.log", database_url=create_database(), workers="2") as (_, supervisor):
        assert poll_until(lambda: len(worker_pids(supervisor)) == 2, seconds=30)
        workers = worker_pids(supervisor)
    assert supervisor.returncode == 0
    assert not [pid for pid in workers if alive(pid)]


def test_several_workers_cannot_share_port_0():
    result = balance_api("serve", env=service_env(workers="2", port="0"))
    assert result.returncode == 2 and "WORKERS" in result.stderr
