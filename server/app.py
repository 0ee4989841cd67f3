"""The application factory: routes, middleware, and the lifetime of the pool and the key purger."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from . import handlers
from .app_keys import DB_POOL, SETTINGS
from .config import Settings
from .idempotency import purge_expired_keys_forever
from .problems import problem_middleware


async def _database_pool(app: web.Application) -> AsyncIterator[None]:
    """Open the asyncpg pool for the app's lifetime (aiohttp ``cleanup_ctx``) and close it after."""
    settings = app[SETTINGS]
    async with asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
    ) as pool:
        app[DB_POOL] = pool
        yield


async def _idempotency_key_purger(app: web.Application) -> AsyncIterator[None]:
    """Purge expired idempotency keys in the background while the app runs (off the request path)."""
    settings = app[SETTINGS]
    task = asyncio.create_task(purge_expired_keys_forever(
        app[DB_POOL], dt.timedelta(seconds=settings.idempotency_key_retention), settings.idempotency_purge_interval,
    ))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings) -> web.Application:
    """Build the aiohttp application for ``settings``; ``settings.database_url`` must be set.

    Bodies larger than ``MAX_BODY_BYTES`` are refused with 413 (aiohttp's ``client_max_size``).
    """
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url (see server.embedded_postgres)")
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[problem_middleware])
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([_database_pool, _idempotency_key_purger])
    app.router.add_routes([
        web.patch("/api/balance", handlers.change_balance),
        web.post("/api/users", handlers.create_user),
        web.get("/api/users/{id}", handlers.get_user),
        web.get("/api/users/{id}/history", handlers.get_history),
        web.post("/api/users/{id}/credit", handlers.credit),
        web.post("/api/users/{id}/debit", handlers.debit),
        web.post("/api/transfers", handlers.create_transfer),
        web.get("/api/transfers/{id}", handlers.get_transfer),
        web.get("/api/health", handlers.health),
        web.get("/api/openapi.json", handlers.openapi),
    ])
    return app
