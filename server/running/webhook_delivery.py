"""Delivering the change feed to webhook endpoints: which targets are allowed, and the dispatcher.

Each worker runs one :class:`Dispatcher` (``WEBHOOK_DISPATCH``, default on). Every
``EVENTS_POLL_INTERVAL`` seconds it looks for enabled endpoints whose next attempt is due and runs
each that no other dispatcher runs: one per endpoint across workers and instances, decided by a
transaction-level advisory lock (``pg_try_advisory_xact_lock``, PostgreSQL docs §13.3.5) held in an
open transaction on a connection of its own for the length of a run. That transaction writes
nothing, so it has no transaction id and does not hold the feed's horizon back; when the
process dies (``kill -9``) PostgreSQL ends the session and the lock with it. A run reads the
endpoint's cursor under the lock and sends its events one at a time, in feed order, each signed as
Standard Webhooks says (``webhook-id``: the event's id, ``webhook-timestamp``,
``webhook-signature``: the ``standardwebhooks`` package). After a 2xx the cursor moves past the
event (at least once: a crash between the answer and that write sends it again); after anything
else the endpoint waits ``WEBHOOK_RETRY_SCHEDULE``'s next delay and the same event is tried again,
so nothing later is sent before it; when the schedule has run out it is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import socket
import time
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
from standardwebhooks import Webhook

from server.ledger import webhooks
from server.ledger.events import Event, FeedFilter, read_events
from server.problems import WebhookTargetNotAllowed
from server.running import metrics

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock(key1, key2): key1 says "a webhook endpoint", key2 is its id
ADVISORY_LOCK_KEY = 0x5EB0
RUN_EVENTS = 100  # events read per query of a run
MAX_RUN_SECONDS = 30.0  # then the lock is let go and taken again: other dispatchers get their turn


async def check_target(url: str, allow_private: bool) -> None:
    """Refuse (:class:`WebhookTargetNotAllowed`) a URL that is not http(s) with a host, or whose
    host is or resolves to an address that is not globally routable (loopback, RFC 1918 private,
    link-local, unique-local, multicast, reserved, unspecified), unless ``allow_private``."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:  # e.g. "http://[x": not an IPv6 literal; a port that is not a number
        raise WebhookTargetNotAllowed(url, "it is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise WebhookTargetNotAllowed(url, "only http:// and https:// URLs with a host are allowed")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        raise WebhookTargetNotAllowed(url, f"its host {host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise WebhookTargetNotAllowed(url, f"{host} is {address}, not a public address "
                                               "(WEBHOOK_ALLOW_PRIVATE_TARGETS=true allows it)")


def webhook_body(document: dict) -> bytes:
    """What is POSTed for an event: the event as ``GET /api/events`` shows it (``document``) and
    ``timestamp``, the field Standard Webhooks' payload names."""
    return orjson.dumps({**document, "timestamp": document["occurredAt"]})


class Dispatcher:
    """A worker's webhook dispatcher (see the module's docstring). ``render`` makes an event's
    document (``server.http.handlers.documents.event_json``); ``delays`` are
    ``WEBHOOK_RETRY_SCHEDULE``'s seconds; ``timeout`` bounds one attempt (seconds)."""

    def __init__(self, pool: asyncpg.Pool, render, delays: list[float], timeout: float, allow_private: bool,
                 interval: float, max_concurrent: int = 4):
        self.pool, self.render, self.delays, self.timeout = pool, render, delays, timeout
        self.allow_private, self.interval = allow_private, interval
        self._running: dict[int, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(max_concurrent)
        self._session: aiohttp.ClientSession | None = None

    async def run_forever(self) -> None:
        """Look for due endpoints every ``interval`` seconds until cancelled."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            while True:
                try:
                    for webhook_id in [row["id"] for row in await self.pool.fetch(webhooks.DUE)]:
                        if webhook_id not in self._running:
                            self._running[webhook_id] = asyncio.create_task(self._run(webhook_id))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    log.warning("webhook dispatcher could not read the endpoints: %r", error)
                await asyncio.sleep(self.interval)
        finally:
            for task in self._running.values():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._running.values(), return_exceptions=True)
            await self._session.close()

    async def _run(self, webhook_id: int) -> None:
        try:
            async with self._slots, self.pool.acquire() as lock_conn, lock_conn.transaction():
                if await lock_conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", ADVISORY_LOCK_KEY,
                                            webhook_id):
                    await self._deliver(webhook_id, lock_conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("webhook %s: run stopped: %r", webhook_id, error)
        finally:
            self._running.pop(webhook_id, None)

    async def _deliver(self, webhook_id: int, lock_conn: asyncpg.Connection) -> None:
        """Send endpoint ``webhook_id``'s events from its cursor until there are none, one fails,
        or :data:`MAX_RUN_SECONDS` have passed. ``lock_conn`` holds its advisory lock in a
        transaction that only reads (so it never gets a transaction id, which would hold the feed's
        horizon back); the attempts are written on other connections of the pool."""
        started = time.monotonic()
        while time.monotonic() - started < MAX_RUN_SECONDS:
            endpoint = await webhooks.endpoint_to_deliver(lock_conn, webhook_id)
            if endpoint is None:
                return
            wanted = FeedFilter(tuple(endpoint.types) if endpoint.types else None)
            events, cursor = await read_events(lock_conn, endpoint.cursor, RUN_EVENTS, wanted)
            failures = endpoint.failures  # of the first event: the one tried before, if any
            for event in events:
                if not await self._attempt(endpoint, event, failures):
                    return
                failures = 0
            if cursor != endpoint.cursor and (not events or cursor != events[-1].cursor):
                # past events not of its types: nothing to send, no reason to read them again
                await self.pool.execute(webhooks.MOVE_ON, webhook_id, cursor.position, cursor.event_id, cursor.index)
            if not events and cursor == endpoint.cursor:
                return

    async def _attempt(self, endpoint: webhooks.Endpoint, event: Event, failures: int) -> bool:
        """POST ``event`` to ``endpoint`` once (``failures``: its attempts that failed before, in a
        row) and record the attempt; whether it was delivered."""
        message_id = event.cursor.encode()
        body = webhook_body(self.render(event))
        now = dt.datetime.now(dt.UTC)
        headers = {"content-type": "application/json", "webhook-id": message_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": Webhook(endpoint.secret).sign(message_id, now, body.decode()),
                   "user-agent": "balance-api-webhooks"}
        attempt = failures + 1
        status, error = None, None
        started = time.monotonic()
        try:
            await check_target(endpoint.url, self.allow_private)  # again: the name may resolve elsewhere now
            async with self._session.post(endpoint.url, data=body, headers=headers, allow_redirects=False) as answer:
                status = answer.status
                await answer.read()
                if not 200 <= status < 300:
                    error = f"answered HTTP {status}"
        except WebhookTargetNotAllowed as refused:
            error = refused.detail
        except (aiohttp.ClientError, OSError, TimeoutError) as failure:
            error = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
        latency_ms = (time.monotonic() - started) * 1000
        if error is None:
            await self.pool.execute(webhooks.DELIVERED, endpoint.webhook_id, *event.cursor, attempt, status,
                                    latency_ms)
            metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
            return True
        delay = self.delays[failures] if failures < len(self.delays) else None
        await self.pool.execute(webhooks.FAILED, endpoint.webhook_id, *event.cursor, attempt, status, latency_ms,
                                delay, error)
        metrics.WEBHOOK_DELIVERIES.labels("failed" if delay is not None else "disabled").inc()
        if delay is None:
            log.warning("webhook %s disabled after %s failed attempts in a row: %s", endpoint.webhook_id, attempt,
                        error)
        return False

    async def sample_lag(self) -> None:
        """Set each enabled endpoint's lag gauges (events and seconds behind the feed)."""
        async with self.pool.acquire() as db:
            for endpoint in await webhooks.list_endpoints(db):
                if endpoint.status != "enabled":
                    metrics.WEBHOOK_LAG_EVENTS.labels(str(endpoint.webhook_id)).set(0)
                    metrics.WEBHOOK_LAG_SECONDS.labels(str(endpoint.webhook_id)).set(0)
                    continue
                events, seconds = await webhooks.endpoint_lag(db, endpoint)
                metrics.WEBHOOK_LAG_EVENTS.labels(str(endpoint.webhook_id)).set(events)
                metrics.WEBHOOK_LAG_SECONDS.labels(str(endpoint.webhook_id)).set(seconds)
