"""Service configuration, read from environment variables and validated at start-up.

Every field maps to the upper-case environment variable of the same name (``PORT``,
``DATABASE_URL``, ``DB_POOL_MAX_SIZE``...). docs/operations.md's configuration table lists them all;
``tests/test_deployment.py`` checks that docker-compose only sets variables named here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# RFC 6750 §2.1: the credentials of "Authorization: Bearer <b64token>"
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["auto", "json", "console"]


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
    # a streaming replica serving the read-only routes (server.http.reads); unset: all on the primary
    database_replica_url: str | None = None
    replica_max_lag: Annotated[float, Field(ge=0, le=3600)] = 1.0  # seconds behind before it is skipped
    replica_check_interval: Annotated[float, Field(gt=0, le=60)] = 0.25  # seconds between lag checks
    migrations_dir: Path = PROJECT_ROOT / "migrations"
    migrate_on_start: bool = True
    # the code migration 0004 gives the default asset (where existing balances go); used only when
    # that migration runs, the asset is found by its "default" flag afterwards
    default_asset_code: Annotated[str, Field(pattern="^[A-Za-z0-9_]{1,32}$")] = "default"
    db_pool_min_size: Annotated[int, Field(ge=0, le=1000)] = 2
    db_pool_max_size: Annotated[int, Field(ge=1, le=1000)] = 20
    health_timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    listen_backlog: Annotated[int, Field(ge=1, le=65535)] = 16384
    # allocations between young garbage collections (CPython's default 700; 0 keeps the defaults):
    # see server.running.process_limits.tune_garbage_collection
    gc_threshold: Annotated[int, Field(ge=0, le=10_000_000)] = 50_000
    # a valid body with a 500-character description in \uXXXX escape pairs is about 6 KB
    max_body_bytes: Annotated[int, Field(ge=64, le=1024 * 1024)] = 16384
    # seconds a request's whole body may take to arrive once its headers have (408 after; a stalled
    # body held its connection open indefinitely). A batch of 1 MiB at 1 Mbit/s takes about 8 s.
    body_read_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    idempotency_key_retention: Annotated[float, Field(gt=0)] = 24 * 3600.0
    idempotency_purge_interval: Annotated[float, Field(gt=0)] = 60.0
    # Timeouts (seconds). A request never waits on the database longer than these: it gets 503.
    db_connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    # long enough for the 10,000-request proof, whose last request waits about 5 s for a connection
    db_acquire_timeout: Annotated[float, Field(gt=0, le=300)] = 30.0
    # server-side statement_timeout (PostgreSQL docs §19.11.2): a statement running longer is
    # cancelled and rolled back by PostgreSQL itself. 0 = leave the server's setting (PgBouncer).
    db_statement_timeout: Annotated[float, Field(ge=0, le=3600)] = 5.0
    # client-side backstop (asyncpg command_timeout) for a database that stops answering at all
    db_command_timeout: Annotated[float, Field(gt=0, le=3600)] = 15.0
    # asyncpg's prepared-statement cache; 0 for PgBouncer in transaction pooling mode
    db_statement_cache_size: Annotated[int, Field(ge=0, le=100_000)] = 100
    # requests per worker that may hold or wait for a database connection at once; beyond it, 503
    db_max_pending: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # batching of concurrent money movements across accounts (server/ledger/batching.py); off = batches of one
    batching: bool = True
    batch_max_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    # batches in flight at once per worker, each on a pool connection of its own; fewer make larger
    # batches, and a batch's fixed cost (about 0.3 ms of PostgreSQL's CPU) is paid fewer times
    # (docs/concurrency.md, Batching: 2 against 8 measured)
    batch_max_in_flight: Annotated[int, Field(ge=1, le=1000)] = 2
    # seconds every batch in flight must have been in flight before a further one goes out beside
    # it: batches overlap only when one is held up (a row lock), otherwise one batch carries all
    # that waited (docs/concurrency.md, Batching: 1.3-1.4 x the transfers of two overlapping). 0 = whenever a slot is free
    batch_overlap_after: Annotated[float, Field(ge=0, le=60)] = 0.02
    # POST /api/transfers/batch: most items, and most bytes of its body (other routes: MAX_BODY_BYTES)
    transfer_batch_max_items: Annotated[int, Field(ge=1, le=10_000)] = 1000
    transfer_batch_max_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # POST /api/transfers/batch requests a worker runs at once; the others wait their turn in the
    # worker, holding no connection and no lock, for at most TRANSFER_BATCH_QUEUE_TIMEOUT seconds
    # (then 503 service_overloaded, Retry-After). 0 = no limit (docs/concurrency.md, Bulk batches)
    transfer_batch_concurrency: Annotated[int, Field(ge=0, le=1000)] = 2
    transfer_batch_queue_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # statement_timeout of one such batch, its waits for row locks included: with the global lock
    # order a batch always gets its locks, after the batches ahead of it, so its bound is not the
    # single statement's DB_STATEMENT_TIMEOUT. 0 = DB_STATEMENT_TIMEOUT
    transfer_batch_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    shutdown_timeout: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # the change feed (docs/api.md, "The change feed"): how often a long poll (wait=), a stream and
    # the webhook dispatcher look for new events
    events_poll_interval: Annotated[float, Field(gt=0, le=60)] = 0.1
    # webhooks: the seconds to wait after each failed attempt in a row, comma-separated; when they
    # have all been waited and the next attempt fails too, the endpoint is disabled (Standard
    # Webhooks' suggested schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h)
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0  # one delivery attempt
    webhook_allow_private_targets: bool = False  # loopback, private and link-local addresses (tests, labs)
    webhook_dispatch: bool = True  # whether this process's workers deliver webhooks at all
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    reuse_port: bool = False
    api_token: SecretStr | None = None
    api_tokens_file: Path | None = None
    # every route but health, metrics and the API reference needs an API key (balance-api keys) or
    # a token; on by itself when API_TOKEN or API_TOKENS_FILE is set
    require_api_key: bool = False
    log_level: LogLevel = "INFO"
    # auto: coloured console lines when stderr is a terminal, JSON lines otherwise
    log_format: LogFormat = "auto"
    request_log_level: LogLevel = "INFO"
    metrics_sample_interval: Annotated[float, Field(gt=0, le=3600)] = 5.0

    @field_validator("log_level", "request_log_level", mode="before")
    @classmethod
    def _level_is_upper_case(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_is_lower_case(cls, log_format: object) -> object:
        return log_format.lower() if isinstance(log_format, str) else log_format

    @model_validator(mode="after")
    def _shared_port_is_fixed(self) -> Settings:
        if self.workers > 1 and self.port == 0:
            raise ValueError("PORT 0 (any free port) cannot be shared by several WORKERS; give a port")
        return self

    @model_validator(mode="after")
    def _tokens_are_usable(self) -> Settings:
        if self.api_tokens_file is not None and not self.api_tokens_file.is_file():
            raise ValueError(f"API_TOKENS_FILE {self.api_tokens_file} is not a readable file")
        tokens = self.api_tokens()
        if self.api_tokens_file is not None and not tokens:
            raise ValueError(f"API_TOKENS_FILE {self.api_tokens_file} holds no token")
        if any(not _TOKEN68.fullmatch(token.decode()) for token in tokens):
            raise ValueError("API_TOKEN and API_TOKENS_FILE tokens must be RFC 6750 b64token characters "
                             "(letters, digits and -._~+/, then optional =)")
        return self

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _retry_schedule(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError("must be seconds separated by commas, e.g. 5,300,1800") from None
        if not all(0 <= delay <= 604800 for delay in delays):
            raise ValueError("each delay must be from 0 to 604800 seconds")
        return value

    def webhook_retry_delays(self) -> list[float]:
        """WEBHOOK_RETRY_SCHEDULE as seconds: the wait after the 1st, 2nd ... failure in a row."""
        return [float(part) for part in self.webhook_retry_schedule.split(",")]

    def api_tokens(self) -> list[bytes]:
        """The bearer tokens that grant access (``API_TOKEN`` and each non-blank, non-``#`` line of
        ``API_TOKENS_FILE``), as bytes; empty when none is configured."""
        return [token for _, token in self.named_api_tokens()]

    def named_api_tokens(self) -> list[tuple[str, bytes]]:
        """:meth:`api_tokens` with the name each is stored under as a key: ``API_TOKEN``, or
        ``API_TOKENS_FILE line N``."""
        tokens = [("API_TOKEN", self.api_token.get_secret_value())] if self.api_token else []
        if self.api_tokens_file is not None:
            for number, line in enumerate(self.api_tokens_file.read_text().splitlines(), 1):
                if (token := line.strip()) and not token.startswith("#"):
                    tokens.append((f"API_TOKENS_FILE line {number}", token))
        return [(name, token.encode()) for name, token in tokens]

    def authentication(self) -> bool:
        """Whether requests must carry a key or token (REQUIRE_API_KEY, or any token configured)."""
        return self.require_api_key or bool(self.api_tokens())

    @model_validator(mode="after")
    def _pool_bounds_are_ordered(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        return self

    @field_validator("database_url", "database_replica_url")
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
