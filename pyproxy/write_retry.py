"""A write refused by a writer that has just turned read-only, run again on the new writer.

In a failover the old writer turns read-only before pyproxy's probes see it,
and refuses the writes sent to it meanwhile with 1290 (ER_OPTION_PREVENTS_
STATEMENT, ``--read-only``) or 1836 (ER_READ_ONLY_MODE).  The server refuses
such a statement before running any of it, so when nothing else can have
happened either, pyproxy holds the error back, waits (up to ``[pool]
borrow_timeout``) for the server that takes writes now, and runs the
statement there: the client sees one slower reply instead of an error.

Run again only when all of these hold (may_run_again), else the client gets
the error as before:

- the client is on the main listener, in autocommit, with nothing that
  lives on its connection (no transaction, not even one autocommit=0 may
  have opened, no pin, no open cursor, no savepoint, no SET TRANSACTION);
- the command is COM_QUERY or COM_STMT_EXECUTE, and is not a CALL, EXECUTE
  IMMEDIATE, SQL-level PREPARE/EXECUTE or SET GLOBAL (stored procedures run
  statement by statement, so part of one may have run before the refusal);
- the reply is one ERR packet, 1290 naming read-only or 1836, and nothing of
  it was forwarded: a reply that began with a result set or an OK (an
  earlier statement of a multi-statement ran), a LOCAL INFILE request (the
  client sent its file), a lost connection, are never run again;
- it was not run again already (once per command).

The wait ends with the new writer elected, or with the refusing server found
writable again by a probe begun after the refusal (the statement runs there,
once more); or, with no writer to wait for (the refusing server found
read-only and no other server may take writes), after borrow_timeout, or at
a KILL [QUERY] of the session, the client gets the server's error after all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy import sqltext
from pyproxy.direct_write import write_now
from pyproxy.hygiene import run_flagged
from pyproxy.kill import cancel_query_timer
from pyproxy.phases import CLOSED
from pyproxy.release import give_up_hold
from pyproxy.wire.buffer import BytesLike
from pyproxy.wire.constants import COMMAND
from pyproxy.wire.response_tracker import DONE, ResponseTracker

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase
    from pyproxy.topology import TargetHealth

ER_OPTION_PREVENTS_STATEMENT = 1290
# What may have run part of itself before a statement in it was refused, or
# changes what pyproxy reads around it (SET GLOBAL).
_NEVER_AGAIN = sqltext.CALLS | sqltext.DYNAMIC | sqltext.SQL_PREPARE | sqltext.READ_GLOBALS


def may_run_again(client: CommandPhase, data: BytesLike, tracker: ResponseTracker) -> bool:
    """Whether a reply whose ERR is 1290/1836 is a refusal that ran nothing, of a
    statement that may be run again elsewhere (see the module docstring)."""
    if client.retried or client.readonly or client.pinned or client.forwarded or tracker.state != DONE:
        return False
    if client.refused_infile >= 0 or client.infile or client.kill_pending or client.globals_before is not None:
        return False
    command = client.command.payload[0] if client.command is not None and client.command.payload else -1
    if command == COMMAND.COM_STMT_EXECUTE:
        if client.statements is None or client.statements.again is None:
            return False
    elif command != COMMAND.COM_QUERY:
        return False
    session = client.session
    if not session.state.autocommit or session.holds_state():
        return False
    found = client.found
    if found is not None and (found.flags & _NEVER_AGAIN or found.calls):
        return False
    conn = client.backend
    if conn is None or conn.broken or conn.pool is None or conn.pool.target is None:
        return False
    size = len(data)
    if size < 7 or size != 4 + (data[0] | (data[1] << 8) | (data[2] << 16)) or data[4] != 0xFF:
        return False  # not one ERR packet alone
    if tracker.error == ER_OPTION_PREVENTS_STATEMENT:
        # 1290 names the option: --read-only here, not --secure-file-priv and the like.
        text = bytes(data[7:]).lower()
        if b"read-only" not in text and b"read_only" not in text:
            return False
    return True


def refused_write(client: CommandPhase, data: BytesLike, tracker: ResponseTracker) -> bool:
    """The reply is a 1290/1836 ERR, nothing of it forwarded yet.  Returns True when
    the statement will run again (the ERR is held back), False when the reply
    goes on to the client as usual."""
    if not may_run_again(client, data, tracker):
        return False
    conn = client.backend
    target = conn.pool.target
    refusal = bytes(data)
    client.retried = True
    cancel_query_timer(client)
    if client.statements is not None:
        client.statements.cursor = None
    # Its diagnostics area holds this client's error now (SHOW WARNINGS).
    conn.diagnostics = client.session
    client.proxy.topology.suspect()
    client.proxy.writes_retried += 1
    client.log.info("write_refused_read_only", code=tracker.error, target=target.name,
                    backend_id=conn.id)
    give_up_hold(client, conn, lambda: _await_writer(client, target, refusal))
    return True


def _await_writer(client: CommandPhase, refused: TargetHealth, refusal: bytes) -> None:
    """Waits for the server that takes writes now; then runs the statement there,
    or gives the client the refusal after all."""
    topology = client.proxy.topology
    d = client.writer_wait = topology.await_writer(refused, client.proxy.config.pool.borrow_timeout)

    def found(writer: TargetHealth | None) -> None:
        client.writer_wait = None
        if client.connection.phase == CLOSED:
            return
        if writer is None:
            client.log.info("write_refusal_stands", target=refused.name, writer=topology.writer.name)
            _refusal_stands(client, refusal)
        else:
            client.log.info("write_run_again", target=writer.name)
            _run_again(client)

    def failed(failure: Failure) -> None:
        client.writer_wait = None
        if client.connection.phase == CLOSED:
            return
        if failure.check(defer.CancelledError):
            # KILL [QUERY] of this session: the wait ends, the refusal stands.
            _refusal_stands(client, refusal)
            return
        client.command_failed(failure.value)

    d.addCallbacks(found, failed)


def _run_again(client: CommandPhase) -> None:
    """The statement as the client sent it, on a connection borrowed anew (from
    the new writer's pool, the topology having moved), made the client's own as
    for any statement; a prepared one is prepared there first if needed."""
    client.forwarded = False
    if client.command.payload[0] == COMMAND.COM_STMT_EXECUTE:
        client.statements.execute_again()  # type: ignore[union-attr]
    elif client.found is not None or client.code is not None:
        run_flagged(client, client.start)
    else:
        client.acquire(client.start)


def _refusal_stands(client: CommandPhase, refusal: bytes) -> None:
    """No writer to run it on: the client gets the server's ERR as it came, and the
    command ends as after any error."""
    session = client.session
    session.observe_error()
    session.observe_result(error=True, warnings=0, affected=0, insert_id=0)
    session.hold_next = False  # the connection that holds the error is gone
    write_now(client.transport, refusal)
    client.forwarded = True
    client.finish_command()


def cancel(client: CommandPhase) -> Any:
    """The client left while its statement waited for a writer (for a KILL, kill.py
    cancels the wait itself, and the client gets the refusal)."""
    wait = client.writer_wait
    if wait is not None:
        client.writer_wait = None
        wait.cancel()
