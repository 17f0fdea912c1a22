"""Stopping statements: KILL as a client writes it, and the query timeout.

``KILL [QUERY | CONNECTION] <id>`` names one of pyproxy's own connection ids
(the one in its greeting, which CONNECTION_ID() returns too), which the
server does not know: it is translated here and never passed on.  Only the
same user's connections can be killed, a connection still logging in
included; other forms of KILL are refused, and so is a prepared KILL
(pyproxy.prepared).  KILL QUERY, and a statement that runs past ``[proxy]
query_timeout``, become ``KILL QUERY <thread>`` on the backend thread that
runs it, sent over a connection of pyproxy's own (the pool may be full of
exactly the statements to stop), and only while that thread still runs the
same statement for the same client.  KILL (CONNECTION) closes the target
client as well, after the reply it is waiting for.  A client's KILL of its
own id answers as a server does (1927 and closed; 1317 for KILL QUERY).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy.backend import BackendConnection, BackendError, Target, connect
from pyproxy.flow import run_queued
from pyproxy.phases import AUTH_SWITCH, CLOSED, COMMANDS, HANDSHAKE
from pyproxy.tls import close_client
from pyproxy.wire.commands import make_query
from pyproxy.wire.framing import Packet

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase
    from pyproxy.proxy import Proxy
    from pyproxy.frontend import FrontendProtocol

ER_QUERY_INTERRUPTED = (1317, "70100")
ER_CONNECTION_KILLED = (1927, "70100")
# The id, or CONNECTION_ID(): the client's own (pyproxy.thread_ids).
KILL_FORM = re.compile(rb"(?is)\s*kill\s+(?:(query|connection)\s+)?(\d+|connection_id\s*\(\s*\))\s*;?\s*$")
_KILL_ANY = re.compile(rb"(?is)\s*(?:/\*.*?\*/\s*)*kill\b")


def is_kill(sql: bytes) -> bool:
    """Whether ``sql`` is a KILL statement (pyproxy's ids: never sent as written)."""
    return _KILL_ANY.match(sql) is not None


def kill_statement(client: CommandPhase) -> bool:
    """Runs the client's statement if it is a KILL, answering it; returns False
    for any statement that is not one."""
    sql = client.sql or b""
    if _KILL_ANY.match(sql) is None:
        return False
    match = KILL_FORM.match(sql)
    if match is None:
        client.reply_error((1235, "42000"), "pyproxy supports only KILL [QUERY | CONNECTION] <id>")
        return True
    what, target_id = match.group(1), match.group(2)
    number = int(target_id) if target_id.isdigit() else client.connection.id
    query = what is not None and what.lower() == b"query"
    if client.proxy.clients.get(number) is client.connection:
        kill_self(client, query)
        return True
    proxy = client.proxy
    index, count = proxy.worker
    if number not in proxy.clients and count > 1 and (number - 1) % count != index \
            and proxy.remote_kill is not None:
        # Another worker's client ([proxy] workers): its supervisor passes the KILL on.
        answer = proxy.remote_kill(number, client.user, query)
    else:
        answer = kill_client(proxy, number, client.user, query)
    outcome: list[Any] = []
    answer.addCallback(outcome.append)
    if outcome:
        _answer(client, outcome[0], False)
        return True
    client.busy = True
    answer.addCallback(lambda _: _answer(client, outcome[0], True))
    return True


def _answer(client: CommandPhase, error: tuple[tuple[int, str], str] | None, waited: bool) -> None:
    if client.connection.phase != COMMANDS:
        return
    if error is None:
        client.reply(client.ok_payload())
    else:
        client.reply_error(*error)
    if waited:
        client.busy = False
        run_queued(client)


def kill_client(proxy: Proxy, number: int, user: str,
                query: bool) -> defer.Deferred[tuple[tuple[int, str], str] | None]:
    """KILL [QUERY] of client ``number`` on behalf of ``user``, in this process: fires
    with None (done) or the error the KILL gets (an unknown id, another user's
    client, what the server answered the KILL QUERY).  A supervisor's KILL for
    another worker runs it there too (pyproxy.workers)."""
    connection = proxy.clients.get(number)
    if connection is None:
        return defer.succeed(((1094, "HY000"), f"Unknown thread id: {number}"))
    if connection.user != user:
        return defer.succeed(((1095, "HY000"), f"You are not owner of thread {number}"))
    target = connection.commands
    running = running_statement(target)
    if not query:
        close_by_kill(connection)
    if running is None:
        if target.writer_wait is not None:
            # A refused write waiting for the new writer (pyproxy.write_retry)
            # never runs: it gets its refusal now.
            target.writer_wait.cancel()
        return defer.succeed(None)

    def done(result: Any) -> tuple[tuple[int, str], str] | None:
        if isinstance(result, Failure) and isinstance(result.value, BackendError):
            return (result.value.code, result.value.sqlstate), result.value.message
        return None

    return kill_query(target, running).addBoth(done)


def kill_self(client: CommandPhase, query: bool) -> None:
    """KILL of the client's own id (``KILL CONNECTION_ID()``): as on a server, KILL
    QUERY interrupts the KILL itself (1317) and the session goes on; KILL
    [CONNECTION] answers 1927 and closes the connection."""
    if query:
        client.reply_error(ER_QUERY_INTERRUPTED, "Query execution was interrupted")
        return
    connection = client.connection
    client.reply_error(ER_CONNECTION_KILLED, "Connection was killed")
    connection.closed_reason = "killed"
    connection.phase = CLOSED
    client.transport.loseConnection()


def kill_query(target: CommandPhase, running: tuple[int, Packet]) -> defer.Deferred[Any]:
    """Stops ``target``'s running statement with KILL QUERY on its backend thread,
    over a connection of pyproxy's own, if the same statement still runs."""
    running_on = target.backend
    login = running_on.target if running_on is not None else target.proxy.target(target.user)

    def kill(side: BackendConnection) -> Any:
        if running_statement(target) != running:
            side.close("KILL target finished")
            return None
        return _kill_query_over(side, running[0])

    return _side_connection(target.proxy, login).addCallback(kill)


def _side_connection(proxy: Proxy, login: Target) -> defer.Deferred[BackendConnection]:
    """A connection of pyproxy's own for a KILL: the pool may be full of exactly
    the statements to stop."""
    return connect(proxy.reactor, attrs.evolve(login, database=None), 0)


def _kill_query_over(side: BackendConnection, thread: int) -> defer.Deferred[Any]:
    """KILL QUERY ``thread`` on ``side``, which closes once it is answered."""
    sent = side.execute(make_query(f"KILL QUERY {thread}"))
    sent.addBoth(lambda result: (side.close("KILL sent"), result)[1])
    return sent


# Seconds an abandoned statement may take to end by itself before it is stopped.
ABANDONED_GRACE = 1.0


def stop_abandoned(proxy: Proxy, conn: BackendConnection) -> None:
    """A client vanished while its statement ran, and the statement's connection
    is being closed.  The server reads pyproxy's COM_QUIT only once the
    statement is over, so a long one (a lock wait, a sleep, a big query) would
    go on holding its locks and its place in the server's connections.  A
    server stops the statement of a client that went away; so does pyproxy:
    if the server has not closed the connection after a moment, KILL QUERY on
    its thread, over a connection of pyproxy's own (never for the statements
    that end by themselves, so a wave of vanishing clients costs no logins)."""
    handshake = conn.handshake
    if handshake is None or conn.gone:
        return
    thread = handshake.connection_id
    grace = min(ABANDONED_GRACE, conn.target.connect_timeout / 2)

    def check() -> None:
        if conn.gone:
            return  # the statement ended; the server closed the connection
        conn.log.info("abandoned_statement_stopped", backend_thread=thread)
        d = _side_connection(proxy, conn.target).addCallback(_kill_query_over, thread)
        d.addErrback(lambda failure: conn.log.warning("abandoned_statement_kill_failed",
                                                      error=failure.getErrorMessage()))

    proxy.reactor.callLater(grace, check)


def running_statement(client: CommandPhase) -> tuple[int, Packet] | None:
    """(backend thread id, command) of the statement a client is running, if any."""
    conn = client.backend
    command = client.command
    if not client.busy or conn is None or conn.handshake is None or command is None or not command.payload:
        # (An empty command is a login's schema check: not a statement.)
        return None
    return conn.handshake.connection_id, client.command


def close_by_kill(connection: FrontendProtocol) -> None:
    """Another session of the same user killed this one.

    A connection still logging in (its login packet named the user, the
    proof may still be checked, or the schema it named is being looked up)
    is closed like an idle one: the login never completes, as when a server
    thread in its connection phase is killed."""
    connection.closed_reason = "killed"
    phase = connection.phase
    if phase == HANDSHAKE or phase == AUTH_SWITCH or phase == COMMANDS and not connection.commands.busy:
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
