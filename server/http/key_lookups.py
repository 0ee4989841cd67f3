"""Looking API keys up by digest for the requests of one moment in one statement."""

from __future__ import annotations

import asyncio

from server.ledger.api_keys import Grant, valid_grants
from server.running.database import Database


class KeyLookups:
    """Looks up API keys by digest: the keys asked for in one turn of the event loop in one
    statement on ``database`` (each distinct digest once), answered to every request that asked."""

    def __init__(self, database: Database):
        self._database = database
        self._waiting: dict[bytes, asyncio.Future[Grant | None]] | None = None
        self._running: set[asyncio.Task] = set()

    async def grant(self, digest: bytes) -> Grant | None:
        """The grant of the valid key with ``digest``, or None; raises what the database raises
        (:class:`~server.problems.DatabaseUnavailable`, ...)."""
        loop = asyncio.get_running_loop()
        if self._waiting is None:
            self._waiting = {}
            loop.call_soon(self._look_up_waiting)
        future = self._waiting.get(digest)
        if future is None:
            future = self._waiting[digest] = loop.create_future()
            future.add_done_callback(_retrieve)  # a failure nobody waits for any more is not "never retrieved"
        return await asyncio.shield(future)

    def _look_up_waiting(self) -> None:
        waiting, self._waiting = self._waiting, None
        task = asyncio.ensure_future(self._look_up(waiting))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _look_up(self, waiting: dict[bytes, asyncio.Future[Grant | None]]) -> None:
        try:
            async with self._database.connection() as db:
                grants = await valid_grants(db, list(waiting))
        except BaseException as error:  # each request answers as the database failed it (e.g. 503)
            for future in waiting.values():
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for digest, future in waiting.items():
            if not future.done():
                future.set_result(grants.get(digest))


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
