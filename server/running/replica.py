"""Where read-only requests go when a streaming replica is configured (``DATABASE_REPLICA_URL``).

A watcher task asks the replica every ``REPLICA_CHECK_INTERVAL`` seconds how far behind it is, and
the primary whether it answers. The replica's lag is 0 while its WAL receiver is streaming and has
replayed all it received (replay position at or past the receive position: a WAL receiver that has
just reconnected reports the start of the WAL segment it asked for, before the records it already
replayed, until the primary sends something new); otherwise it is the time since the last transaction it replayed
(``pg_last_xact_replay_timestamp()``; PostgreSQL docs §27.4, "Hot Standby", and §9.27.4, "Recovery
Control Functions"). A server that is not in recovery (promoted, or not a replica) is never used.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from server.problems import DATABASE_UNAVAILABLE_ERRORS
from server.running.database import Database

log = logging.getLogger(__name__)

# seconds behind the primary (see the module doc); NULL when the server is not a replica
REPLICA_LAG = """
SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN (SELECT status FROM pg_stat_wal_receiver) = 'streaming'
                 AND pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 'Infinity') END::float8
"""


@dataclass(frozen=True, slots=True)
class ReadSource:
    """Where one read goes: ``database``, and whether it is the replica and possibly stale (the
    replica while the primary does not answer: its lag cannot be known)."""

    database: Database
    replica: bool = False
    possibly_stale: bool = False


class ReplicaRouting:
    """The read routing of one worker: :meth:`choose` a source per read request.

    ``primary`` and ``replica`` are the two databases; ``max_lag`` and ``interval`` are seconds.
    Until its first check the replica counts as unusable, so reads start on the primary.
    """

    def __init__(self, primary: Database, replica: Database | None, max_lag: float, interval: float):
        self.primary, self.replica = primary, replica
        self.max_lag, self.interval = max_lag, interval
        self.lag: float | None = None  # the replica's, in seconds; None: unreachable or not a replica
        self.primary_up = True

    def choose(self, force_primary: bool = False) -> ReadSource:
        """The replica when it is at most ``max_lag`` behind; the primary otherwise, or when forced
        (a client reading its own write); the replica again, marked possibly stale, when the
        primary does not answer and the replica does."""
        if self.replica is None or force_primary:
            return ReadSource(self.primary)
        if not self.primary_up and self.lag is not None:
            return ReadSource(self.replica, replica=True, possibly_stale=True)
        if self.lag is not None and self.lag <= self.max_lag:
            return ReadSource(self.replica, replica=True)
        return ReadSource(self.primary)

    def fallback(self) -> ReadSource | None:
        """After a read failed on the primary for want of it: the replica (possibly stale), if it
        answers; the primary is counted down until the next check."""
        self.primary_up = False
        if self.replica is None or self.lag is None:
            return None
        return ReadSource(self.replica, replica=True, possibly_stale=True)

    async def watch(self) -> None:
        """Check both servers every ``interval`` seconds, forever (cancelled at shutdown)."""
        while True:
            await self.check()
            await asyncio.sleep(self.interval)

    async def check(self) -> None:
        """One check: the replica's lag and whether the primary answers ``SELECT 1``."""
        self.lag = await self._ask(self.replica.pool, REPLICA_LAG) if self.replica else None
        self.primary_up = await self._ask(self.primary.pool, "SELECT 1") is not None

    async def _ask(self, pool: asyncpg.Pool, query: str) -> float | None:
        try:
            async with asyncio.timeout(max(self.interval, 1.0)):
                return await pool.fetchval(query)
        except DATABASE_UNAVAILABLE_ERRORS:
            return None
