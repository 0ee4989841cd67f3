"""Keys limited to assets (``POST /api/keys`` ``"assets"``): a request of such a key that reads or
changes an account, a transfer or an asset of any other asset is 403 ``forbidden`` with
``requiredAsset``, before anything is changed.

An account's and a transfer's asset never change once made, so one look-up before the operation
decides it for good (no race with the operation that follows). A key without an asset limit
costs nothing here: each check returns before any look-up.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from server.http.app_keys import DATABASE, GRANT
from server.problems import Forbidden

# The first asset, among those of accounts $1, transfers $2 and assets $3, that is not in $4
# (ids that name nothing are left to the operation: 404).
OUTSIDE = """
SELECT s.code FROM (SELECT asset_id FROM accounts WHERE id = ANY ($1)
                    UNION ALL SELECT asset_id FROM transfers WHERE id = ANY ($2)
                    UNION ALL SELECT unnest($3::integer[])) x
  JOIN assets s ON s.id = x.asset_id
 WHERE x.asset_id <> ALL ($4)
 LIMIT 1
"""


def limited(request: web.Request) -> bool:
    """Whether the request's key is limited to some assets."""
    return request[GRANT].asset_ids is not None


async def check_assets(request: web.Request, *, accounts: Iterable[int | None] = (),
                       transfers: Iterable[int | None] = (), assets: Iterable[int | None] = ()) -> None:
    """Raise :class:`~server.problems.Forbidden` (403, ``requiredAsset``) unless the request's key
    may use the assets of ``accounts`` and ``transfers`` (ids) and ``assets`` (ids); None ids are
    skipped. One statement, only for a key limited to assets."""
    allowed = request[GRANT].asset_ids
    if allowed is None:
        return
    account_ids = [n for n in accounts if n is not None]
    transfer_ids = [n for n in transfers if n is not None]
    asset_ids = [n for n in assets if n is not None]
    if not (account_ids or transfer_ids or asset_ids):
        return
    async with request.app[DATABASE].connection() as db:
        code = await db.fetchval(OUTSIDE, account_ids, transfer_ids, asset_ids, list(allowed))
    if code is not None:
        raise Forbidden(required_asset=code)
