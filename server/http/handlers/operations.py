"""Health, the OpenAPI document and the metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from server.http.app_keys import DATABASE, DB_POOL, OPERATION_SCOPES, SETTINGS
from server.http.openapi import openapi_document
from server.problems import DATABASE_UNAVAILABLE_ERRORS, DatabaseUnavailable
from server.running import metrics


async def health(request: web.Request) -> web.Response:
    """``GET /api/health`` → 200 ``{"status": "ok", "database": "ok"}``, or 503 problem details
    ``database_unavailable`` when the database does not answer ``SELECT 1`` within ``HEALTH_TIMEOUT``."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].health_timeout):
            await request.app[DB_POOL].fetchval("SELECT 1")
    except DATABASE_UNAVAILABLE_ERRORS:
        raise DatabaseUnavailable("The database did not answer the health check in time.") from None
    return web.json_response({"status": "ok", "database": "ok"})


async def openapi(request: web.Request) -> web.Response:
    """``GET /api/openapi.json`` → the OpenAPI 3.1 document of this API."""
    return web.json_response(openapi_document(request.app[SETTINGS].authentication(), request.app[OPERATION_SCOPES]))


async def prometheus_metrics(request: web.Request) -> web.Response:
    """``GET /metrics`` → the metrics of all workers in Prometheus text format (prometheus-client)."""
    metrics.sample_worker_metrics(request.app[DB_POOL], request.app[DATABASE])
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
