"""balance-api serve: embedded PostgreSQL by default, configuration checked at start-up."""

import subprocess
import sys

from tests.http_calls import call
from tests.service_process import balance_api, running_service, service_env


def http_json(url: str, method: str = "GET", body: dict | None = None) -> dict:
    status, _, document = call(url, method, body)
    assert status == 200, (status, document)
    return document


def test_without_database_url_serve_runs_an_embedded_postgres_that_keeps_data_across_restarts(tmp_path):
    data_dir = tmp_path / "data"
    with running_service(tmp_path / "first.log", data_dir=str(data_dir)) as (url, _):
        assert http_json(f"{url}/api/users/1")["balance"] == 10000  # migrated and seeded
        http_json(f"{url}/api/balance", "PATCH", {"userId": 1, "amount": -2})
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert not (data_dir / "postgres" / "postmaster.pid").exists(), "embedded PostgreSQL left running"
    with running_service(tmp_path / "second.log", data_dir=str(data_dir)) as (url, _):
        assert http_json(f"{url}/api/users/1")["balance"] == 9998


def test_serve_stops_on_sigterm_with_exit_code_0(tmp_path, database_url):
    with running_service(tmp_path / "service.log", database_url=database_url) as (_, process):
        pass
    assert process.returncode == 0


def test_an_invalid_setting_is_refused_at_start_up_naming_the_variable():
    result = balance_api("serve", env=service_env(port="70000", db_pool_max_size="lots"))
    assert result.returncode == 2
    assert "PORT" in result.stderr and "DB_POOL_MAX_SIZE" in result.stderr


def test_a_pool_minimum_above_its_maximum_is_refused_at_start_up():
    result = balance_api("serve", env=service_env(db_pool_min_size="30", db_pool_max_size="10"))
    assert result.returncode == 2
    assert "DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE" in result.stderr


def test_a_database_url_of_another_kind_is_refused_at_start_up():
    result = balance_api("serve", env=service_env(database_url="mysql://localhost/balance"))
    assert result.returncode == 2
    assert "DATABASE_URL: must start with postgresql://" in result.stderr


def test_garbage_collection_tuning_freezes_start_up_objects_and_raises_the_young_threshold():
    probe = ("import gc; from server.running.process_limits import tune_garbage_collection as tune; "
             "default = gc.get_threshold(); tune(0); kept = gc.get_threshold() == default; tune(50000); "
             "print(kept, gc.get_threshold(), gc.get_freeze_count() > 0)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.split("\n")[0] == "True (50000, 20, 10) True", result.stderr
