"""Typed keys for what the application holds (aiohttp ``web.AppKey``, not string keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from server.http.key_lookups import KeyLookups
from server.ledger.api_keys import Grant
from server.running.config import Settings
from server.running.database import Database, Turns
from server.running.replica import ReplicaRouting

if TYPE_CHECKING:  # server.ledger.batching imports modules that import this one
    from server.ledger.assets import AssetDirectory
    from server.ledger.batching import LedgerBatcher

SETTINGS = web.AppKey("settings", Settings)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)  # health checks and background jobs
DATABASE = web.AppKey("database", Database)  # request handlers: bounded, with an acquire deadline
READS = web.AppKey("reads", ReplicaRouting)  # where read-only routes read (server.http.reads)
# every single money movement (PATCH /api/balance, credits, debits, transfers, holds, posts, voids) goes
# through it (server.ledger.batching); BATCHING=false: batches of one
BATCHER: web.AppKey[LedgerBatcher] = web.AppKey("batcher")
ASSETS: web.AppKey[AssetDirectory] = web.AppKey("assets")  # the default asset, and assets looked up
TRANSFER_BATCHES = web.AppKey("transfer_batches", Turns)  # POST /api/transfers/batch: a worker's turns
KEY_LOOKUPS = web.AppKey("key_lookups", KeyLookups)  # API keys by digest, for server.http.bearer_auth

# What the middleware tells the handlers about a request
REQUEST_ID = web.RequestKey("request_id", str)  # its X-Request-ID (server.http.observability)
GRANT = web.RequestKey("grant", Grant)  # what its credentials may do, and who it is (server.http.bearer_auth)
# (method, OpenAPI path, scope) of each route that needs a scope (server.http.app.ROUTES), for the
# OpenAPI document
OPERATION_SCOPES = web.AppKey("operation_scopes", frozenset)
REMEMBERED = web.RequestKey("remembered", bool)  # admitted on a remembered grant (server.http.bearer_auth)
