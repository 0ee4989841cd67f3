"""The service's way to the database: an asyncpg pool behind a bound and a deadline.

* At most ``DB_MAX_PENDING`` requests per worker may hold or wait for a pool connection at once;
  one more is refused at once with 503 ``service_overloaded`` instead of joining a queue that
  only grows (load shedding).
* Waiting for a connection ends after ``DB_ACQUIRE_TIMEOUT`` seconds with 503
  ``database_unavailable``. Nothing has been sent to PostgreSQL by then, so nothing changed.
* Statements are bounded by PostgreSQL's ``statement_timeout`` (set per connection from
  ``DB_STATEMENT_TIMEOUT``; PostgreSQL cancels and rolls back a statement that runs longer, docs
  §19.11.2) and by asyncpg's client-side ``command_timeout`` (``DB_COMMAND_TIMEOUT``) for a server
  that stops answering altogether.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import asyncpg

from server.problems import DatabaseUnavailable, ServiceOverloaded
from server.running.config import Settings

log = logging.getLogger(__name__)


async def _skip_session_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset hook, replacing asyncpg's default ``Connection.reset()``.

    The default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: one more round trip per request (measured: most of the service's added CPU per
    request). The service's connections never take session advisory locks, open cursors, LISTEN or
    SET anything, so there is nothing to undo; asyncpg still rolls back a transaction left open
    before calling this hook (``Connection._reset``).
    """


def create_pool(settings: Settings) -> asyncpg.Pool:
    """The asyncpg pool for ``settings.database_url`` (not yet opened: ``await`` or ``async with`` it).

    ``DB_STATEMENT_CACHE_SIZE=0`` turns asyncpg's prepared-statement cache off, as PgBouncer in
    transaction pooling mode needs (asyncpg FAQ); ``DB_STATEMENT_TIMEOUT=0`` leaves the server's
    ``statement_timeout`` alone (PgBouncer refuses unknown start-up parameters: set it on the role).

    With the statement cache on, the connections plan their top-level statements as custom plans
    (``plan_cache_mode = force_custom_plan``, PostgreSQL docs §19.7.4 and PREPARE "Notes"). A
    prepared statement otherwise switches to a generic plan after five runs and keeps it for the
    connection's life: made on an empty database, that plan scans a table of one page instead of
    using its index, and keeps scanning it as it grows (issue 27: reading a transfer or a history
    by id). A custom plan is made for the tables as they are at each run; these statements are
    point reads and calls of the ledger's functions, whose planning costs microseconds (measured in
    docs/benchmarks.md, "Plans on an empty database"). The functions plan their own statements,
    with settings of their own (server/ledger/sql/locking.sql, "Plans"). Without the cache asyncpg
    sends unnamed statements, which PostgreSQL always plans as custom plans: nothing to set.
    """
    server_settings = {}
    if settings.db_statement_timeout:
        server_settings["statement_timeout"] = str(round(settings.db_statement_timeout * 1000))
    if settings.db_statement_cache_size:
        server_settings["plan_cache_mode"] = "force_custom_plan"
    return asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        statement_cache_size=settings.db_statement_cache_size,
        server_settings=server_settings,
        reset=_skip_session_reset,
    )


class Turns:
    """At most ``limit`` holders at once (0: no limit), the others waiting in arrival order for at
    most ``queue_timeout`` seconds: a worker's admission of ``POST /api/transfers/batch``, decided
    before the request takes a connection or any row lock (docs/concurrency.md, Bulk batches)."""

    def __init__(self, limit: int, queue_timeout: float):
        self.limit = limit
        self.queue_timeout = queue_timeout
        self._semaphore = asyncio.Semaphore(limit) if limit else None

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the turns for the block. Raises :class:`ServiceOverloaded` (503, nothing
        changed, ``Retry-After``) when none came within ``queue_timeout``."""
        if self._semaphore is None:
            yield
            return
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._semaphore.acquire()
        except TimeoutError:
            raise ServiceOverloaded(detail=f"No turn among the {self.limit} batches this worker runs at once came "
                                           f"within {self.queue_timeout:g} s; nothing was changed. Retry later.") from None
        try:
            yield
        finally:
            self._semaphore.release()


class Database:
    """The pool as request handlers use it: :meth:`connection`, bounded and with a deadline.

    ``max_pending`` is a count of requests; ``acquire_timeout`` is in seconds.
    """

    def __init__(self, pool: asyncpg.Pool, max_pending: int, acquire_timeout: float):
        self.pool = pool
        self.max_pending = max_pending
        self.acquire_timeout = acquire_timeout
        self.pending = 0

    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        """Count one request as pending for the block.

        Raises :class:`ServiceOverloaded` (503) at once when ``max_pending`` requests already are.
        """
        if self.pending >= self.max_pending:
            raise ServiceOverloaded(self.max_pending)
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Lend a pool connection for the block, counting the request as pending (:meth:`admission`).

        Raises :class:`ServiceOverloaded` (503) at once when ``max_pending`` requests already hold
        or wait for one, and :class:`DatabaseUnavailable` (503) when none is free within
        ``acquire_timeout`` seconds; connection errors propagate (the problem middleware makes
        them 503 too).
        """
        with self.admission():
            async with self.pooled_connection() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def pooled_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Lend a pool connection for the block, without counting a request (the batcher counts
        its queued changes itself). Raises :class:`DatabaseUnavailable` as :meth:`connection`."""
        try:
            if self.pool.get_idle_size():  # one is free: no wait, no deadline to arm
                conn = await self.pool.acquire()
            else:
                async with asyncio.timeout(self.acquire_timeout):
                    conn = await self.pool.acquire()
        except TimeoutError:
            raise DatabaseUnavailable(
                f"No database connection became free within {self.acquire_timeout:g} s; nothing was "
                "changed. Retry later."
            ) from None
        try:
            yield conn
        finally:
            await self._release(conn)

    async def _release(self, conn: asyncpg.Connection) -> None:
        """Return ``conn`` to the pool. If resetting it fails, the pool has already terminated it;
        that must not change the request's outcome: its statements had completed (asyncpg returns a
        result only at ReadyForQuery, i.e. after the implicit commit), or their own error stands.
        Seen when PostgreSQL's postmaster dies: its backends send a FATAL message after the result."""
        try:
            await self.pool.release(conn)
        except Exception as error:
            log.warning("a pool connection broke after its work was done; discarded: %r", error)
