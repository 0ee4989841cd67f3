"""Idempotency keys on HTTP requests: the header, the fingerprint of a request, and running a
mutating request so that its outcome is stored under its key in the same transaction as the change
(the rules are in :mod:`server.ledger.idempotency`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from server.http.app_keys import DATABASE, GRANT, SETTINGS
from server.http.request_bodies import StrictBody, canonical_json
from server.ledger.idempotency import (
    CLAIM_KEY,
    READ_STORED,
    STORE_OUTCOME,
    KeyedRequest,
    KeyVanished,
    Outcome,
    retry_transaction,
    stored_outcome,
)
from server.problems import HeaderRepeated, Problem, ValidationFailed, instance
from server.running.database import Database

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"

# An operation run for a request: (connection, idempotency key or None) -> its outcome.
Operation = Callable[[asyncpg.Pool | asyncpg.Connection, str | None], Awaitable[Outcome]]


def outcome_response(outcome: Outcome, replayed: bool = False) -> web.Response:
    """The HTTP response of ``outcome``, with ``Idempotent-Replayed: true`` when it is replayed."""
    headers = {"Location": outcome.location} if outcome.location else {}
    if replayed or outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.Response(status=outcome.status, body=outcome.body.encode(), content_type=outcome.content_type,
                        headers=headers)


def idempotency_key(request: web.Request) -> str | None:
    """The request's ``Idempotency-Key``, or None; raises HeaderRepeated (400) when the header is
    given more than once (the draft's key is one string; RFC 9110 §5.3 would join repeats with
    commas, which would make two keys one), ValidationFailed (422) unless it is 1-255 printable
    ASCII characters (0x20-0x7E)."""
    key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if key is None:  # most requests: one look-up, no list
        return None
    if len(request.headers.getall(IDEMPOTENCY_KEY_HEADER)) > 1:
        raise HeaderRepeated(IDEMPOTENCY_KEY_HEADER)
    if 1 <= len(key) <= 255 and all(" " <= char <= "~" for char in key):
        return key
    raise ValidationFailed([{"field": IDEMPOTENCY_KEY_HEADER, "reason": "must be 1 to 255 printable ASCII characters"}])


async def _run_keyed(database: Database, operation: Operation, key: str, fingerprint: str,
                     instance: str, retention: dt.timedelta) -> tuple[Outcome, bool]:
    async with database.connection() as conn, conn.transaction():
        if await conn.fetchval(CLAIM_KEY, key, fingerprint, retention) is None:
            stored = await conn.fetchrow(READ_STORED, key)
            if stored is None:
                raise KeyVanished()
            return stored_outcome(stored, fingerprint, key), True
        try:
            outcome = await operation(conn, key)
        except Problem as refusal:  # a refusal is an outcome too; the operation wrote nothing
            outcome = Outcome.of_problem(refusal, instance)
        await conn.execute(STORE_OUTCOME, key, outcome.status,
                           outcome.body if outcome.stored_body is None else outcome.stored_body,
                           outcome.content_type, outcome.location)
        return outcome, False


def keyed_request(request: web.Request, body: StrictBody) -> KeyedRequest | None:
    """The request's key and fingerprint, or None without a key; raises ValidationFailed (422)
    for a malformed key (see :func:`idempotency_key`)."""
    key = idempotency_key(request)
    if key is None:
        return None
    path = instance(request)
    fingerprint = f"{request.method} {path} {canonical_json(body)}"
    if (grant := request.get(GRANT)) is not None and grant.actor.key_id is not None:
        fingerprint += f" key {grant.actor.key_id}"  # another API key reusing it is refused, not replayed
    return KeyedRequest(key, fingerprint, path)


async def respond(request: web.Request, body: StrictBody, operation: Operation,
                  on_replay: Callable[[], None] | None = None) -> web.Response:
    """Run ``operation`` for ``request`` (whose validated body is ``body``) and answer its outcome.

    Without an Idempotency-Key the operation runs on one pool connection (one statement, one round
    trip). With one, it runs in a transaction that also claims the key and stores the outcome; see
    the module docstring; ``on_replay`` is called when a stored outcome is replayed. Deadlocks and
    serialization failures are retried (:func:`retry_transaction`).
    """
    database = request.app[DATABASE]
    keyed = keyed_request(request, body)
    if keyed is None:
        async def attempt() -> Outcome:
            async with database.connection() as conn:
                return await operation(conn, None)

        return outcome_response(await retry_transaction(attempt))
    retention = dt.timedelta(seconds=request.app[SETTINGS].idempotency_key_retention)
    outcome, replayed = await retry_transaction(
        lambda: _run_keyed(database, operation, keyed.key, keyed.fingerprint, keyed.instance, retention)
    )
    if replayed and on_replay is not None:
        on_replay()
    return outcome_response(outcome, replayed)
