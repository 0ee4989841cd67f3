"""Plain HTTP calls to a service process from tests: one request each, answers as data."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from email.message import Message

import aiohttp


def call(url: str, method: str = "GET", body: dict | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Message, dict | None]:
    """One request with ``urllib``: ``(status, headers, JSON body or None)``; 4xx/5xx included."""
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read() or b"null")


async def patch_balance(url: str, user: int, amount: int) -> tuple[int, dict, dict]:
    """``PATCH /api/balance`` on a fresh connection: ``(status, headers, JSON body)``. The client
    waits up to 60 s, far above every service timeout the tests configure, so a hang fails."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.patch(f"{url}/api/balance", json={"userId": user, "amount": amount}) as response:
            return response.status, dict(response.headers), await response.json(content_type=None)
