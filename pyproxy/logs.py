"""structlog set-up: JSON lines when not on a terminal, and no secret ever logged.

Twisted's own events (twistd's start-up and shutdown lines, unhandled errors)
are passed to the same processors and renderer by :class:`TwistedObserver`,
so that one stream has one format.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

SECRET_KEYS = frozenset(("password", "passwd", "pwd", "token", "secret", "auth_response",
                         "proof", "scramble", "nonce", "apikey"))
# Any name containing one of these holds a secret too: health_password,
# api_token...
SECRET_WORDS = ("password", "passwd", "secret", "token")
# So does a name with one of these as a word of its own: password_hash,
# api_key, aws_credentials (but not "monkey" or "hashed_rows").
SECRET_NAME_PARTS = frozenset(("key", "keys", "hash", "credential", "credentials", "passphrase",
                               "salt", "cookie", "pwd"))
_WORD_BOUNDARY = re.compile(r"[^a-z0-9]+")
REDACTED = "[redacted]"
# A configured secret at least this long is also looked for inside longer
# values (an error message quoting it); shorter ones only as a whole value,
# where a common word would otherwise drop innocent fields.
EMBEDDED_SECRET_MIN = 8


def names_a_secret(name: str) -> bool:
    """Whether a field or configuration key holds a secret, judged by its name alone so
    that no value of it, of whatever type, is ever shown."""
    lowered = name.lower()
    return (lowered in SECRET_KEYS or any(word in lowered for word in SECRET_WORDS)
            or not SECRET_NAME_PARTS.isdisjoint(_WORD_BOUNDARY.split(lowered)))


class DropSecrets:
    """The last processor before the renderer: drops every field whose name says it
    holds a secret, and every field whose value is (or quotes) a configured secret,
    however it got there (a bound context, an error message, Twisted's events).
    The event text itself cannot be dropped, so it is replaced."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = frozenset(value for value in values if value)
        self.embedded = tuple(value for value in self.values if len(value) >= EMBEDDED_SECRET_MIN)

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        for key in list(event):
            if key == "event":
                if self.holds(event[key]):
                    event[key] = REDACTED
            elif names_a_secret(key) or self.holds(event[key]):
                del event[key]
        return event

    def holds(self, value: object) -> bool:
        """Whether ``value`` (or anything inside it) is a secret."""
        if isinstance(value, str):
            return value in self.values or any(secret in value for secret in self.embedded)
        if isinstance(value, bytes):
            return self.holds(value.decode("utf-8", "replace"))
        if isinstance(value, dict):
            return any(names_a_secret(str(key)) or self.holds(key) or self.holds(item)
                       for key, item in value.items())
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(self.holds(item) for item in value)
        return False


_REASON_END = re.compile(r"""['"`(:;\d]""")


def reason_kind(reason: str) -> str:
    """A reason up to its first quote, parenthesis, colon, semicolon or digit
    ("Access denied for user 'x'@'h' ..." counts as "Access denied for user",
    "reset failed: <error>" as "reset failed"), so that user names, hosts,
    numbers and error texts never make new counters."""
    return _REASON_END.split(reason, maxsplit=1)[0].strip() or "other"


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


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
              secrets: Iterable[str] = ()) -> None:
    """Configures structlog once for the process.

    Writes to the real stdout (``sys.__stdout__``), not to whatever twistd has
    put in ``sys.stdout``, so each event stays one line of JSON.

    Args:
        secrets: values never to be logged (the configured passwords).
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
            DropSecrets(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=LineWriterFactory(out),
        cache_logger_on_first_use=True,
    )


class LineWriter:
    """structlog's output: one line per event, written and flushed under a lock.

    The lock is re-entrant, unlike structlog's own writers': a signal handler runs
    between two bytecodes of the main thread, possibly while it holds the lock
    inside ``msg``, and a handler that logs (Twisted's "Received SIGTERM" does,
    in code pyproxy does not own) must write its line, not wait forever for its
    own thread.  Each line is one ``write`` call, so a line written from a
    handler lands whole, before or after the interrupted one.
    """

    def __init__(self, file: TextIO, lock: threading.RLock) -> None:
        self._write = file.write
        self._flush = file.flush
        self._lock = lock

    def msg(self, message: str) -> None:
        with self._lock:
            self._write(message + "\n")
            self._flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class LineWriterFactory:
    """Gives every logger of the process one :class:`LineWriter` on ``file``, so
    they share one lock (threads, such as boto3's, log too)."""

    def __init__(self, file: TextIO) -> None:
        self._writer = LineWriter(file, threading.RLock())

    def __call__(self, *args: Any) -> LineWriter:
        return self._writer


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("pyproxy").bind(**context)


# Twisted's log levels by name, as structlog's methods.
_TWISTED_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "error": "error",
                   "critical": "critical"}


@implementer(ILogObserver)
class TwistedObserver:
    """Gives Twisted's events (twistd's "starting up" and "reactor class" lines,
    "Received SIGTERM", unhandled errors with their traceback) to structlog, so
    they are filtered, stripped of secrets and rendered like pyproxy's own, with
    ``logger="twisted"``.  twistd takes it as its log observer (see pyproxy.tap)."""

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            level = _TWISTED_LEVELS.get(getattr(event.get("log_level"), "name", ""), "info")
            fields: dict[str, Any] = {"logger": "twisted"}
            system = event.get("log_system")
            if system and system != "-":
                fields["system"] = system
            failure = event.get("log_failure")
            if failure is not None:
                fields["exception"] = failure.getTraceback()
            text = formatEvent(event) or (failure.getErrorMessage() if failure is not None else "")
            getattr(structlog.get_logger("twisted"), level)(text, **fields)
        except Exception as exc:  # noqa: BLE001 - an observer that raises is dropped by Twisted
            (sys.__stderr__ or sys.stderr).write(f"pyproxy: cannot log a Twisted event: {exc!r}\n")


def twisted_observer() -> TwistedObserver:
    """The log observer factory twistd is given (``--logger``)."""
    return TwistedObserver()
