"""The error a backend connection reports, as the client will see it: a MySQL ERR packet.

Raised by the connection, the pool and the login alike, and turned into the
client's ERR packet in one place (CommandPhase.command_failed).
"""

from __future__ import annotations

from pyproxy.wire import constants as c
from pyproxy.wire.responses import ERR


class BackendError(Exception):
    """An error to report to the client as a MySQL ERR packet."""

    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(f"({code}) {message}")
        self.code = code
        self.sqlstate = sqlstate
        self.message = message

    @classmethod
    def from_err(cls, err: ERR) -> "BackendError":
        return cls(err.code, err.sqlstate, err.message)


def lost_connection(detail: str = "") -> BackendError:
    code, state = c.CR_SERVER_LOST
    return BackendError(code, state, "Lost connection to MySQL server during query"
                        + (f" ({detail})" if detail else ""))
