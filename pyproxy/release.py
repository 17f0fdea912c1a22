"""When a client's backend connection goes back to its pool: the one rule, and the ways back.

verdict() is the rule.  After every reply (and when a hold runs out, a
cursor closes or a command fails) a connection held by a client is:

- KEPT while it carries what dies with it (ClientSession.holds_state(): a
  pin, a transaction, SET TRANSACTION characteristics, an error that may
  have opened a transaction, a cursor, a savepoint);
- HELD for ``[session] hold_for_next_statement`` when the statement left
  something its follow-up reads back on the same connection (warnings for
  SHOW WARNINGS, ROW_COUNT(), FOUND_ROWS());
- READ BACK first when what LAST_INSERT_ID() now is there is unknown (the
  client's next command waits for that read);
- else GIVEN BACK, to the pool it came from (a failover may have moved the
  client's next wait to another).

A client that leaves gives its connection up the same way, except that one
that still carried anything is reset (COM_RESET_CONNECTION) first, and one
in the middle of a command is dropped.  Every connection dropped instead of
given back carries its reason to the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy.backend import BackendConnection
from pyproxy.flow import run_queued
from pyproxy.kill import stop_abandoned
from pyproxy.phases import COMMANDS

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase
    from pyproxy.session import ClientSession

KEEP, HOLD, READ_BACK, GIVE_BACK = range(4)


def verdict(session: ClientSession, conn: BackendConnection) -> int:
    """Whether the connection a client holds stays with it after a reply (KEEP,
    HOLD), or goes back (READ_BACK first, or GIVE_BACK)."""
    if session.holds_state():
        return KEEP
    if session.hold_next:
        return HOLD
    if conn.last_insert_id is None and not conn.broken:
        return READ_BACK
    return GIVE_BACK


def release_if_clean(client: CommandPhase) -> None:
    """Applies the rule to the connection the client holds, if any."""
    conn = client.backend
    if conn is None:
        return
    judged = verdict(client.session, conn)
    if judged == GIVE_BACK:
        client.backend = None
        # Its own pool: a failover may have moved this client's wait to another.
        conn.pool.give_back(conn)
    elif judged == HOLD:
        if client.hold_timer is None:
            client.hold_timer = client.proxy.reactor.callLater(
                client.proxy.config.session.hold_for_next_statement, hold_expired, client)
    elif judged == READ_BACK:
        client.backend = None
        read_back_insert_id(client, conn)


def hold_expired(client: CommandPhase) -> None:
    """The client did not follow up in time: the results it could have read back
    are given up, and the connection with them."""
    client.hold_timer = None
    if client.busy or client.connection.phase != COMMANDS:
        return
    client.session.hold_next = False
    release_if_clean(client)


def give_up_hold(client: CommandPhase, conn: BackendConnection, then: Callable[[], Any]) -> None:
    """The connection is held only for a follow-up (SHOW WARNINGS, ROW_COUNT()),
    and its server no longer takes the client's traffic (a failover): not worth
    staying on, it goes back, then ``then`` runs (unless the client left
    meanwhile).  As on every way back, a LAST_INSERT_ID() left unknown there is
    read back first: the client's next statement, wherever it runs, must see
    the value its own statements left, not the OK's insert id."""
    client.backend = None
    client.session.hold_next = False
    cancel_hold(client)
    if conn.last_insert_id is None and not conn.broken:
        def go_on(_: Any) -> None:
            if client.connection.phase == COMMANDS:
                then()

        _read_insert_id(client, conn).addBoth(go_on)
        return
    give_back(conn)
    then()


def cancel_hold(client: CommandPhase) -> None:
    timer = client.hold_timer
    if timer is not None:
        if timer.active():
            timer.cancel()
        client.hold_timer = None


def read_back_insert_id(client: CommandPhase, conn: BackendConnection) -> None:
    """Before another client can get ``conn``, reads back what LAST_INSERT_ID()
    is now, which this client's statements left there: an OK's insert id
    does not say (an explicitly inserted id is reported too, and stored
    code may set it unseen).  The client's next command waits for it, as
    it needs the value wherever it runs."""
    client.busy = True

    def done(_: Any) -> None:
        if client.connection.phase != COMMANDS:
            return
        client.busy = False
        if client.proxy.draining:
            client.connection.drain()
        else:
            run_queued(client)

    _read_insert_id(client, conn).addBoth(done)


def _read_insert_id(client: CommandPhase, conn: BackendConnection) -> defer.Deferred[None]:
    """Reads LAST_INSERT_ID() on ``conn`` into it and the client's session, then
    gives it back (drops it if the read fails); fires when that is done."""
    session = client.session

    def read(value: str | None) -> None:
        number = int(value) if value is not None and value.isdigit() else 0
        conn.last_insert_id = session.last_insert_id = number
        give_back(conn)

    def failed(failure: Failure) -> None:
        discard(conn, f"LAST_INSERT_ID() unread: {failure.getErrorMessage()}")

    return conn.query_value("SELECT LAST_INSERT_ID()").addCallbacks(read, failed)


def client_left(client: CommandPhase) -> None:
    """The client is gone: a connection mid-command is dropped, one that carried
    anything of the session is reset first, the others go back as they are."""
    conn = client.backend
    if conn is None:
        return
    if client.busy or client.infile:
        client.backend = None
        discard(conn, "client left during a command")
        stop_abandoned(client.proxy, conn)
    elif client.pinned or verdict(client.session, conn) in (KEEP, HOLD):
        reset_and_give_back(client)
    else:
        client.backend = None
        give_back(conn)


def reset_and_give_back(client: CommandPhase) -> None:
    """Gives back a held backend after resetting it (it may carry pinned state)."""
    conn = client.backend
    client.backend = None
    client.own_tracking = False
    if conn is None:
        return
    if conn.unresettable:
        discard(conn, "holds what no reset clears (BINLOG)")
        return

    def reset_done(_: Any) -> None:
        give_back(conn)

    def reset_failed(failure: Failure) -> None:
        discard(conn, f"reset failed: {failure.getErrorMessage()}")

    client.proxy.resets += 1
    conn.reset().addCallbacks(reset_done, reset_failed)


def give_back(conn: BackendConnection) -> None:
    """To its pool; a connection of pyproxy's own is closed."""
    if conn.pool is not None:
        conn.pool.give_back(conn)
    else:
        conn.close("not pooled")


def discard(conn: BackendConnection, reason: str) -> None:
    """Closed, not reused: its pool forgets it, with ``reason``."""
    if conn.pool is not None:
        conn.pool.discard(conn, reason)
    else:
        conn.close(reason)
