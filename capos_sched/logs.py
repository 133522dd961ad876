"""structlog set-up shared by every command: logs go to stderr, never stdout.

Console rendering on a terminal, one JSON object per line otherwise, so that
``--json`` reports on stdout stay machine-readable.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "warning") -> None:
    """Configure structlog once for the process (idempotent)."""
    renderer: structlog.typing.Processor
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
