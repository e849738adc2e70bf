"""structlog setup: JSON lines when stdout is not a TTY, readable console lines when it is."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Route every structlog logger to stdout in the chosen format."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout)
        if not as_json
        else _bytes_factory(),
        cache_logger_on_first_use=True,
    )


def _dumps(obj: object, **_: object) -> bytes:
    return orjson.dumps(obj, default=str)


def _bytes_factory() -> structlog.BytesLoggerFactory:
    return structlog.BytesLoggerFactory(sys.stdout.buffer)
