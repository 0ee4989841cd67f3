"""A small client for the ledger routes, for tests: each call returns ``(status, JSON body)``."""

from __future__ import annotations

import itertools

import aiohttp

_codes = itertools.count(1)


async def send(http: aiohttp.ClientSession, method: str, path: str, body: dict | None = None,
               headers: dict[str, str] | None = None, **query) -> tuple[int, dict]:
    async with http.request(method, path, json=body, headers=headers, params=query or None) as response:
        return response.status, await response.json(content_type=None)


async def new_asset(http, scale: int = 0, prefix: str = "asset") -> str:
    """Create an asset with a fresh code; return the code."""
    code = f"{prefix}_{next(_codes)}_{id(http) % 100000}"
    status, body = await send(http, "POST", "/api/assets", {"code": code, "scale": scale})
    assert status == 201, body
    return code


async def new_account(http, asset: str, **fields) -> dict:
    """Open an account (fields: userId, name, overdraftLimit, maxBalance, metadata); return it."""
    status, body = await send(http, "POST", "/api/accounts", {"asset": asset, **fields})
    assert status == 201, body
    return body


async def funded_pair(http, amount: int, **receiver) -> tuple[int, int]:
    """Two accounts of a fresh asset, the first credited ``amount``; ``receiver``: the second's
    fields (e.g. maxBalance). Returns their ids."""
    code = await new_asset(http)
    buyer, seller = await new_account(http, code), await new_account(http, code, **receiver)
    await credit(http, buyer["accountId"], amount)
    return buyer["accountId"], seller["accountId"]


async def new_user(http) -> int:
    status, body = await send(http, "POST", "/api/users")
    assert status == 201, body
    return body["userId"]


async def credit(http, account_id: int, amount: int, **fields) -> tuple[int, dict]:
    return await send(http, "POST", f"/api/accounts/{account_id}/credit", {"amount": amount, **fields})


async def transfer(http, source: int, destination: int, amount: int, **fields) -> tuple[int, dict]:
    return await send(http, "POST", "/api/transfers",
                      {"fromAccountId": source, "toAccountId": destination, "amount": amount, **fields})


async def balance(http, account_id: int) -> int:
    status, body = await send(http, "GET", f"/api/accounts/{account_id}")
    assert status == 200, body
    return body["balance"]


async def hold(http, source: int, destination: int, amount: int, **fields) -> tuple[int, dict]:
    """A pending transfer (fields: timeoutSeconds, code, ...)."""
    return await transfer(http, source, destination, amount, pending=True, **fields)


async def post(http, transfer_id: int, amount: int | None = None) -> tuple[int, dict]:
    return await send(http, "POST", f"/api/transfers/{transfer_id}/post", {} if amount is None else {"amount": amount})


async def void(http, transfer_id: int) -> tuple[int, dict]:
    return await send(http, "POST", f"/api/transfers/{transfer_id}/void", {})


async def account(http, account_id: int) -> dict:
    status, body = await send(http, "GET", f"/api/accounts/{account_id}")
    assert status == 200, body
    return body
