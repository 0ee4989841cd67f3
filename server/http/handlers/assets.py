"""``/api/assets``: create, list, read with supply."""

from __future__ import annotations

from aiohttp import web

from server.http.app_keys import GRANT
from server.http.asset_limits import check_assets
from server.http.bearer_auth import actor_of
from server.http.handlers.documents import asset_json
from server.http.handlers.paths import asset_code_from_path
from server.http.idempotent_requests import respond
from server.http.reads import read_only, reading
from server.http.request_bodies import NewAsset, read_json_body
from server.ledger import assets
from server.ledger.idempotency import Outcome


async def create_asset(request: web.Request) -> web.Response:
    """``POST /api/assets`` ``{"code", "scale", "name"?}`` → 201 asset with its system account."""
    body = await read_json_body(request, NewAsset)

    async def operation(db, key):
        asset = await assets.create_asset(db, body.code, body.scale, body.name, actor_of(request))
        return Outcome.of(201, asset_json(asset), location=f"/api/assets/{asset.code}")

    return await respond(request, body, operation)


@read_only
async def list_assets(request: web.Request) -> web.Response:
    """``GET /api/assets`` → 200 ``{"assets": [...]}``, oldest first."""
    async with reading(request).connection() as db:
        listed = await assets.list_assets(db)
    if (allowed := request[GRANT].assets) is not None:  # a key limited to assets sees theirs only
        listed = [asset for asset in listed if asset.code in allowed]
    return web.json_response({"assets": [asset_json(asset) for asset in listed]})


@read_only
async def get_asset(request: web.Request) -> web.Response:
    """``GET /api/assets/{code}`` → 200 the asset plus ``supply`` (sum of all non-system balances)."""
    code = asset_code_from_path(request)
    async with reading(request).connection() as db:
        asset = await assets.read_asset(db, code)
        await check_assets(request, assets=[asset.asset_id])
        supply = await assets.asset_supply(db, asset)
    return web.json_response({**asset_json(asset), "supply": supply})
