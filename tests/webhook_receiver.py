"""A webhook receiver for tests: a real aiohttp server on a loopback port, recording what it gets,
failing or going down when told, and measuring how many deliveries it has in flight at once."""

from __future__ import annotations

import asyncio
import json
import random

from aiohttp import web
from standardwebhooks import Webhook

from tests.service_process import free_port


class Receiver:
    """POSTs to ``url`` are recorded in ``got`` (``(headers, body)``) when answered 2xx.
    ``fail_next`` answers the next N with 500; ``fail_rate`` a random share; ``delay`` seconds per
    request; ``stop()`` / ``start()`` take the socket down and up again."""

    def __init__(self, fail_rate: float = 0.0, delay: float = 0.0, seed: int = 24):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        self.fail_next, self.fail_rate, self.delay = 0, fail_rate, delay
        self.in_flight = self.max_in_flight = 0
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.read()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail_next > 0 or self._random.random() < self.fail_rate:
                self.fail_next = max(0, self.fail_next - 1)
                return web.Response(status=500)
            self.got.append((dict(request.headers), body))
            return web.Response(status=204)
        finally:
            self.in_flight -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def events(self, asset: str | None = None) -> list[dict]:
        """The bodies received, in arrival order, of ``asset`` (None: all)."""
        bodies = [json.loads(body) for _, body in self.got]
        return [b for b in bodies if asset is None or b["data"].get("asset", b["data"].get("code")) == asset]

    def verify_all(self, secret: str) -> None:
        """Every delivery received verifies with the standardwebhooks library (raises if not)."""
        webhook = Webhook(secret)
        for headers, body in self.got:
            webhook.verify(body, {name.lower(): value for name, value in headers.items()})
