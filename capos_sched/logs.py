"""structlog set-up shared by every command: logs go to stderr (or ``--log-file``),
never to stdout, so that ``--json`` reports on stdout stay machine-readable.

Two renderings: ``console`` (aligned, coloured on a terminal) and ``json`` (one
JSON object per line: ``{"event", "level", "timestamp", ...}``). ``auto``, the
default, picks console on a terminal and JSON everywhere else (a pipe, a file,
a container's log).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")


def configure_logging(
    level: str = "warning", log_format: str = "auto", file: TextIO | None = None
) -> None:
    """Configure structlog once for the process (idempotent).

    ``file`` is where the lines go (default: stderr); ``log_format`` is one of
    LOG_FORMATS.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    out = file if file is not None else sys.stderr
    console = log_format == "console" or (log_format == "auto" and out.isatty())
    renderer: structlog.typing.Processor
    tail: list[structlog.typing.Processor]
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        tail = [renderer]
    else:
        renderer = structlog.processors.JSONRenderer()
        # exc_info becomes an "exception" field with the text (not `"exc_info": true`)
        tail = [structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
