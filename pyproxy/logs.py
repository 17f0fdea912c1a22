"""structlog set-up: JSON lines when not on a terminal, and no secret ever logged."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset(("password", "passwd", "pwd", "token", "secret", "auth_response",
                         "proof", "scramble", "nonce"))
# Any name containing one of these holds a secret too: password_hash,
# health_password, api_token...
SECRET_WORDS = ("password", "passwd", "secret", "token")
REDACTED = "[redacted]"


def names_a_secret(name: str) -> bool:
    """Whether a field or configuration key holds a secret, judged by its name alone so
    that no value of it, of whatever type, is ever shown."""
    lowered = name.lower()
    return lowered in SECRET_KEYS or any(word in lowered for word in SECRET_WORDS)


def drop_secrets(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replaces any field whose name says it holds a secret, however it got there."""
    for key in list(event):
        if names_a_secret(key):
            event[key] = REDACTED
    return event


def format_address(address: Any) -> str:
    """``127.0.0.1:38292``, ``[::1]:38292`` or a UNIX socket's path, for log lines,
    rather than the repr of Twisted's address objects."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if hasattr(address, "name"):  # a UNIX socket; a client's end usually has no name
        name = address.name
        name = name.decode(errors="replace") if isinstance(name, bytes) else name
        return f"unix:{name}" if name else "unix"
    return str(address)


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
