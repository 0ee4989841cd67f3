"""PgBouncer in front of the test PostgreSQL, set up as docs/scaling.md prescribes for many service
instances: ``pool_mode = transaction``; the service with ``DB_STATEMENT_CACHE_SIZE=0`` and
``DB_STATEMENT_TIMEOUT=0``; migrations run against PostgreSQL directly (PgBouncer docs, "Features":
session-level advisory locks and named prepared statements do not survive transaction pooling).

PgBouncer is Debian's package (``apt-get install pgbouncer``; ``.ci/run`` installs it). It refuses to
run as root, so a root test run starts it as the user owning PostgreSQL's socket directory (the
embedded server's own unprivileged user), or as ``nobody`` when PostgreSQL is reached over TCP.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import psycopg

from tests.service_process import free_port, stop_process

INSTALL_HINT = "PgBouncer is not installed: apt-get install pgbouncer (Debian's package; .ci/run installs it)"


def pgbouncer_binary() -> str | None:
    """The ``pgbouncer`` executable (Debian puts it in /usr/sbin), or None."""
    return shutil.which("pgbouncer") or next((path for path in ("/usr/sbin/pgbouncer",) if os.path.exists(path)), None)


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: ``url(database)`` is the URL a client uses for that database through it."""

    port: int
    user: str
    log_path: Path

    def url(self, database: str) -> str:
        return f"postgresql://{quote(self.user)}@127.0.0.1:{self.port}/{database}"

    def transactions(self, database: str) -> int:
        """How many transactions PgBouncer has passed to ``database`` (``SHOW STATS`` on its admin
        console, which speaks only the simple query protocol)."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True) as conn:
            result = conn.pgconn.exec_(b"SHOW STATS")
            names = [result.fname(i).decode() for i in range(result.nfields)]
            for row in range(result.ntuples):
                values = {name: result.get_value(row, i) for i, name in enumerate(names)}
                if values["database"] == database.encode():
                    return int(values["total_xact_count"])
        return 0


def _server_of(postgres_url: str) -> tuple[str, int, str, str]:
    """``(host or socket directory, port, user, password)`` of a libpq URL."""
    parts = urlsplit(postgres_url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "localhost"])[0]
    return host, parts.port or 5432, parts.username or "postgres", parts.password or ""


def _unprivileged_user(host: str) -> pwd.struct_passwd:
    """Who runs PgBouncer under root: the owner of the socket directory when that is not root,
    else ``nobody``."""
    if host.startswith("/"):
        owner = pwd.getpwuid(os.stat(host).st_uid)
        if owner.pw_uid != 0:
            return owner
    return pwd.getpwnam("nobody")


@contextlib.contextmanager
def running_pgbouncer(postgres_url: str, workdir: Path, pool_size: int = 20,
                      max_client_connections: int = 2000) -> Iterator[PgBouncer]:
    """Start PgBouncer in transaction pooling mode in front of the server of ``postgres_url`` (every
    database on it), listening on 127.0.0.1, with its files in ``workdir``; yield it once it answers;
    stop it when the block exits. ``pool_size``: server connections per database and user."""
    binary = pgbouncer_binary()
    assert binary, INSTALL_HINT
    host, port, user, password = _server_of(postgres_url)
    listen_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    log_path = workdir / "pgbouncer.log"
    (workdir / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_connections}
ignore_startup_parameters = extra_float_digits
logfile = {log_path}
admin_users = {user}
stats_period = 1
""")
    run_as = {}
    if os.geteuid() == 0:
        account = _unprivileged_user(host)
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    process = subprocess.Popen([binary, str(workdir / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, **run_as)
    bouncer = PgBouncer(listen_port, user, log_path)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{_log(log_path)}")
            try:
                with psycopg.connect(bouncer.url("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer not answering after 15 s:\n{_log(log_path)}") from None
                time.sleep(0.2)
        yield bouncer
    finally:
        stop_process(process)


def _log(path: Path) -> str:
    return path.read_text() if path.exists() else "(no log)"
