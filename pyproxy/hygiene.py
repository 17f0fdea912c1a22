"""What a shared connection needs around a client's command beyond relaying it.

Before the command: the borrowed connection is made the client's own
(bring_to_state): its carried session state (one combined SET, COM_INIT_DB,
COM_SET_OPTION, or a reset to unselect a schema), the client's
LAST_INSERT_ID() before a statement that may read or set it, and no
diagnostics area left by another client; when only those last two differ,
one SET goes out ahead of the command in the same write.  A statement whose
text sqltext.scan() flagged, or that names stored code, first gets what it
needs: the stored-code catalog read when stale, the globals read before a
SET GLOBAL (pyproxy.set_global), the client's own tracking settings on a
connection that reads them.

During the reply: OK packets' tracked session changes are read into the
session, and the OKs the client sees are cut to what it negotiated and what
its own tracking settings report (observe_oks).

After the reply, before the client's next command (follow_up): the globals
after a SET GLOBAL, and SET @@name assignments the server did not report,
read back.  (LAST_INSERT_ID() is read back when the connection goes back:
pyproxy.release.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy import sqltext
from pyproxy.backend import BackendConnection
from pyproxy.flow import run_queued
from pyproxy.phases import CLOSED, COMMANDS
from pyproxy.routines import Verdict, combine
from pyproxy.session import last_insert_id_assignment, needs_reset, reconcile, tracking_assignments
from pyproxy.set_global import compare_after, read_before
from pyproxy.wire import constants as c
from pyproxy.wire.buffer import BytesLike
from pyproxy.wire.commands import REPLIES, Reply, make_query
from pyproxy.wire.framing import Packet, frame
from pyproxy.wire.response_tracker import ResponseTracker
from pyproxy.wire.responses import filter_session_track, ok_status, parse_ok, strip_session_track

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase

# Statements that may set LAST_INSERT_ID() without an OK saying so.
MAY_SET_INSERT_ID = sqltext.INSERT_ID | sqltext.CALLS | sqltext.DYNAMIC
# Statements that may insert rows, and so set LAST_INSERT_ID() (a cheap check,
# made only when the connection's value is not the client's).
_INSERTS = re.compile(rb"(?i)insert|replace|load")


def bring_to_state(client: CommandPhase, then: Callable[[], Any]) -> None:
    """Makes the attached connection the client's own, then calls ``then``: its
    carried state, its LAST_INSERT_ID() before a statement that may read or
    set it, and no diagnostics area (warnings, errors) left by another client."""
    conn = client.backend
    session = client.session
    desired = session.state
    if ((desired is conn.state or desired == conn.state)
            and (conn.diagnostics is None or conn.diagnostics is session)
            and (conn.last_insert_id == session.last_insert_id or conn.last_insert_id is None
                 or not touches_insert_id(client))):
        then()
        return
    command = client.command
    if (desired == conn.state and command is not None and command.payload
            and REPLIES.get(command.payload[0]) not in (None, Reply.NONE)):
        # Only pyproxy's own hygiene: one SET sent ahead of the command in
        # the same write, its OK taken out of the reply (see CommandPhase.start).
        value = _insert_id_to_set(client, conn)
        clear = conn.diagnostics is not None and conn.diagnostics is not session
        client.prefix = (frame(make_query("SET SESSION " + last_insert_id_assignment(value, clear)), 0),
                         value, clear)
        then()
        return
    d = conn.change_user() if needs_reset(desired, conn.state) else defer.succeed(conn)
    value = -1
    clear = False

    def apply(_: Any) -> defer.Deferred[Any]:
        nonlocal value, clear
        extra = []
        clear = conn.diagnostics is not None and conn.diagnostics is not session
        if clear or (conn.last_insert_id is not None and conn.last_insert_id != session.last_insert_id
                     and touches_insert_id(client)):
            value = _insert_id_to_set(client, conn)
            extra.append(last_insert_id_assignment(value, clear))
        commands = reconcile(desired, conn.state, extra)
        return defer.gatherResults([conn.execute(cmd) for cmd in commands], consumeErrors=True)

    def applied(_: Any) -> None:
        conn.state = desired
        if value >= 0:
            conn.last_insert_id = value
        if clear:
            # Only the derived table emptied the diagnostics area: the SET of the
            # insert id alone leaves this client's own messages there.
            conn.diagnostics = None
        if client.connection.phase != CLOSED:
            then()

    def failed(failure: Failure) -> None:
        if isinstance(failure.value, defer.FirstError):
            failure = failure.value.subFailure
        if client.connection.phase != CLOSED:
            client.command_failed(failure.value)

    d.addCallback(apply)
    d.addCallbacks(applied, failed)


def _insert_id_to_set(client: CommandPhase, conn: BackendConnection) -> int:
    """The LAST_INSERT_ID() a connection should have for the client's statement:
    the client's own where the statement may read or set it (or the
    connection's is unknown), else the connection's as it is."""
    known = conn.last_insert_id
    if known is None or (known != client.session.last_insert_id and touches_insert_id(client)):
        return client.session.last_insert_id
    return known


def touches_insert_id(client: CommandPhase) -> bool:
    """Whether the running statement may read or set LAST_INSERT_ID(): its text
    names it or inserts rows, or stored code it runs reads it (or cannot be
    read).  The server's value must then be the client's before it runs,
    so that after it the value is the client's whether it changed or not."""
    found = client.found
    if found is not None and found.flags & MAY_SET_INSERT_ID:
        return True
    code = client.code
    if code is not None and code.insert_id:
        return True
    sql = client.sql
    return sql is not None and _INSERTS.search(sql, 0, sqltext.SCAN_LIMIT) is not None


def run_flagged(client: CommandPhase, then: Callable[[], Any]) -> None:
    """A statement whose text sqltext.scan() flagged, or that names stored code:
    what it needs before it runs, then borrowing as usual."""
    found = client.found
    flags = found.flags if found is not None else 0

    def attach() -> None:
        if flags & sqltext.OWN_TRACKING:
            client.acquire(lambda: _own_tracking_first(client, then))
        else:
            client.acquire(then)

    if flags & sqltext.READ_GLOBALS:
        read_before(client, attach)
    else:
        attach()


def stored_code(client: CommandPhase, sql: bytes, found: sqltext.Found | None) -> Verdict | None:
    """What the stored code ``sql`` can run does, by the user's catalog: the
    procedures it CALLs, and the functions, trigger tables and views it names."""
    catalog = client.catalog
    code = catalog.check(sql)
    if found is not None and found.calls:
        schema = client.session.state.schema
        for name in found.calls:
            code = combine(code, catalog.procedure(name, schema))
    return code


def await_catalog(client: CommandPhase, packet: Packet) -> None:
    """The user's catalog of stored code is stale (never read, or a statement
    changed such code): it is read before this statement runs, so that
    what the statement may leave behind is judged by the code as it is now."""
    client.busy = True

    def loaded(_: Any) -> None:
        if client.connection.phase != COMMANDS:
            return
        client.busy = False
        client.dispatch(packet)
        if not client.busy:
            run_queued(client)

    client.proxy.load_catalog(client.user).addBoth(loaded)


def _own_tracking_first(client: CommandPhase, then: Callable[[], Any]) -> None:
    """The statement reads or sets session_track_* variables: the session is
    pinned, and its connection given the client's own tracking settings
    before the statement runs, so that it sees what a server would show it."""
    client.pin("session_track_* variables read or set")
    restore_tracking(client, then)


def restore_tracking(client: CommandPhase, then: Callable[[], Any]) -> None:
    """A pinned session keeps its connection until it ends, so pyproxy no longer
    needs to learn from that connection's tracking: it gets the tracking
    settings the client's own session would have (those the client did not
    set itself), and from then on the client sees the server's OK packets
    as they are.  The connection is reset before anyone else uses it."""
    conn = client.backend
    session = client.session
    client.own_tracking = True
    command = tracking_assignments(session.tracking or conn.tracking, session.own_tracking)
    if command is None:
        then()
        return

    def failed(failure: Failure) -> None:
        if client.connection.phase != CLOSED:
            client.command_failed(failure.value)

    conn.execute(command).addCallbacks(lambda _: then() if client.connection.phase != CLOSED else None, failed)


def observe_oks(client: CommandPhase, data: BytesLike, tracker: ResponseTracker) -> BytesLike:
    """Reads tracked session changes from OK packets, and gives the client the
    packets it negotiated: the tracker's EOFs for a client without
    CLIENT_DEPRECATE_EOF, OKs without the state block for one without
    CLIENT_SESSION_TRACK, and otherwise only what its own tracking settings
    report."""
    edits = tracker.edits
    terminators = tracker.terminators
    rewrite_oks = client.rewrite_oks
    if tracker.changed or rewrite_oks and len(tracker.oks) > len(terminators):
        session = client.session
        strip = []
        for start, end in tracker.oks:
            payload = bytes(data[start + 4:end])
            status = ok_status(payload)
            if status & c.SERVER_SESSION_STATE_CHANGED:
                ok = parse_ok(payload, True)
                if ok.changes is not None:
                    found = client.found
                    ignore = client.proxy.ignored_variables
                    if found is not None and found.scoped:
                        # SET STATEMENT ... FOR: the values last only as
                        # long as the statement.
                        ignore = ignore | frozenset(found.scoped)
                    code = client.code
                    reason = session.observe_changes(ok.changes, client.sql, ignore, found,
                                                     code.unclean if code is not None else None)
                    if reason is not None:
                        client.log_pin(reason)
            if start in terminators:
                continue
            if rewrite_oks:
                if status & c.SERVER_SESSION_STATE_CHANGED or len(payload) > 7:
                    strip.append((start, end, frame(strip_session_track(payload), data[start + 3])))
            elif status & c.SERVER_SESSION_STATE_CHANGED and not client.own_tracking:
                settings = session.tracking or client.backend.tracking
                strip.append((start, end, frame(filter_session_track(
                    payload, settings.variables, settings.kinds), data[start + 3])))
        if strip:
            edits = sorted(edits + strip)
    if not edits:
        return data
    pieces = []
    last = 0
    for start, end, packet in edits:
        pieces.append(data[last:start])
        pieces.append(packet)
        last = end
    pieces.append(data[last:])
    return b"".join(pieces)


def follow_up(client: CommandPhase) -> None:
    """What a reply may still need, in pyproxy's own round trips, before the
    client's next command runs (which waits, as during the reply): reading
    the globals after a SET GLOBAL, the variables of a SET @@name."""
    if client.connection.phase == CLOSED:
        return
    if client.globals_before is not None:
        compare_after(client, lambda: follow_up(client))
    elif client.session.reread:
        _reread(client)
    else:
        client.finish_command()


def _reread(client: CommandPhase) -> None:
    """SET @@name = value is not reported by MariaDB's session tracking: the
    same variables are assigned their own values in a form it reports, so
    that they are carried (and not left behind for the connection's next
    borrower).  The OK of that SET also reports whatever else changed and
    was not reported yet (a classic EOF only flags it: see
    ClientSession.read_back_changes).  That changes nothing else in the
    session, its warnings included.  A pinned session keeps its connection
    and needs none of it."""
    session = client.session
    names, session.reread = session.reread, ()
    conn = client.backend
    if client.pinned or conn is None or conn.broken:
        follow_up(client)
        return

    def read(payload: bytes) -> None:
        ok = parse_ok(payload, True)
        if ok.changes is not None:
            reason = session.observe_changes(ok.changes, None, client.proxy.ignored_variables)
            if reason is not None:
                client.log_pin(reason)
        conn.state = session.state

    def failed(failure: Failure) -> None:
        # The value stays unknown: only this connection has it.
        client.pin("SET @@variable the server did not report")

    assignments = ", ".join(f"{name} = @@SESSION.{name}" for name in names)
    conn.execute(make_query("SET SESSION " + assignments)).addCallbacks(read, failed).addBoth(
        lambda _: follow_up(client))
