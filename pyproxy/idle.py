"""A client's own idle timeout: the wait_timeout its session has, as a server enforces it.

A server closes a connection that sends no command for ``wait_timeout``
seconds (the session's value; a client that logged in with
CLIENT_INTERACTIVE starts with the global ``interactive_timeout`` instead),
whatever the session holds: an open transaction is rolled back, locks and
temporary tables go.  MariaDB 10.11 sends nothing first, it closes the
socket, and the client's next command fails with 2006 or 2013 (MySQL 8.0.24
and later send ER_CLIENT_INTERACTION_TIMEOUT, 4031, first: so does pyproxy
in front of one); connection pools' health checks rely on that.  pyproxy's sessions outlive the backend
connections that serve them, so it enforces the same timeout on the client
connection: after that many seconds with no command from the client and
none running, the client is closed the same way, and the backend
connection it held (pinned, in a transaction) is reset or dropped as for
any client that leaves (pyproxy.release.client_left).

The timeout is the session's carried ``wait_timeout`` when the client set
one (pyproxy.session carries it like any variable, so ``SELECT
@@wait_timeout`` shows it too), else the default a new server session gets
(``Proxy.timeouts``, read from pyproxy's first backend connection and
followed across SET GLOBAL).  COM_RESET_CONNECTION and COM_CHANGE_USER give
a session the plain ``wait_timeout`` default, interactive or not, as
MariaDB does.

One timer per client and nothing rescheduled per command: a command's end
records the time (``last_active``); the timer, when it fires, looks at how
long the client has really been idle and either closes it or sleeps for the
rest.  Only a change of the session's state (a new SessionState value,
rare) makes the end of a command look at the timeout again, so that a
shorter one takes effect without waiting for the longer timer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import attrs

from pyproxy.phases import CLOSED, COMMANDS
from pyproxy.wire.framing import frame

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase
    from pyproxy.proxy import Proxy
    from pyproxy.session import SessionState

# What MySQL 8.0.24+ sends before closing an idle client (MariaDB sends nothing).
ER_CLIENT_INTERACTION_TIMEOUT = (4031, "HY000", "The client was disconnected by the server because of "
                                 "inactivity. See wait_timeout and interactive_timeout for configuring "
                                 "this behavior.")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
# What MariaDB and MySQL start sessions with when pyproxy has not read the
# server's own values yet.
DEFAULT_WAIT_TIMEOUT = 28800


@attrs.frozen(slots=True)
class SessionTimeouts:
    """The idle timeouts a new server session gets: ``wait`` (its session
    ``wait_timeout``, after pyproxy's init_query) and ``interactive`` (the
    global ``interactive_timeout``, which becomes the session's wait_timeout
    for a client that logs in with CLIENT_INTERACTIVE)."""

    wait: int = DEFAULT_WAIT_TIMEOUT
    interactive: int = DEFAULT_WAIT_TIMEOUT


def parse_timeout(value: str | None) -> int | None:
    """A timeout as the server reports it (a whole number of seconds), or None."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def carried_timeout(state: SessionState) -> int | None:
    """The wait_timeout the session carries (set by the client, or kept across a
    SET GLOBAL), if any."""
    for name, value in state.variables:
        if name == "wait_timeout":
            return parse_timeout(value)
    return None


def timeout_of(client: CommandPhase) -> int:
    """The session's wait_timeout: its own, else a new session's default."""
    own = carried_timeout(client.session.state)
    if own is not None:
        return own
    interactive = client.interactive
    if interactive > 0:
        return interactive
    defaults = client.proxy.timeouts
    return defaults.interactive if interactive else defaults.wait


def start(client: CommandPhase) -> None:
    """The client has logged in (again): its timer runs from now."""
    stop(client)
    client.last_active = client.proxy.reactor.seconds()
    client.idle_state = client.session.state
    timeout = client.idle_timeout = timeout_of(client)
    client.idle_timer = client.proxy.reactor.callLater(timeout, expired, client)


def stop(client: CommandPhase) -> None:
    """The connection closes: no timer any more."""
    timer = client.idle_timer
    if timer is not None:
        client.idle_timer = None
        if timer.active():
            timer.cancel()


def command_ended(client: CommandPhase, now: float | None = None) -> None:
    """A command ended (pyproxy.flow.run_queued): the client is idle from now
    (``now``, when the caller has read the clock already).  The per-query
    cost: one identity compare."""
    client.last_active = client.proxy.reactor.seconds() if now is None else now
    session = client.session
    if session is not None and session.state is not client.idle_state and client.idle_timer is not None:
        client.idle_state = session.state
        timeout = timeout_of(client)
        _shorten(client, timeout)


def defaults_changed(proxy: Proxy, first: bool) -> None:
    """What new sessions start with changed: learned from the server (``first``)
    or by a SET GLOBAL.  Clients whose timeout it is get the new one (a session
    that began before a SET GLOBAL carries its old value, pyproxy.set_global).
    Interactive clients that logged in before pyproxy knew interactive_timeout
    get it now, carried if it differs from wait_timeout."""
    timeouts = proxy.timeouts
    for connection in list(proxy.clients.values()):
        client = connection.commands
        session = client.session
        if session is None:
            continue
        if first and client.interactive == -1:
            client.interactive = timeouts.interactive
            if timeouts.interactive != timeouts.wait and carried_timeout(session.state) is None:
                variables = tuple(sorted(session.state.variables + (("wait_timeout", str(timeouts.interactive)),)))
                session.state = attrs.evolve(session.state, variables=variables)
        if client.idle_timer is not None:
            _shorten(client, timeout_of(client))


def _shorten(client: CommandPhase, timeout: int) -> None:
    """The timeout is now ``timeout``: a shorter one than the timer waits for is
    rescheduled; a longer one is found when the timer fires."""
    before = client.idle_timeout
    client.idle_timeout = timeout
    if timeout < before:
        stop(client)
        now = client.proxy.reactor.seconds()
        client.idle_timer = client.proxy.reactor.callLater(
            max(0.0, client.last_active + timeout - now), expired, client)


def expired(client: CommandPhase) -> None:
    """The timer fired: a client idle for its whole timeout is closed as a server
    closes it (nothing sent); else the timer waits for the rest."""
    client.idle_timer = None
    connection = client.connection
    if connection.phase == CLOSED:
        return
    reactor = client.proxy.reactor
    now = reactor.seconds()
    session = client.session
    if session is not None:
        client.idle_state = session.state
    timeout = client.idle_timeout = timeout_of(client) if session is not None else client.idle_timeout
    if (connection.phase != COMMANDS or client.busy or client.infile or client.queue or client.backlog):
        # A command runs (or the login runs again): idle only once it ends.
        client.idle_timer = reactor.callLater(timeout, expired, client)
        return
    idle_for = now - client.last_active
    if idle_for < timeout:
        client.idle_timer = reactor.callLater(timeout - idle_for, expired, client)
        return
    client.log.debug("client_wait_timeout", seconds=timeout,
                     in_transaction=session is not None and session.in_transaction,
                     pinned=client.pinned)
    if says_inactivity(client.proxy.server.version):
        client.transport.write(frame(connection.error_packet(*ER_CLIENT_INTERACTION_TIMEOUT), 0))
    connection.closed_reason = "wait_timeout"
    connection.phase = CLOSED
    client.transport.loseConnection()


def says_inactivity(version: str) -> bool:
    """Whether the server tells a client it closes for inactivity (MySQL 8.0.24 and
    later send ER_CLIENT_INTERACTION_TIMEOUT first); MariaDB just closes."""
    if "mariadb" in version.lower():
        return False
    match = _VERSION.match(version)
    return match is not None and tuple(int(part) for part in match.groups()) >= (8, 0, 24)
