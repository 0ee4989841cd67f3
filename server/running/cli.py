"""The ``balance-api`` command: serve, migrate, check, keys, burst, bench, events and torture.

Exit codes: 0 success, 1 a failed check or run, 2 invalid configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

from server.running.config import ConfigError, Settings, load_settings
from server.running.log_config import configure_logging

log = logging.getLogger("balance_api")


def serve(settings: Settings) -> int:
    """Run the HTTP service until SIGINT/SIGTERM, with migrations applied first (``MIGRATE_ON_START``).

    With ``WORKERS`` > 1 this process supervises that many worker processes
    (:mod:`server.running.workers`); otherwise it serves itself.
    """
    from server.running.embedded_postgres import database_url
    from server.running.metrics_directory import multiprocess_directory
    from server.running.migrations import apply_migrations

    with multiprocess_directory(settings.workers), database_url(settings) as url:
        if settings.migrate_on_start:
            apply_migrations(url, settings.migrations_dir, settings.default_asset_code)
        settings = settings.model_copy(update={"database_url": url, "migrate_on_start": False})
        if settings.workers > 1:
            from server.running.workers import supervise_workers

            return supervise_workers(settings)
        return _serve_in_this_process(settings)


async def _serve(app, settings: Settings) -> None:
    """Serve ``app`` on ``settings.host``:``settings.port`` until cancelled (aiohttp docs,
    "Application runners"); the runner's cleanup stops listening, lets in-flight requests finish
    for up to ``SHUTDOWN_TIMEOUT`` seconds and runs the app's cleanup contexts."""
    from aiohttp import web

    from server.http.http_edges import ProblemAppRunner

    runner = ProblemAppRunner(app, handle_signals=True, access_log=None,  # observability logs each request
                              shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=settings.listen_backlog,
                           reuse_port=settings.reuse_port or None)
        await site.start()
        await asyncio.Event().wait()  # until SIGTERM/SIGINT raise GracefulExit in the loop
    finally:
        await runner.cleanup()


def _serve_in_this_process(settings: Settings) -> int:
    """One worker: aiohttp on uvloop until SIGTERM/SIGINT. aiohttp then stops listening, lets
    in-flight requests finish for up to ``SHUTDOWN_TIMEOUT`` seconds, and runs the cleanup
    contexts (the pool is closed) before this returns (aiohttp docs, "Graceful shutdown")."""
    import uvloop
    from aiohttp import web

    from server.http.app import create_app
    from server.running.process_limits import raise_open_file_limit, tune_garbage_collection

    open_files = raise_open_file_limit()
    app = create_app(settings)
    tune_garbage_collection(settings.gc_threshold)
    log.info(
        "listening on http://%s:%d (pid %d, backlog %d, open files %d, pool %d..%d%s)",
        settings.host, settings.port, os.getpid(), settings.listen_backlog, open_files,
        settings.db_pool_min_size, settings.db_pool_max_size, ", shared port" if settings.reuse_port else "",
    )
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    main_task = loop.create_task(_serve(app, settings))
    try:  # as aiohttp's web.run_app, with ProblemAppRunner (server.http.http_edges) as the runner
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):  # SIGTERM / SIGINT (the runner's signal handlers)
        pass
    finally:
        if not main_task.done():
            main_task.cancel()  # its finally runs the runner's cleanup: drain, then cleanup contexts
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main_task)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    log.info("stopped (pid %d)", os.getpid())
    return 0


def migrate(settings: Settings, rollback: int = 0, force_definitions: bool = False) -> int:
    """Apply pending migrations and then the ledger definitions (server/ledger/sql/, only when
    changed unless ``force_definitions``) to the configured (or embedded) database and exit; with
    ``rollback`` > 0, roll back that many applied migrations instead, newest first."""
    from server.running.embedded_postgres import database_url
    from server.running.migrations import apply_migrations

    with database_url(settings) as url:
        outcome = apply_migrations(url, settings.migrations_dir, settings.default_asset_code, rollback,
                                   force_definitions=force_definitions)
    done = outcome.migrations
    print(f"{'rolled back' if rollback else 'applied'} {len(done)} migration(s)" + (": " + ", ".join(done) if done else ""))
    if not rollback:
        print(f"ledger definitions {'applied' if outcome.definitions_applied else 'unchanged'}")
    return 0


def check(settings: Settings) -> int:
    """Verify the ledger invariants; print each; exit 1 naming what is wrong."""
    from server.ledger.check import check_ledger
    from server.running.embedded_postgres import database_url

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
    serve_parser.add_argument("--workers", type=int, help="server processes sharing the port (default: $WORKERS or 1)")
    migrate_parser = commands.add_parser("migrate", help="apply pending database migrations and exit")
    migrate_parser.add_argument("--rollback", nargs="?", type=int, const=1, default=0, metavar="N",
                                help="roll back the newest N applied migrations instead (default 1)")
    migrate_parser.add_argument("--definitions", action="store_true",
                                help="apply the ledger's functions and views (server/ledger/sql/) even when unchanged")
    commands.add_parser("check", help="verify the ledger invariants; exit 1 naming what is wrong")
    from server.running.key_commands import add_arguments as key_arguments

    key_arguments(commands.add_parser("keys", help="make, list and revoke scoped API keys"))
    commands.add_parser("burst", help="fire N simultaneous balance changes and check the outcome", add_help=False)
    commands.add_parser("bench", help="measure the service, batching off and on, against a no-op ceiling",
                        add_help=False)
    commands.add_parser("events", help="print the change feed of a running service as JSON lines", add_help=False)
    commands.add_parser("torture", help="randomized operations under client faults, then prove nothing was lost "
                                        "or doubled", add_help=False)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["burst"]:
        from loadtest.burst import main as burst_main

        return burst_main(argv[1:])
    if argv[:1] == ["torture"]:
        from loadtest.torture import main as torture_main

        return torture_main(argv[1:])
    if argv[:1] == ["events"]:
        from server.running.feed_client import main as events_main

        return events_main(argv[1:])
    if argv[:1] == ["bench"]:
        from loadtest.bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    overrides = {key: value for key in ("host", "port", "workers") if (value := getattr(args, key, None)) is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigError as error:
        print(f"balance-api: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "migrate":
        if args.rollback < 0:
            parser.error("--rollback takes a number of migrations >= 1")
        if args.rollback and args.definitions:
            parser.error("--definitions applies after migrating, not with --rollback")
        return migrate(settings, args.rollback, args.definitions)
    if args.command == "keys":
        from server.running.key_commands import keys

        return keys(settings, args)
    return {"serve": serve, "check": check}[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
