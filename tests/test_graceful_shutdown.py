"""SIGTERM: stop accepting, let in-flight requests finish (for at most SHUTDOWN_TIMEOUT seconds),
close the pool, exit 0. A request that got 200 is committed; one that got no answer is committed
entirely or not at all. (Stopping the embedded PostgreSQL on exit: tests/test_serve.py.)"""

import asyncio
import signal
import socket
import time

import aiohttp

from tests.conftest import ledger_state
from tests.http_calls import patch_balance
from tests.metrics_reading import scrape, value
from tests.row_locks import wait_for_lock_waiters
from tests.service_process import poll_until, running_service


async def patch(url: str, user: int, amount: int) -> int | str:
    """The status of a ``PATCH /api/balance``, or the client error's name when no answer came."""
    try:
        return (await patch_balance(url, user, amount))[0]
    except aiohttp.ClientError as error:
        return type(error).__name__


def wait_for_pending(url: str, count: int, seconds: float = 20) -> None:
    """Wait until the service counts ``count`` requests waiting on the database (in its pool queue,
    its batcher, or in PostgreSQL behind our lock): ``db_pending_requests`` of /metrics."""
    assert poll_until(lambda: value(scrape(url), "db_pending_requests") >= count, seconds), \
        f"{count} requests never got to the database"


def refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


async def test_on_sigterm_in_flight_requests_finish_and_are_committed_and_new_ones_are_refused(
    database_url, db, new_user, tmp_path
):
    user = new_user(100)
    with running_service(tmp_path / "service.log", database_url=database_url, shutdown_timeout="30",
                         db_statement_timeout="30") as (url, process):
        with db.transaction():
            db.execute("SELECT 1 FROM accounts WHERE user_id = %s FOR UPDATE", (user,))
            in_flight = [asyncio.create_task(patch(url, user, -1)) for _ in range(3)]
            await asyncio.to_thread(wait_for_lock_waiters, database_url, 1)  # the first; the others queue
            await asyncio.to_thread(wait_for_pending, url, 3)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert refuses_connections(url), "still accepting after SIGTERM"
            assert process.poll() is None, "exited with requests in flight"
        assert await asyncio.gather(*in_flight) == [200, 200, 200]
        assert await asyncio.to_thread(process.wait, 30) == 0
    assert ledger_state(db, user) == (97, 4, 97)


async def test_shutdown_waits_no_longer_than_shutdown_timeout_and_leaves_the_ledger_whole(
    database_url, db, new_user, tmp_path
):
    user = new_user(100)
    with running_service(tmp_path / "service.log", database_url=database_url, shutdown_timeout="1",
                         db_statement_timeout="60") as (url, process):
        with db.transaction():  # held until the service has gone: its requests cannot finish in time
            db.execute("SELECT 1 FROM accounts WHERE user_id = %s FOR UPDATE", (user,))
            in_flight = [asyncio.create_task(patch(url, user, -1)) for _ in range(2)]
            await asyncio.to_thread(wait_for_lock_waiters, database_url, 1)
            await asyncio.to_thread(wait_for_pending, url, 2)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 30) == 0, "did not exit while requests were stuck"
            answers = await asyncio.gather(*in_flight)
        assert 200 not in answers  # no answer was given for work that had not finished
    time.sleep(0.5)  # the orphaned statements run once the lock is gone
    state = ledger_state(db, user)
    assert state.balance == state.entries_sum and 98 <= state.balance <= 100  # each change whole or absent
