"""``debug_statements_for``: statement digests logged for a while, then off by themselves.

Like RDS Proxy's DebugLogging, and as safe to leave on by mistake: turned on
for N seconds (``[log] debug_statements_for``, or ``SET
debug_statements_for = N`` on the admin console), it logs one
``statement`` event per COM_QUERY and COM_STMT_PREPARE with the client's id
and user, the backend connection it runs on and the statement's digest
(pyproxy.digest: never a value), and switches itself off when the time is
up.  While it is off the per-query path pays one attribute check
(``Proxy.debug_statements is not None``).
"""

from __future__ import annotations

from typing import Any

from pyproxy.digest import digest
from pyproxy.logs import get_logger
from pyproxy.wire.constants import COMMAND

_LOGGED = {COMMAND.COM_QUERY: "COM_QUERY", COMMAND.COM_STMT_PREPARE: "COM_STMT_PREPARE"}


class StatementLog:
    """The switch, its deadline, and the logging while it is on.

    Args:
        proxy: the pyproxy.proxy.Proxy whose ``debug_statements`` it sets to
            itself while on and to None while off.
        clock: when it switches off (the reactor, or a Clock in tests).
    """

    def __init__(self, proxy: Any, clock: Any) -> None:
        self.proxy = proxy
        self.clock = clock
        self.until: float | None = None
        self._timer: Any = None
        self.log = get_logger(component="statements")

    @property
    def remaining(self) -> float:
        """Seconds left before it switches off; 0 when off."""
        if self.until is None:
            return 0.0
        return max(0.0, self.until - self.clock.seconds())

    def turn_on_for(self, seconds: float) -> None:
        """Logs statements for ``seconds`` from now (again, if on already); 0 turns it off."""
        self._cancel()
        if seconds <= 0:
            self.turn_off("turned off")
            return
        self.until = self.clock.seconds() + seconds
        self._timer = self.clock.callLater(seconds, self.turn_off, "time is up")
        self.proxy.debug_statements = self
        self.log.info("debug_statements_on", seconds=seconds)

    def turn_off(self, reason: str) -> None:
        self._timer = None if reason == "time is up" else self._timer
        self._cancel()
        was_on = self.until is not None
        self.until = None
        self.proxy.debug_statements = None
        if was_on:
            self.log.info("debug_statements_off", reason=reason)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def record(self, client: Any, payload: bytes, backend: Any) -> None:
        """One command about to run on ``backend``: logged if it is a statement."""
        command = _LOGGED.get(payload[0]) if payload else None
        if command is None:
            return
        self.log.info("statement", client_id=client.connection.id, user=client.user,
                      backend_id=backend.id if backend is not None else None, command=command,
                      digest=digest(payload[1:]))
