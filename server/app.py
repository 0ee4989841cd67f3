"""The application factory: routes, middleware, and the database pool's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from . import handlers
from .app_keys import DB_POOL, SETTINGS
from .config import Settings
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


def create_app(settings: Settings) -> web.Application:
    """Build the aiohttp application for ``settings``; ``settings.database_url`` must be set.

    Bodies larger than ``MAX_BODY_BYTES`` are refused with 413 (aiohttp's ``client_max_size``).
    """
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url (see server.embedded_postgres)")
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[problem_middleware])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_database_pool)
    app.router.add_patch("/api/balance", handlers.change_balance)
    app.router.add_get("/api/users/{user_id}", handlers.get_user)
    app.router.add_get("/api/health", handlers.health)
    return app
