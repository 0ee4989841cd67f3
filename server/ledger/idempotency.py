"""Idempotency keys with the semantics of Stripe's API, and the bounded retry of transactions.

A mutating request may carry ``Idempotency-Key: <1-255 printable ASCII characters>``
(:mod:`server.http.idempotent_requests` reads it and runs the request):

* The first request with a key is processed; its outcome (status and body, refusals such as
  ``insufficient_funds`` included) is stored in the SAME transaction as the change itself, so
  either both commit or neither does.
* A retry with the same key, route and body gets the stored status and body again, with
  ``Idempotent-Replayed: true``, and changes nothing, even if the state has changed since.
* The same key with another route or body is refused: 422 ``idempotency_key_reused``.
* Concurrent requests with the same key: the first one's ``INSERT ... ON CONFLICT`` claims the
  key; the others' inserts wait on the primary-key index entry until it commits (PostgreSQL docs,
  INSERT, "ON CONFLICT Clause"), then find the stored outcome and replay it. Exactly one change.
* A key expires ``IDEMPOTENCY_KEY_RETENTION`` seconds after first use: an expired key is claimed
  afresh, and :func:`purge_expired_keys` deletes expired rows in small batches, skipping rows that
  an in-flight request holds (``SKIP LOCKED``), so it never blocks a request.

Requests that fail validation are not stored (as in Stripe): nothing was attempted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import orjson

from server.problems import DATABASE_UNAVAILABLE_ERRORS, PROBLEM_CONTENT_TYPE, IdempotencyKeyReused, Problem

log = logging.getLogger(__name__)

# Claim a key: a new one, or one whose retention has run out (then it starts over).
CLAIM_KEY = """
INSERT INTO idempotency_keys AS stored (key, fingerprint) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, status = NULL, body = NULL, content_type = NULL,
       location = NULL, created_at = now()
 WHERE stored.created_at < now() - $3::interval
RETURNING true
"""
READ_STORED = "SELECT fingerprint, status, body, content_type, location FROM idempotency_keys WHERE key = $1"
STORE_OUTCOME = "UPDATE idempotency_keys SET status = $2, body = $3, content_type = $4, location = $5 WHERE key = $1"

# The same three steps for many keys at once (server/ledger/batching.py). Keys are claimed in key order,
# so two batches claiming overlapping keys wait for each other instead of deadlocking.
CLAIM_KEYS = """
INSERT INTO idempotency_keys AS stored (key, fingerprint)
SELECT key, fingerprint FROM unnest($1::text[], $2::text[]) AS claim(key, fingerprint) ORDER BY key
ON CONFLICT (key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, status = NULL, body = NULL, content_type = NULL,
       location = NULL, created_at = now()
 WHERE stored.created_at < now() - $3::interval
RETURNING key
"""
READ_STORED_MANY = """
SELECT key, fingerprint, status, body, content_type, location FROM idempotency_keys WHERE key = ANY($1::text[])
"""
STORE_OUTCOMES = """
UPDATE idempotency_keys AS stored
   SET status = outcome.status, body = outcome.body, content_type = outcome.content_type,
       location = outcome.location
  FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[], $5::text[])
       AS outcome(key, status, body, content_type, location)
 WHERE stored.key = outcome.key
"""
PURGE_EXPIRED = """
DELETE FROM idempotency_keys WHERE key IN (
    SELECT key FROM idempotency_keys WHERE created_at < now() - $1::interval
     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
"""

PURGE_BATCH = 1000  # expired keys deleted per statement


class KeyVanished(Exception):
    """The key expired and was purged between our claim attempt and our read: try again."""


# SQLSTATE 40P01 and 40001: PostgreSQL asks the client to retry the transaction (docs §13.4).
RETRYABLE_ERRORS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, KeyVanished)
RETRY_ATTEMPTS = 5

Result = TypeVar("Result")


async def retry_transaction(attempt: Callable[[], Awaitable[Result]]) -> Result:
    """Run ``attempt`` (a whole transaction) again, up to 5 times in all, after a deadlock or
    serialization failure, with a short random back-off; the last failure propagates."""
    for number in range(1, RETRY_ATTEMPTS + 1):
        try:
            return await attempt()
        except RETRYABLE_ERRORS:
            if number == RETRY_ATTEMPTS:
                raise
            log.info("transaction retried after a deadlock or serialization failure (attempt %d)", number)
            await asyncio.sleep(random.uniform(0, 0.005 * 2**number))
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a mutating request answered: status, body (JSON text), content type, Location."""

    status: int
    body: str
    content_type: str = "application/json"
    location: str | None = None
    # the request found what it asks for already made (a transfer's reference): answered with
    # Idempotent-Replayed; not stored (a replay under an Idempotency-Key says so anyway)
    replayed: bool = False
    # the body a replay answers, when it is not ``body``: a new API key's text is answered once and
    # never stored (POST /api/keys); None: ``body``
    stored_body: str | None = None

    @classmethod
    def of(cls, status: int, document: dict, location: str | None = None, replayed: bool = False) -> Outcome:
        """``document`` (JSON types; integers within 64 bits, as every amount and balance is) as the
        body, encoded by orjson: a batch's answer holds up to 10,000 transfers, and the standard
        library's encoder was 17% of the service's CPU on bulk batches (py-spy)."""
        return cls(status, orjson.dumps(document).decode(), "application/json", location, replayed)

    @classmethod
    def of_problem(cls, problem: Problem, instance: str) -> Outcome:
        return cls(problem.status, json.dumps(problem.body(instance)), PROBLEM_CONTENT_TYPE)


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A mutating request's Idempotency-Key, its fingerprint (method, raw path, canonical body)
    and the path a refusal's problem document names as ``instance``."""

    key: str
    fingerprint: str
    instance: str


def stored_outcome(stored: asyncpg.Record, fingerprint: str, key: str) -> Outcome:
    """The outcome stored under ``key`` for a replay; raises IdempotencyKeyReused (422) when it was
    stored for another request (``fingerprint`` differs)."""
    if stored["fingerprint"] != fingerprint:
        raise IdempotencyKeyReused(key)
    return Outcome(stored["status"], stored["body"], stored["content_type"], stored["location"])


async def purge_expired_keys(pool: asyncpg.Pool, retention: dt.timedelta) -> int:
    """Delete up to ``PURGE_BATCH`` expired keys, never waiting for one in use; return how many."""
    status = await pool.execute(PURGE_EXPIRED, retention, PURGE_BATCH)
    return int(status.split()[-1])


async def purge_expired_keys_forever(pool: asyncpg.Pool, retention: dt.timedelta, interval: float) -> None:
    """Purge expired keys every ``interval`` seconds (at once again while batches come back full)."""
    while True:
        try:
            full = await purge_expired_keys(pool, retention) == PURGE_BATCH
        except DATABASE_UNAVAILABLE_ERRORS as error:
            log.warning("could not purge expired idempotency keys: %r", error)
            full = False
        if not full:
            await asyncio.sleep(interval)
