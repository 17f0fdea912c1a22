"""Stopping statements: KILL as a client writes it, and the query timeout.

``KILL [QUERY | CONNECTION] <id>`` names one of pyproxy's own connection ids
(the one in its greeting), which the server does not know: it is translated
here and never passed on.  Only the same user's connections can be killed;
other forms of KILL are refused.  KILL QUERY, and a statement that runs
past ``[proxy] query_timeout``, become ``KILL QUERY <thread>`` on the backend
thread that runs it, sent over a connection of pyproxy's own (the pool may
be full of exactly the statements to stop), and only while that thread
still runs the same statement for the same client.  KILL (CONNECTION)
closes the target client as well, after the reply it is waiting for.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy.backend import BackendConnection, BackendError, connect
from pyproxy.flow import run_queued
from pyproxy.phases import CLOSED, COMMANDS
from pyproxy.tls import close_client
from pyproxy.wire.commands import make_query
from pyproxy.wire.framing import Packet

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase
    from pyproxy.frontend import FrontendProtocol

_KILL = re.compile(rb"(?is)\s*kill\s+(?:(query|connection)\s+)?(\d+)\s*;?\s*$")
_KILL_ANY = re.compile(rb"(?is)\s*(?:/\*.*?\*/\s*)*kill\b")


def kill_statement(client: CommandPhase) -> bool:
    """Runs the client's statement if it is a KILL, answering it; returns False
    for any statement that is not one."""
    sql = client.sql or b""
    if _KILL_ANY.match(sql) is None:
        return False
    match = _KILL.match(sql)
    if match is None:
        client.reply_error((1235, "42000"), "pyproxy supports only KILL [QUERY | CONNECTION] <id>")
        return True
    what, number = match.group(1), int(match.group(2))
    connection = client.proxy.clients.get(number)
    if connection is None:
        client.reply_error((1094, "HY000"), f"Unknown thread id: {number}")
        return True
    if connection.user != client.user:
        client.reply_error((1095, "HY000"), f"You are not owner of thread {number}")
        return True
    target = connection.commands
    running = running_statement(target)
    if what is None or what.lower() != b"query":
        close_by_kill(connection)
    if running is None:
        client.reply(client.ok_payload())
        return True
    client.busy = True
    d = kill_query(target, running)

    def done(result: Any) -> None:
        if client.connection.phase != COMMANDS:
            return
        if isinstance(result, Failure) and isinstance(result.value, BackendError):
            client.reply_error((result.value.code, result.value.sqlstate), result.value.message)
        else:
            client.reply(client.ok_payload())
        client.busy = False
        run_queued(client)

    d.addBoth(done)
    return True


def kill_query(target: CommandPhase, running: tuple[int, Packet]) -> defer.Deferred[Any]:
    """Stops ``target``'s running statement with KILL QUERY on its backend thread,
    over a connection of pyproxy's own, if the same statement still runs."""
    running_on = target.backend
    login = running_on.target if running_on is not None else target.proxy.target(target.user)
    d = connect(target.proxy.reactor, attrs.evolve(login, database=None), 0)

    def kill(conn: BackendConnection) -> Any:
        if running_statement(target) != running:
            conn.close("KILL target finished")
            return None
        sent = conn.execute(make_query(f"KILL QUERY {running[0]}"))
        sent.addBoth(lambda result: (conn.close("KILL sent"), result)[1])
        return sent

    return d.addCallback(kill)


def running_statement(client: CommandPhase) -> tuple[int, Packet] | None:
    """(backend thread id, command) of the statement a client is running, if any."""
    conn = client.backend
    if not client.busy or conn is None or conn.handshake is None or client.command is None:
        return None
    return conn.handshake.connection_id, client.command


def close_by_kill(connection: FrontendProtocol) -> None:
    """Another session of the same user killed this one."""
    connection.closed_reason = "killed"
    if connection.phase == COMMANDS and not connection.commands.busy:
        connection.phase = CLOSED
        close_client(connection.transport)
    else:
        # Mid-command: the client gets its reply (or the 2013 from the
        # killed statement) first, then the connection closes.
        connection.commands.kill_pending = True


def query_timed_out(client: CommandPhase, packet: Packet) -> None:
    """``[proxy] query_timeout`` passed since ``packet`` was sent: if it still runs,
    it is stopped like a KILL QUERY."""
    client.query_timer = None
    running = running_statement(client)
    if running is None or running[1] is not packet:
        return
    client.log.warning("query_timeout", seconds=client.proxy.config.proxy.query_timeout,
                       backend_thread=running[0])
    kill_query(client, running).addErrback(
        lambda failure: client.log.warning("query_timeout_kill_failed", error=failure.getErrorMessage()))


def cancel_query_timer(client: CommandPhase) -> None:
    """The statement ended (or will never run): its timeout goes."""
    timer = client.query_timer
    if timer is not None:
        if timer.active():
            timer.cancel()
        client.query_timer = None
