"""A small client for the ledger routes, for tests: :func:`send` for any request, and one helper
per common step (an asset, an account, a credit, a transfer, a hold...), each returning
``(status, JSON body)``."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

_codes = itertools.count(1)


class Answer(tuple):
    """What :func:`send` got: unpacks as ``(status, body)`` (``body`` the JSON document, None when
    the body is empty or not JSON), with ``status``, ``body``, ``headers`` (case-insensitive),
    ``content_type`` and ``raw`` (the body's bytes) as attributes."""

    def __new__(cls, status: int, body: Any, headers: Mapping[str, str], content_type: str, raw: bytes):
        answer = super().__new__(cls, (status, body))
        answer.headers, answer.content_type, answer.raw = headers, content_type, raw
        return answer

    @property
    def status(self) -> int:
        return self[0]

    @property
    def body(self) -> Any:
        return self[1]


async def send(http: aiohttp.ClientSession, method: str, path: str, body: dict | list | None = None,
               headers: dict[str, str] | None = None, *, data: bytes | None = None,
               content_type: str | None = "application/json", key: str | None = None, **query) -> Answer:
    """One request on ``http``: ``body`` sent as JSON, or ``data`` as the body's bytes with the
    ``content_type`` given (None: no Content-Type header); ``key`` as the ``Idempotency-Key``
    header; ``query`` as query parameters. Returns the :class:`Answer`, 4xx and 5xx included."""
    headers = dict(headers or {})
    if key is not None:
        headers["Idempotency-Key"] = key
    if data is not None and content_type is not None:
        headers["Content-Type"] = content_type
    async with http.request(method, path, json=body if data is None else None, data=data, headers=headers,
                            params=query or None) as response:
        raw = await response.read()
        try:
            document = json.loads(raw) if raw else None
        except ValueError:
            document = None
        return Answer(response.status, document, response.headers, response.content_type, raw)


PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance", "code"}


def assert_problem(answer: tuple[int, dict], status: int, code: str) -> None:
    """``answer``, a ``(status, body)`` pair or an :class:`Answer`, is RFC 9457 problem details
    (§3.1: type, title, status, detail, instance) with this status and the stable ``code``, whose
    ``type`` is ``/problems/<code>``; an :class:`Answer` also has the problem media type."""
    got, body = answer
    assert got == status, body
    assert PROBLEM_FIELDS <= body.keys(), body
    assert (body["status"], body["code"], body["type"]) == (status, code, f"/problems/{code}"), body
    assert body["detail"] and body["title"], body
    if isinstance(answer, Answer):
        assert answer.content_type == "application/problem+json", answer.content_type


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
