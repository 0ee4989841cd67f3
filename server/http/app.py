"""The application factory: routes, middleware, and the lifetime of the pool and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import swagger_ui
from aiohttp import web
from swagger_ui import aiohttp_api_doc

from server.http.app_keys import (
    ASSETS,
    BATCHER,
    DATABASE,
    DB_POOL,
    KEY_LOOKUPS,
    OPERATION_SCOPES,
    READS,
    SETTINGS,
    TRANSFER_BATCHES,
)
from server.http.bearer_auth import DOCS_PATH, bearer_auth_middleware, open_access_middleware
from server.http.handlers import (
    accounts,
    api_keys,
    assets,
    audit,
    balance_changes,
    events,
    operations,
    transfers,
    users,
    webhooks,
)
from server.http.handlers.documents import event_json
from server.http.http_edges import expect_handler, static_files
from server.http.key_lookups import KeyLookups
from server.http.observability import observability_middleware
from server.ledger import api_keys as stored_keys
from server.ledger.assets import AssetDirectory
from server.ledger.batching import LedgerBatcher
from server.ledger.idempotency import purge_expired_keys_forever
from server.ledger.records import CONFIGURATION
from server.problems import problem_middleware
from server.running import metrics
from server.running.config import Settings
from server.running.database import Database, Turns, create_pool
from server.running.replica import ReplicaRouting
from server.running.webhook_delivery import Dispatcher

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
    replica_pool = None
    if settings.database_replica_url:  # no connection at start: the replica may be down
        replica_pool = await create_pool(settings.model_copy(update={
            "database_url": settings.database_replica_url, "db_pool_min_size": 0}))
    replica = replica_pool and Database(replica_pool, settings.db_max_pending, settings.db_acquire_timeout)
    app[READS] = ReplicaRouting(app[DATABASE], replica, settings.replica_max_lag, settings.replica_check_interval)
    app[ASSETS] = AssetDirectory()
    app[KEY_LOOKUPS] = KeyLookups(app[DATABASE])
    await stored_keys.ensure_configured_tokens(pool, settings.named_api_tokens(), CONFIGURATION)
    app[TRANSFER_BATCHES] = Turns(settings.transfer_batch_concurrency, settings.transfer_batch_queue_timeout)
    # BATCHING=false: batches of one, as many in flight as the pool has connections
    max_batch, in_flight = ((settings.batch_max_size, settings.batch_max_in_flight) if settings.batching
                            else (1, settings.db_pool_max_size))
    retention = dt.timedelta(seconds=settings.idempotency_key_retention)
    app[BATCHER] = LedgerBatcher(app[DATABASE], max_batch, metrics.observe_batch, retention, in_flight,
                                 overlap_after=settings.batch_overlap_after if settings.batching else 0.0)
    async with _background(app[READS].watch()) if replica else contextlib.nullcontext():
        yield
    for each in (pool, replica_pool) if replica_pool else (pool,):
        try:
            async with asyncio.timeout(settings.shutdown_timeout):
                await each.close()
        except TimeoutError:
            log.warning("pool did not close within %s s; terminating its connections", settings.shutdown_timeout)
            each.terminate()


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


async def _webhook_dispatcher(app: web.Application) -> AsyncIterator[None]:
    """Deliver webhooks while the app runs (``WEBHOOK_DISPATCH``; server/running/webhook_delivery.py),
    and sample each endpoint's lag every ``METRICS_SAMPLE_INTERVAL`` seconds."""
    settings = app[SETTINGS]
    if not settings.webhook_dispatch:
        yield
        return
    dispatcher = Dispatcher(app[DB_POOL], event_json, settings.webhook_retry_delays(), settings.webhook_timeout,
                            settings.webhook_allow_private_targets, settings.events_poll_interval)
    async with _background(dispatcher.run_forever()), _background(_every(settings.metrics_sample_interval,
                                                                          dispatcher.sample_lag)):
        yield


# (method, path, handler, the scope an API key needs for it: docs/api.md "API keys and scopes")
ROUTES = [
    ("PATCH", "/api/balance", balance_changes.change_balance, "transfers"),
    ("POST", "/api/users", users.create_user, "accounts"),
    ("GET", "/api/users/{id}", users.get_user, "read"),
    ("GET", "/api/users/{id}/history", users.get_history, "read"),
    ("POST", "/api/users/{id}/credit", balance_changes.credit, "transfers"),
    ("POST", "/api/users/{id}/debit", balance_changes.debit, "transfers"),
    ("POST", "/api/transfers", transfers.create_transfer, "transfers"),
    ("POST", "/api/transfers/batch", transfers.create_transfer_batch, "transfers"),
    ("GET", "/api/transfers", transfers.list_transfers, "read"),
    # {id} is never "batch": that path is POST /api/transfers/batch's alone, so GET or OPTIONS on
    # it is 405 with Allow: POST (not GET's 422 "id must be an integer", nor Allow: GET, HEAD, POST)
    ("GET", r"/api/transfers/{id:(?!batch$)[^/]+}", transfers.get_transfer, "read"),
    ("POST", "/api/transfers/{id}/post", transfers.post_pending_transfer, "transfers"),
    ("POST", "/api/transfers/{id}/void", transfers.void_pending_transfer, "transfers"),
    ("POST", "/api/transfers/{id}/reverse", transfers.reverse_transfer, "transfers"),
    ("POST", "/api/assets", assets.create_asset, "assets"),
    ("GET", "/api/assets", assets.list_assets, "read"),
    ("GET", "/api/assets/{code}", assets.get_asset, "read"),
    ("POST", "/api/accounts", accounts.create_account, "accounts"),
    ("GET", "/api/accounts/{id}", accounts.get_account, "read"),
    ("PATCH", "/api/accounts/{id}", accounts.update_account, "accounts"),
    ("POST", "/api/accounts/{id}/freeze", accounts.freeze_account, "accounts"),
    ("POST", "/api/accounts/{id}/unfreeze", accounts.unfreeze_account, "accounts"),
    ("POST", "/api/accounts/{id}/close", accounts.close_account, "accounts"),
    ("POST", "/api/accounts/{id}/credit", balance_changes.account_credit, "transfers"),
    ("POST", "/api/accounts/{id}/debit", balance_changes.account_debit, "transfers"),
    ("GET", "/api/accounts/{id}/history", accounts.get_account_history, "read"),
    ("GET", "/api/accounts/{id}/balance", accounts.get_account_balance, "read"),
    ("GET", "/api/events", events.list_events, "events"),
    ("GET", "/api/events/stream", events.stream_events, "events"),
    ("POST", "/api/webhooks", webhooks.create_webhook, "webhooks"),
    ("GET", "/api/webhooks", webhooks.list_webhooks, "read"),
    ("GET", "/api/webhooks/{id}", webhooks.get_webhook, "read"),
    ("PATCH", "/api/webhooks/{id}", webhooks.update_webhook, "webhooks"),
    ("DELETE", "/api/webhooks/{id}", webhooks.delete_webhook, "webhooks"),
    ("GET", "/api/webhooks/{id}/deliveries", webhooks.list_deliveries, "read"),
    ("POST", "/api/keys", api_keys.create_key, "keys"),
    ("GET", "/api/keys", api_keys.list_keys, "keys"),
    ("DELETE", "/api/keys/{id}", api_keys.revoke_key, "keys"),
    ("GET", "/api/audit", audit.list_audit, "audit"),
    ("GET", "/api/health", operations.health, None),
    ("GET", "/api/openapi.json", operations.openapi, "read"),
    ("GET", "/metrics", operations.prometheus_metrics, None),
]
# the scope each route's handler needs (none: open to every key, and to no key for health and metrics)
ROUTE_SCOPES = {handler: scope for _, _, handler, scope in ROUTES if scope is not None}
# the routes whose one statement refuses a revoked key itself (apply_balance_changes())
CHECKED_IN_STATEMENT = frozenset({balance_changes.change_balance, balance_changes.credit, balance_changes.debit,
                                  balance_changes.account_credit, balance_changes.account_debit})
# the same as (method, OpenAPI path, scope): the document names each operation's scope
SCOPED_OPERATIONS = frozenset((method.lower(), re.sub(r"\{(\w+)[^}]*\}", r"{\1}", path), scope)
                              for method, path, _, scope in ROUTES if scope is not None)


def create_app(settings: Settings) -> web.Application:
    """Build the aiohttp application for ``settings``; ``settings.database_url`` must be set.

    Middleware, outermost first: request id, log line and metrics; problem details for every error;
    bearer-token authentication when tokens are configured. Bodies larger than ``MAX_BODY_BYTES``
    are refused with 413 (aiohttp's ``client_max_size``).
    """
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url (see server.running.embedded_postgres)")
    middlewares = [observability_middleware(settings.request_log_level), problem_middleware]
    if settings.authentication():
        middlewares.append(bearer_auth_middleware(ROUTE_SCOPES, CHECKED_IN_STATEMENT, lambda app: app[KEY_LOOKUPS]))
    else:
        middlewares.append(open_access_middleware)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    app[SETTINGS] = settings
    app[OPERATION_SCOPES] = SCOPED_OPERATIONS
    app.cleanup_ctx.extend([_database, _idempotency_key_purger, _metrics_sampler, _webhook_dispatcher])
    app.router.add_routes([web.route(method, path, handler, expect_handler=expect_handler)
                           for method, path, handler, _ in ROUTES])
    _api_reference(app)
    return app


def _api_reference(app: web.Application) -> None:
    """``GET /api/docs``: Swagger UI rendering this service's OpenAPI document, every asset served
    from swagger-ui-py's own copy (no CDN), and the document it renders at ``/api/docs/openapi.json``.
    All of it is open without a token (:data:`server.http.bearer_auth.OPEN_PREFIX`)."""
    app.router.add_get(DOCS_PATH + "/openapi.json", operations.openapi, expect_handler=expect_handler)
    # before swagger-ui-py's own static resource for the same prefix, so these answer first
    app.router.add_get(DOCS_PATH + "/static/{filename:.*}", static_files(Path(swagger_ui.__file__).parent / "static"),
                       expect_handler=expect_handler)
    aiohttp_api_doc(app, config_rel_url="/openapi.json", url_prefix=DOCS_PATH, title="balance-api: API reference")
