"""The application factory: routes, middleware, and the lifetime of the pool and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import handlers, ledger, metrics
from .app_keys import ASSETS, BATCHER, DATABASE, DB_POOL, SETTINGS
from .batching import BalanceChangeBatcher
from .bearer_auth import bearer_auth_middleware
from .config import Settings
from .database import Database, create_pool
from .idempotency import purge_expired_keys_forever
from .problems import problem_middleware
from .request_observability import observability_middleware

log = logging.getLogger(__name__)


async def _database(app: web.Application) -> AsyncIterator[None]:
    """Open the asyncpg pool for the app's lifetime (aiohttp ``cleanup_ctx``); close it after.

    Closing waits for connections still lent out at most ``SHUTDOWN_TIMEOUT`` seconds, then
    terminates them (PostgreSQL rolls back whatever they had not committed).
    """
    settings = app[SETTINGS]
    pool = await create_pool(settings)
    app[DB_POOL] = pool
    app[DATABASE] = Database(pool, settings.db_max_pending, settings.db_acquire_timeout)
    app[ASSETS] = ledger.AssetDirectory()
    if settings.batching:
        app[BATCHER] = BalanceChangeBatcher(app[DATABASE], settings.batch_max_size, metrics.BATCH_SIZE.observe,
                                            dt.timedelta(seconds=settings.idempotency_key_retention))
    yield
    try:
        async with asyncio.timeout(settings.shutdown_timeout):
            await pool.close()
    except TimeoutError:
        log.warning("pool did not close within %s s; terminating its connections", settings.shutdown_timeout)
        pool.terminate()


async def _every(interval: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        try:
            await job()
        except Exception:  # a background job must not die of one failure
            log.exception("background job %s failed", getattr(job, "__qualname__", job))
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def _background(task_coroutine: Awaitable[None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(task_coroutine)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _idempotency_key_purger(app: web.Application) -> AsyncIterator[None]:
    """Purge expired idempotency keys in the background while the app runs (off the request path)."""
    settings = app[SETTINGS]
    async with _background(purge_expired_keys_forever(
        app[DB_POOL], dt.timedelta(seconds=settings.idempotency_key_retention), settings.idempotency_purge_interval,
    )):
        yield


async def _metrics_sampler(app: web.Application) -> AsyncIterator[None]:
    """Sample this worker's gauges every ``METRICS_SAMPLE_INTERVAL`` seconds while the app runs."""
    async def sample() -> None:
        metrics.sample_worker_metrics(app[DB_POOL], app[DATABASE])

    async with _background(_every(app[SETTINGS].metrics_sample_interval, sample)):
        yield


def create_app(settings: Settings) -> web.Application:
    """Build the aiohttp application for ``settings``; ``settings.database_url`` must be set.

    Middleware, outermost first: request id, log line and metrics; problem details for every error;
    bearer-token authentication when tokens are configured. Bodies larger than ``MAX_BODY_BYTES``
    are refused with 413 (aiohttp's ``client_max_size``).
    """
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url (see server.embedded_postgres)")
    middlewares = [observability_middleware(settings.request_log_level), problem_middleware]
    if tokens := settings.api_tokens():
        middlewares.append(bearer_auth_middleware(tokens))
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([_database, _idempotency_key_purger, _metrics_sampler])
    app.router.add_routes([
        web.patch("/api/balance", handlers.change_balance),
        web.post("/api/users", handlers.create_user),
        web.get("/api/users/{id}", handlers.get_user),
        web.get("/api/users/{id}/history", handlers.get_history),
        web.post("/api/users/{id}/credit", handlers.credit),
        web.post("/api/users/{id}/debit", handlers.debit),
        web.post("/api/transfers", handlers.create_transfer),
        web.get("/api/transfers", handlers.list_transfers),
        web.get("/api/transfers/{id}", handlers.get_transfer),
        web.post("/api/assets", handlers.create_asset),
        web.get("/api/assets", handlers.list_assets),
        web.get("/api/assets/{code}", handlers.get_asset),
        web.post("/api/accounts", handlers.create_account),
        web.get("/api/accounts/{id}", handlers.get_account),
        web.patch("/api/accounts/{id}", handlers.update_account),
        web.post("/api/accounts/{id}/freeze", handlers.freeze_account),
        web.post("/api/accounts/{id}/unfreeze", handlers.unfreeze_account),
        web.post("/api/accounts/{id}/close", handlers.close_account),
        web.post("/api/accounts/{id}/credit", handlers.account_credit),
        web.post("/api/accounts/{id}/debit", handlers.account_debit),
        web.get("/api/accounts/{id}/history", handlers.get_account_history),
        web.get("/api/accounts/{id}/balance", handlers.get_account_balance),
        web.get("/api/health", handlers.health),
        web.get("/api/openapi.json", handlers.openapi),
        web.get("/metrics", handlers.prometheus_metrics),
    ])
    return app
