"""LOG_FORMAT: JSON lines for machines, coloured console lines for a person at a terminal, the
same fields either way; ``auto`` (the default) decides by whether stderr is a terminal."""

import json
import sys

from tests.service_process import PROJECT_ROOT, balance_api, service_env
from tests.terminal import run_on_a_terminal

ANSI_ESCAPE = "\x1b["


def migrate_with_stderr_on_a_terminal(url: str, **settings: str) -> str:
    """Run ``balance-api migrate`` (it logs each migration it applies) with stderr on a
    pseudo-terminal; return what it wrote there."""
    returncode, written = run_on_a_terminal([sys.executable, "-m", "server", "migrate"], "stderr", cwd=PROJECT_ROOT,
                                            env=service_env(database_url=url, log_level="INFO", **settings))
    assert returncode == 0, written
    return written


def migration_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "migration 0001" in line]


def test_auto_writes_json_lines_when_stderr_is_not_a_terminal(create_database):
    result = balance_api("migrate", env=service_env(database_url=create_database(), log_level="INFO"))
    (line,) = migration_lines(result.stderr)
    record = json.loads(line)
    assert {"timestamp", "level", "logger", "event"} <= set(record)
    assert record["event"] == "applied migration 0001.users-and-ledger" and record["level"] == "info"


def test_auto_writes_coloured_console_lines_when_stderr_is_a_terminal(create_database):
    (line,) = migration_lines(migrate_with_stderr_on_a_terminal(create_database()))
    assert ANSI_ESCAPE in line and not line.lstrip().startswith("{")
    for field in ("applied migration 0001.users-and-ledger", "info", "server.running.migrations"):
        assert field in line  # event, level and logger, as in the JSON line


def test_json_can_be_forced_on_a_terminal(create_database):
    (line,) = migration_lines(migrate_with_stderr_on_a_terminal(create_database(), log_format="json"))
    assert json.loads(line)["event"] == "applied migration 0001.users-and-ledger"


def test_console_can_be_forced_into_a_pipe(create_database):
    result = balance_api("migrate", env=service_env(database_url=create_database(), log_level="INFO",
                                                   log_format="console"))
    (line,) = migration_lines(result.stderr)
    assert not line.lstrip().startswith("{") and "applied migration 0001.users-and-ledger" in line


def test_an_unknown_log_format_is_a_configuration_error():
    result = balance_api("check", env=service_env(log_format="xml"))
    assert result.returncode == 2 and "LOG_FORMAT" in result.stderr
