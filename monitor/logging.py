"""structlog configuration for featureguard's *application* entry points.

The library itself only calls ``structlog.get_logger()``; it never configures logging globally.
The CLI (and ``serve``) call :func:`configure_logging` once at start-up: JSON lines by default,
the console renderer when stderr is a TTY (or when asked).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    *, level: str = "info", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog for an application process.

    ``json=None`` picks JSON lines unless ``stream`` is a TTY. Log lines go to ``stream``
    (default stderr) so that stdout stays free for command output.
    """
    out = stream if stream is not None else sys.stderr
    use_json = json if json is not None else not out.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
