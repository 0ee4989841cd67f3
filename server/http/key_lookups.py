"""Looking API keys up by digest for the requests of one moment in one statement."""

from __future__ import annotations

import asyncio

from server.ledger.api_keys import Grant, valid_grants
from server.running.database import Database


class KeyLookups:
    """Looks up API keys by digest, one statement on ``database`` at a time: the keys asked for
    while one look-up runs go together in the next (each distinct digest once), as the batcher
    gathers balance changes (server/ledger/batching.py). A look-up always starts after the
    requests it answers arrived, so it sees every revoke committed before them."""

    def __init__(self, database: Database):
        self._database = database
        self._waiting: dict[bytes, list[asyncio.Future[Grant | None]]] = {}
        self._runner: asyncio.Task | None = None

    async def grant(self, digest: bytes) -> Grant | None:
        """The grant of the valid key with ``digest``, or None; raises what the database raises
        (:class:`~server.problems.DatabaseUnavailable`, ...)."""
        future = asyncio.get_running_loop().create_future()  # this request's own: its cancel is its own
        self._waiting.setdefault(digest, []).append(future)
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._look_up_while_waiting())
        return await future

    async def _look_up_while_waiting(self) -> None:
        try:
            while self._waiting:
                waiting, self._waiting = self._waiting, {}
                try:
                    async with self._database.connection() as db:
                        grants = await valid_grants(db, list(waiting))
                except Exception as error:  # noqa: BLE001 (each request answers as the database failed it: 503)
                    for futures in waiting.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(error)
                    continue
                for digest, futures in waiting.items():
                    grant = grants.get(digest)
                    for future in futures:
                        if not future.done():
                            future.set_result(grant)
        finally:
            self._runner = None
