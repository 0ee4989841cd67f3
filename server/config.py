"""Service configuration, read from environment variables and validated at start-up.

Every field maps to the upper-case environment variable of the same name (``PORT``,
``DATABASE_URL``, ``DB_POOL_MAX_SIZE``...). The README's configuration table lists them all;
``tests/test_deployment.py`` checks that docker-compose only sets variables named here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """Raised by :func:`load_settings` when the environment holds an invalid setting.

    Its message names every offending variable and why, one per line.
    """


class Settings(BaseSettings):
    """All settings of one service process; immutable once loaded.

    Sizes are in bytes, durations in seconds, counts are plain integers.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    database_url: str | None = Field(
        default=None,
        description="postgresql://user:password@host:port/dbname; unset = embedded PostgreSQL",
    )
    data_dir: Path = Field(
        default=PROJECT_ROOT / ".data",
        description="where the embedded PostgreSQL keeps its cluster (DATA_DIR/postgres)",
    )
    embedded_database: str = "balance"
    migrations_dir: Path = PROJECT_ROOT / "migrations"
    migrate_on_start: bool = True
    db_pool_min_size: Annotated[int, Field(ge=0, le=1000)] = 2
    db_pool_max_size: Annotated[int, Field(ge=1, le=1000)] = 20
    health_timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    listen_backlog: Annotated[int, Field(ge=1, le=65535)] = 16384
    # a valid body with a 500-character description in \uXXXX escape pairs is about 6 KB
    max_body_bytes: Annotated[int, Field(ge=64, le=1024 * 1024)] = 16384
    idempotency_key_retention: Annotated[float, Field(gt=0)] = 24 * 3600.0
    idempotency_purge_interval: Annotated[float, Field(gt=0)] = 60.0
    access_log: bool = False
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _pool_bounds_are_ordered(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgresql(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// or postgres://")
        return url


def load_settings(**overrides: object) -> Settings:
    """Read :class:`Settings` from the environment, with ``overrides`` taking precedence.

    Raises :class:`ConfigError` with one line per invalid variable, e.g.
    ``PORT: Input should be less than or equal to 65535 (got '70000')``.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = []
        for problem in error.errors(include_url=False):
            name = "_".join(str(part) for part in problem["loc"]).upper() or "settings"
            got = f" (got {problem['input']!r})" if problem["loc"] else ""
            lines.append(f"{name}: {problem['msg'].removeprefix('Value error, ')}{got}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
