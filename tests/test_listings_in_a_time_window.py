"""GET /api/transfers with from and to: exactly the transfers made in the window, newest first,
page by page, whether the window is recent, lies 1,200 transfers back, or holds none (a window is
read through its own transfers, server/ledger/transfer_reads.py; issue 23)."""

from __future__ import annotations

import asyncio
import datetime as dt

from tests.ledger_api import new_account, new_asset, send, transfer


def _stamp(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _pages(http, **query) -> list[int]:
    ids, cursor = [], None
    while True:
        status, body = await send(http, "GET", "/api/transfers", limit="7", **query,
                                  **({"cursor": cursor} if cursor else {}))
        assert status == 200
        ids += [item["transferId"] for item in body["transfers"]]
        if not (cursor := body["nextCursor"]):
            return ids


def _made_in(db, start: dt.datetime, end: dt.datetime, code: str | None = None) -> list[int]:
    return [row[0] for row in db.execute(
        "SELECT id FROM transfers WHERE created_at >= %s AND created_at < %s AND (%s::text IS NULL OR code = %s) "
        "ORDER BY id DESC", (start, end, code, code))]


async def test_an_old_window_and_a_recent_one_list_exactly_their_transfers_newest_first_page_by_page(http, db):
    code = await new_asset(http)
    a, b = [(await new_account(http, code, overdraftLimit=10**9))["accountId"] for _ in range(2)]
    start = dt.datetime.now(dt.UTC)
    for i in range(30):
        assert (await transfer(http, a, b, 1, code="fee" if i % 3 else "transfer"))[0] == 201
    end = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.01)
    later = [{"fromAccountId": b, "toAccountId": a, "amount": 1} for _ in range(1200)]
    for first in range(0, len(later), 1000):
        status, _ = await send(http, "POST", "/api/transfers/batch",
                               {"atomic": False, "transfers": later[first:first + 1000]})
        assert status == 200
    recent_start = dt.datetime.now(dt.UTC)
    for _ in range(10):
        assert (await transfer(http, a, b, 1))[0] == 201
    recent_end = dt.datetime.now(dt.UTC)

    old = _made_in(db, start, end)
    assert len(old) >= 30
    assert await _pages(http, **{"from": _stamp(start), "to": _stamp(end)}) == old
    assert await _pages(http, code="fee", **{"from": _stamp(start), "to": _stamp(end)}) == \
        _made_in(db, start, end, "fee")
    assert await _pages(http, **{"from": _stamp(recent_start), "to": _stamp(recent_end)}) == \
        _made_in(db, recent_start, recent_end)
    empty_start = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert await _pages(http, **{"from": _stamp(empty_start), "to": _stamp(empty_start + dt.timedelta(hours=1))}) == []
