"""A throwaway cluster of the machine's own PostgreSQL (e.g. Debian's ``postgresql-15``), beside the
embedded one, for tests that must hold on every major version users run (15-18).

The binaries are the newest ``/usr/lib/postgresql/<major>/bin`` (Debian's layout) or those of
``pg_config --bindir``. The cluster lives in a temporary directory, listens on a Unix socket only,
and is stopped and deleted at the end. PostgreSQL refuses to run as root, so as root it runs as
the ``postgres`` system user that the distribution's package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from server.running.embedded_postgres import replace_database


def system_postgres_bin() -> Path | None:
    """The directory of the machine's own PostgreSQL server binaries, or None when there are none."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    if pg_config := shutil.which("pg_config"):
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    return None


def _run_as(user: str | None, *command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120, user=user)


@contextlib.contextmanager
def system_postgres() -> Iterator[tuple[str, str]]:
    """Start a new cluster of the machine's PostgreSQL; yield ``(admin URL, version string)``.

    Raises ``LookupError`` (with what to install) when the machine has no PostgreSQL server, or
    runs as root without a ``postgres`` user to run it as.
    """
    bindir = system_postgres_bin()
    if bindir is None:
        raise LookupError("no PostgreSQL server on this machine (e.g. apt install postgresql-15)")
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise LookupError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
        user = "postgres"
    work = Path(tempfile.mkdtemp(prefix="balance-system-pg-"))
    work.chmod(0o755)
    if user:
        shutil.chown(work, user)
    data = work / "data"
    try:
        _run_as(user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        _run_as(user, str(bindir / "pg_ctl"), "-w", "-D", str(data), "-l", str(work / "log"),
                "-o", f"-h '' -k {work} -c fsync=off -c max_connections=200", "start")
        version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
        try:
            yield f"postgresql://postgres@/postgres?host={work}", version
        finally:
            _run_as(user, str(bindir / "pg_ctl"), "-w", "-D", str(data), "-m", "fast", "stop")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def create_database_on(admin_url: str, name: str | None = None) -> str:
    """Create an empty database (``name``, or a new unique one) on the cluster of ``admin_url``
    (an admin URL that may ``CREATE DATABASE``); return its URL."""
    name = name or f"balance_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return replace_database(admin_url, name)
