"""Assets: made with their system account, read by code, and the supply (minor units)."""

from __future__ import annotations

from server.ledger.records import NOBODY, Actor, Asset, Db
from server.problems import AssetExists, AssetNotFound

# A new asset, its system account, its event (asset.created, server/ledger/sql/events.sql) and its
# audit row (audit.sql), in one statement.
CREATE_ASSET = """
WITH asset AS (
    INSERT INTO assets AS s (code, scale, name) VALUES ($1, $2, $3) ON CONFLICT (code) DO NOTHING
 RETURNING s
), system_account AS (
    INSERT INTO accounts (asset_id, name, is_system) SELECT (x.s).id, 'System account', true FROM asset x
 RETURNING id
), event AS MATERIALIZED (
    SELECT record_asset_event(x.s, y.id) AS asset_id FROM asset x CROSS JOIN system_account y
), audit AS MATERIALIZED (
    SELECT record_audit(NULL, $4, $5, $6, 'asset.created', 'asset:' || (x.s).code, NULL,
                        to_jsonb(x.s) || jsonb_build_object('system_account_id', y.id)) AS audit_id
      FROM asset x CROSS JOIN system_account y
)
SELECT (x.s).id, (x.s).code, (x.s).scale, (x.s).name, (x.s).is_default, (x.s).created_at,
       y.id AS system_account_id
  FROM asset x CROSS JOIN system_account y JOIN event e ON e.asset_id = (x.s).id CROSS JOIN audit
"""

_ASSET_COLUMNS = """
SELECT s.id, s.code, s.scale, s.name, s.is_default, s.created_at, a.id AS system_account_id
  FROM assets s JOIN accounts a ON a.asset_id = s.id AND a.is_system
"""
READ_ASSET = _ASSET_COLUMNS + " WHERE s.code = $1"
READ_DEFAULT_ASSET = _ASSET_COLUMNS + " WHERE s.is_default"
LIST_ASSETS = _ASSET_COLUMNS + " ORDER BY s.id"
# minus the system account's balance: the sum of its shards (server/ledger/sql/system_balances.sql)
ASSET_SUPPLY = "SELECT -coalesce(sum(balance), 0) FROM system_balance_shards WHERE asset_id = $1"


async def create_asset(db: Db, code: str, scale: int, name: str | None, actor: Actor = NOBODY) -> Asset:
    """Create asset ``code`` and its system account, audited as made by ``actor``; raises
    :class:`AssetExists` (409)."""
    row = await db.fetchrow(CREATE_ASSET, code, scale, name, *actor.parameters())
    if row is None:
        raise AssetExists(code)
    return Asset(*row.values())


async def read_asset(db: Db, code: str) -> Asset:
    """Asset ``code``; raises :class:`AssetNotFound` (404)."""
    row = await db.fetchrow(READ_ASSET, code)
    if row is None:
        raise AssetNotFound(code)
    return Asset(*row.values())


async def read_default_asset(db: Db) -> Asset:
    """The default asset (made by migrations/0004.assets-accounts-double-entry.sql, code DEFAULT_ASSET_CODE)."""
    return Asset(*(await db.fetchrow(READ_DEFAULT_ASSET)).values())


async def list_assets(db: Db) -> list[Asset]:
    """Every asset, oldest first."""
    return [Asset(*row.values()) for row in await db.fetch(LIST_ASSETS)]


async def asset_supply(db: Db, asset: Asset) -> int:
    """The sum of all non-system balances of ``asset`` (minor units)."""
    return int(await db.fetchval(ASSET_SUPPLY, asset.asset_id))


class AssetDirectory:
    """The assets this process has looked up, by code. Assets are never deleted and their id and
    system account never change, so an asset found once stays valid; an unknown code is asked of
    the database each time (it may have been created since). ``default`` is the default asset once
    looked up (None before: the service starts even while the database is down)."""

    def __init__(self) -> None:
        self.default: Asset | None = None
        self._by_code: dict[str, Asset] = {}

    async def get(self, db: Db, code: str | None) -> Asset:
        """The asset ``code`` (None: the default asset); raises :class:`AssetNotFound`."""
        if code is None:
            if self.default is None:
                self.default = await read_default_asset(db)
            return self.default
        asset = self._by_code.get(code)
        if asset is None:
            asset = self._by_code[code] = await read_asset(db, code)
        return asset
