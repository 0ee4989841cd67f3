"""``balance-api serve --workers N``: N server processes sharing one port through SO_REUSEPORT.

The supervisor (the process the user started) owns what is shared: the embedded PostgreSQL, the
migrations, the metrics directory. It then starts N copies of ``balance-api serve`` with
``WORKERS=1``, ``REUSE_PORT=true`` and the database URL resolved, so each worker binds the same
port and the kernel spreads new connections over them (Linux ``SO_REUSEPORT``, socket(7)).

A worker that dies is restarted (its live gauges dropped first); one that dies within
:data:`START_GRACE` seconds of its start means it cannot run (port taken, bad database URL), so the
supervisor stops all and exits 1. SIGTERM or SIGINT stops every worker with SIGTERM (each drains
its requests for up to ``SHUTDOWN_TIMEOUT`` seconds) before the supervisor returns.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from server.running.config import Settings

log = logging.getLogger(__name__)

START_GRACE = 5.0  # seconds: a worker exiting sooner than this after its start is a failure to start
POLL_INTERVAL = 0.2  # seconds between looks at the workers


@dataclass
class _Worker:
    process: subprocess.Popen
    started: float


def _start_worker(settings: Settings) -> _Worker:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "MIGRATE_ON_START": "false",
        "WORKERS": "1",
        "REUSE_PORT": "true",
        "HOST": settings.host,
        "PORT": str(settings.port),
    }
    process = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env)
    log.info("worker %d started", process.pid)
    return _Worker(process, time.monotonic())


def supervise_workers(settings: Settings) -> int:
    """Run ``settings.workers`` worker processes until SIGTERM/SIGINT; return the exit code
    (0 after a requested stop, 1 when a worker could not start). ``settings.database_url`` must be
    the resolved URL and the migrations already applied."""
    from server.running.metrics import mark_process_dead

    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    workers = [_start_worker(settings) for _ in range(settings.workers)]
    exit_code = 0
    while not stop_requested and not exit_code:
        time.sleep(POLL_INTERVAL)
        for index, worker in enumerate(workers):
            if stop_requested or worker.process.poll() is None:
                continue
            mark_process_dead(worker.process.pid)
            if time.monotonic() - worker.started < START_GRACE:
                log.error("worker %d exited with %s right after starting; stopping all",
                          worker.process.pid, worker.process.returncode)
                exit_code = 1
                break
            log.warning("worker %d exited with %s; starting a new one", worker.process.pid, worker.process.returncode)
            workers[index] = _start_worker(settings)
    _stop_all(workers, grace=settings.shutdown_timeout + 10)
    for worker in workers:
        mark_process_dead(worker.process.pid)
    return exit_code


def _stop_all(workers: list[_Worker], grace: float) -> None:
    """SIGTERM every live worker, wait up to ``grace`` seconds in all, then SIGKILL the rest."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for worker in workers:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop within %s s; killing it", worker.process.pid, grace)
            worker.process.kill()
            worker.process.wait()
