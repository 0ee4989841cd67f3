"""What handlers look up for a request beyond its path: the asset a body names."""

from __future__ import annotations

from aiohttp import web

from server.http.app_keys import ASSETS, DATABASE
from server.ledger.records import Asset


async def asset_of(request: web.Request, code: str | None) -> Asset:
    """Asset ``code`` (None: the default asset; known without a query once looked up); raises
    :class:`~server.problems.AssetNotFound` (404)."""
    directory = request.app[ASSETS]
    if code is None and directory.default is not None:
        return directory.default
    async with request.app[DATABASE].connection() as db:
        return await directory.get(db, code)


async def asset_id_of(request: web.Request, code: str | None) -> int:
    """The id of asset ``code`` (see :func:`asset_of`)."""
    return (await asset_of(request, code)).asset_id
