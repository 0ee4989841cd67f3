"""docker-compose.yml and the Dockerfile agree with the service's configuration.

No container engine runs here, so these read the files and compare them with ``Settings``.
"""

import re
from urllib.parse import urlsplit

import pytest
import yaml

from server.running.config import Settings
from tests.service_process import PROJECT_ROOT

SETTING_NAMES = {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (PROJECT_ROOT / "Dockerfile").read_text()


def dockerfile_env(dockerfile: str) -> dict[str, str]:
    joined = dockerfile.replace("\\\n", " ")
    pairs = [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(pairs)))


def test_the_api_sets_only_variables_the_service_reads(compose):
    assert set(compose["services"]["api"]["environment"]) <= SETTING_NAMES


def test_the_api_publishes_the_port_it_listens_on(compose, dockerfile):
    api = compose["services"]["api"]
    port = api["environment"]["PORT"]
    assert any(mapping.split(":")[-1] == port for mapping in api["ports"])
    assert f"EXPOSE {port}" in dockerfile
    assert api["environment"]["HOST"] == "0.0.0.0"


def test_database_url_points_at_the_db_service_with_its_credentials(compose):
    db_env = compose["services"]["db"]["environment"]
    url = urlsplit(compose["services"]["api"]["environment"]["DATABASE_URL"])
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port) == ("db", 5432)
    assert (url.username, url.password, url.path.lstrip("/")) == (
        db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"], db_env["POSTGRES_DB"]
    )


def test_the_api_waits_for_a_healthy_database_with_data_on_a_named_volume(compose):
    db = compose["services"]["db"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert compose["services"]["api"]["depends_on"]["db"]["condition"] == "service_healthy"
    volume = db["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in compose["volumes"]


def test_the_pool_settings_in_compose_are_valid(compose):
    env = compose["services"]["api"]["environment"]
    Settings(**{name.lower(): value for name, value in env.items()})


def test_the_image_sets_only_known_variables_and_ships_the_migrations(dockerfile):
    env = dockerfile_env(dockerfile)
    assert {name for name in env if not name.startswith("PYTHON")} <= SETTING_NAMES
    assert "COPY migrations ./migrations" in dockerfile and env["MIGRATIONS_DIR"] == "/app/migrations"
    assert 'CMD ["balance-api", "serve"]' in dockerfile


def test_the_listen_backlog_fits_the_somaxconn_compose_grants(compose):
    somaxconn = compose["services"]["api"]["sysctls"]["net.core.somaxconn"]
    assert Settings().listen_backlog <= somaxconn


def test_the_scaled_api_reaches_the_primary_through_pgbouncer_and_reads_from_the_replica(compose):
    services = compose["services"]
    scaled = services["api-scaled"]["environment"]
    assert urlsplit(scaled["DATABASE_URL"]).hostname == "pgbouncer"
    assert urlsplit(scaled["DATABASE_REPLICA_URL"]).hostname == "replica"
    assert (scaled["MIGRATE_ON_START"], scaled["DB_STATEMENT_CACHE_SIZE"], scaled["DB_STATEMENT_TIMEOUT"]) == (
        "false", "0", "0")
    assert set(scaled) <= SETTING_NAMES
    Settings(**{name.lower(): value for name, value in scaled.items()})
    assert (services["pgbouncer"]["environment"]["DB_HOST"], services["pgbouncer"]["environment"]["POOL_MODE"]) == (
        "db", "transaction")
    assert "pg_basebackup -h db" in " ".join(services["replica"]["command"])
    assert all(services[name]["profiles"] == ["scale"] for name in ("replica", "pgbouncer", "api-scaled"))
