"""The OpenAPI 3.1 document is true: it describes exactly the served routes, and Schemathesis,
fuzzing the real service from it, finds nothing. (Every response the other tests receive is also
validated against it: see tests/openapi_contract.py.)"""

import json
import subprocess
import sys
import urllib.request

from jsonschema import Draft202012Validator

from server.running.config import Settings
from tests.service_process import PROJECT_ROOT, balance_api, running_service, service_env


def served_document(service_url: str) -> dict:
    with urllib.request.urlopen(f"{service_url}/api/openapi.json", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        return json.load(response)


def test_the_document_is_openapi_3_1_with_valid_json_schemas(service_url):
    document = served_document(service_url)
    assert document["openapi"] == "3.1.0"
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises SchemaError naming the problem


def test_every_served_route_is_described_and_every_described_route_is_served(service_url):
    from server.http.app import create_app

    app = create_app(Settings(database_url="postgresql://unused/never-connected"))
    served = {(route.method.lower(), route.resource.canonical) for route in app.router.routes()
              if route.method != "HEAD" and not route.resource.canonical.startswith("/api/docs")}  # the page
    described = {(method, path) for path, methods in served_document(service_url)["paths"].items()
                 for method in methods}
    assert served == described


def test_every_mutating_operation_takes_an_idempotency_key(service_url):
    for path, methods in served_document(service_url)["paths"].items():
        for method, operation in methods.items():
            if method in ("patch", "post") and path != "/api/users":
                assert "Idempotency-Key" in [p["name"] for p in operation["parameters"]], (method, path)


def test_schemathesis_finds_no_failure_against_the_running_service(create_database, tmp_path):
    """Bounded: 25 examples per operation, 45 s at most, fixed seed; default checks, with the
    per-operation settings of schemathesis.toml. It runs against a service and database of its own:
    the fuzzer freezes, closes and caps whatever accounts it finds, user 1's included."""
    database_url = create_database()
    with running_service(tmp_path / "service.log", database_url=database_url) as (service_url, _):
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{service_url}/api/openapi.json",
             "--max-examples", "25", "--max-time", "45", "--seed", "20261121", "--workers", "1",
             "--report", "junit", "--report-dir", str(tmp_path)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    verdict = balance_api("check", env=service_env(database_url=database_url))  # whatever it sent, the ledger holds
    assert verdict.returncode == 0, verdict.stdout
