"""Run the real ``balance-api`` service as a separate process, as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.http_calls import call

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Settings a developer's shell may hold that must not leak into a test's service.
_INHERITED_SETTINGS_DROPPED = frozenset({
    "DATABASE_URL", "PORT", "HOST", "DATA_DIR", "WORKERS", "REUSE_PORT", "API_TOKEN", "API_TOKENS_FILE",
    "PROMETHEUS_MULTIPROC_DIR", "LOG_FORMAT",
})


def service_env(**settings: str) -> dict[str, str]:
    """The current environment minus any service settings, plus ``settings`` (upper-cased names)."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_SETTINGS_DROPPED}
    env.update({name.upper(): str(value) for name, value in settings.items()})
    env.setdefault("LOG_LEVEL", "WARNING")
    return env


def balance_api(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``balance-api ARGS`` to completion and return it (stdout and stderr captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args], cwd=PROJECT_ROOT, env=env or service_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def health_status(base_url: str) -> int | None:
    """The status ``/api/health`` answers (200 or 503), or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{base_url}/api/health", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, urllib.error.URLError):
        return None


def wait_until_healthy(base_url: str, process: subprocess.Popen, log_path: Path, timeout: float = 60,
                       ready_statuses: tuple[int, ...] = (200,)) -> None:
    """Poll ``/api/health`` until it answers one of ``ready_statuses``; raise with the service log
    if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{log_path.read_text()}")
        if health_status(base_url) in ready_statuses:
            return
        time.sleep(0.1)
    raise RuntimeError(f"service not healthy after {timeout} s:\n{log_path.read_text()}")


@contextlib.contextmanager
def running_server(args: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                   ready_statuses: tuple[int, ...] = (200,)) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``python ARGS`` (a server listening on ``port``), wait until ``/api/health`` answers
    one of ``ready_statuses``, and yield ``(base_url, process)``; stop it with :func:`stop_process`
    when the block exits."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process, log_path, ready_statuses=ready_statuses)
        yield base_url, process
    finally:
        stop_process(process)


def running_service(log_path: Path, ready_statuses: tuple[int, ...] = (200,), **settings: str):
    """Start ``balance-api serve`` with ``settings`` on a free port; yield ``(base_url, process)``
    once ``/api/health`` answers one of ``ready_statuses``.

    Stops it with SIGTERM (then SIGKILL after 20 s) when the block exits.
    """
    settings.setdefault("port", str(free_port()))
    return running_server(["-m", "server", "serve"], int(settings["port"]), log_path,
                          service_env(host="127.0.0.1", **settings), ready_statuses)


def stop_process(process: subprocess.Popen, grace: float = 20) -> int:
    """SIGTERM ``process``, wait up to ``grace`` seconds, then SIGKILL; return its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def health(base_url: str) -> tuple[int, dict]:
    """``GET /api/health``: its status and JSON body (a problem document when 503)."""
    status, _, document = call(f"{base_url}/api/health")
    return status, document


def poll_until(condition, seconds: float) -> bool:
    """Call ``condition`` every 0.2 s until it is true (True) or ``seconds`` have passed (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def assert_ledger_consistent(database_url: str) -> None:
    """``balance-api check`` on ``database_url`` (a direct URL, not through PgBouncer) passes."""
    verdict = balance_api("check", env=service_env(database_url=database_url))
    assert verdict.returncode == 0, verdict.stdout
