"""Typed keys for what the application holds (aiohttp ``web.AppKey``, not string keys)."""

import asyncpg
from aiohttp import web

from .batching import BalanceChangeBatcher
from .config import Settings
from .database import Database

SETTINGS = web.AppKey("settings", Settings)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)  # health checks and background jobs
DATABASE = web.AppKey("database", Database)  # request handlers: bounded, with an acquire deadline
BATCHER = web.AppKey("batcher", BalanceChangeBatcher)  # present when BATCHING is on
