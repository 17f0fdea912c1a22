"""structlog set-up: JSON lines when not on a terminal, and no secret ever logged."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset(("password", "passwd", "pwd", "token", "secret", "auth_response",
                         "proof", "scramble", "nonce"))
REDACTED = "[redacted]"


def drop_secrets(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replaces any field whose name says it holds a secret, however it got there."""
    for key in list(event):
        if key.lower() in SECRET_KEYS:
            event[key] = REDACTED
    return event


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configures structlog once for the process.

    Writes to the real stdout (``sys.__stdout__``), not to whatever twistd has
    put in ``sys.stdout``, so each event stays one line of JSON.
    """
    out = stream or sys.__stdout__ or sys.stdout
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("pyproxy").bind(**context)
