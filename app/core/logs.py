"""structlog configuration: key=value lines locally, JSON when asked (grep-able either way)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Set up structlog once per process."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"])
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # `log.exception` sets exc_info; without this the traceback is dropped and an
            # error line says nothing about where it came from.
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # One write per line (message and newline together, flushed): `dev`'s processes
        # share one stderr, and print()'s two writes let their lines interleave into
        # lines that neither grep nor a JSON reader can parse. Flushed at once, so no
        # line is lost when a process is stopped by a signal; stdout stays for output.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger with `bound` fields on every line."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**bound)
    return logger
