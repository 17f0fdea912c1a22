"""SET GLOBAL through pyproxy: sessions that began before it keep their defaults.

On a server, ``SET GLOBAL`` changes only what sessions that begin later start
from.  pyproxy's sessions outlive its connections, so around a statement
that may set a global value (sqltext.READ_GLOBALS) it reads the global
variables just before and just after, over a connection of its own (the
client's session, its warnings and ROW_COUNT(), stay untouched).  Every
session that began before gets the old values of the session defaults that
changed (as carried variables, and the old tracking settings), the pooled
connections (which took the old values as their defaults) are replaced, and
the greeting's autocommit flag and the statement limit follow the new
values.  A SET GLOBAL whose reply never comes is taken to have run.

A client's ``globals_before`` holds, between the two reads, pyproxy's
connection and the values read before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy.backend import BackendConnection
from pyproxy.idle import SessionTimeouts, parse_timeout
from pyproxy.phases import CLOSED
from pyproxy.session import TRACKING_VARIABLES, changed_defaults, tracking
from pyproxy.wire import constants as c
from pyproxy.wire.commands import make_query

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase
    from pyproxy.proxy import Proxy


def read_before(client: CommandPhase, then: Callable[[], Any]) -> None:
    """A SET GLOBAL is about to run: the global values it may change are read
    first, then ``then`` runs it.  If they cannot be read the statement runs
    all the same, and afterwards only the pools are renewed."""

    def opened(conn: BackendConnection) -> Any:
        def unread(failure: Failure) -> Failure:
            conn.close("global variables unread")
            return failure

        return conn.query_rows("SHOW GLOBAL VARIABLES").addCallbacks(
            lambda rows: (conn, variables(rows)), unread)

    def read(result: tuple[BackendConnection, dict[str, str | None]]) -> None:
        if client.connection.phase == CLOSED:
            result[0].close("client gone")
            return
        client.globals_before = result
        then()

    def failed(failure: Failure) -> None:
        client.log.warning("global_variables_unread", error=failure.getErrorMessage())
        client.globals_before = (None, {})
        if client.connection.phase != CLOSED:
            then()

    # The server the statement will run on: the held connection's, else the
    # one this client's route leads to now.
    proxy = client.proxy
    held = client.backend
    pool = held.pool if held is not None and held.pool is not None else \
        proxy.route(client.user, client.readonly, client.pool)
    proxy.connect_as(client.user, pool.target.config, 0).addCallback(opened).addCallbacks(read, failed)


def compare_after(client: CommandPhase, then: Callable[[], Any]) -> None:
    """The SET GLOBAL's reply came: every session that began before it keeps the
    old values of the defaults it changed, as its server session would, while
    sessions that begin later get the new ones.

    The old values become carried variables of the existing sessions (the
    ones each did not set itself), and pooled connections, which took the
    old values as their own defaults, are replaced.  Global-only and
    read-only session variables are left out.  ``then`` runs once this is done.
    """
    (conn, before), client.globals_before = client.globals_before, None  # type: ignore[misc]
    proxy = client.proxy
    # The sessions that began before the change, and only those: a client
    # may log in while the values are read.
    sessions = [other.commands.session for other in proxy.clients.values() if other.commands.session is not None]
    # Pooled connections took the old global values as their session
    # defaults: sessions that begin from now on must not get those.
    renew_pools(proxy, conn)
    if conn is None:
        then()
        return
    log = client.log

    old_tracking = None

    def compared(rows: list[tuple[str | None, ...]]) -> Any:
        nonlocal old_tracking
        after = variables(rows)
        if before.get("autocommit") != after.get("autocommit"):
            new_sessions_autocommit(proxy, after.get("autocommit") == "ON")
        if any(before.get(name) != after.get(name) for name in ("wait_timeout", "interactive_timeout")):
            new_sessions_timeouts(proxy, after)
        limit = after.get("max_prepared_stmt_count")
        if limit != before.get("max_prepared_stmt_count") and limit is not None and limit.isdigit():
            proxy.statement_limit_learned(int(limit))
        if any(before.get(name) != after.get(name) for name in TRACKING_VARIABLES):
            # What the sessions that began before still see (filtering, and
            # their pinned connections): the old tracking settings.
            values = [before.get(name) for name in TRACKING_VARIABLES]
            if None not in values:
                old_tracking = tracking(*values)  # type: ignore[arg-type]
        changed = changed_defaults(before, after, proxy.ignored_variables)
        names = list(changed)
        # Assigning a variable its own value fails for global-only and
        # read-only ones (1238, 1621) and changes nothing for the others.
        probes = [conn.execute(make_query(f"SET SESSION {name} = @@SESSION.{name}")) for name in names]
        return defer.DeferredList(probes, consumeErrors=True).addCallback(
            lambda results: {name: changed[name] for name, (ok, _) in zip(names, results) if ok})

    def apply(kept: dict[str, str]) -> None:
        if kept:
            log.info("session_defaults_kept", variables=sorted(kept), sessions=len(sessions))
        for session in sessions:
            if session.pin_reason is None:  # a pinned one keeps its own connection
                session.keep_defaults(kept)
                if old_tracking is not None and session.tracking is None:
                    session.tracking = old_tracking

    def failed(failure: Failure) -> None:
        log.warning("global_variables_unread", error=failure.getErrorMessage())

    def done(_: Any) -> None:
        conn.close("global variables read")
        then()

    conn.query_rows("SHOW GLOBAL VARIABLES").addCallback(compared).addCallbacks(
        apply, failed).addBoth(done)


def abandon(client: CommandPhase) -> None:
    """A SET GLOBAL whose reply never came (or the client left): whether it ran is
    unknown, so pooled connections are replaced as if it had."""
    if client.globals_before is None:
        return
    (conn, _), client.globals_before = client.globals_before, None
    if conn is not None:
        conn.close("SET GLOBAL did not complete")
    renew_pools(client.proxy, conn)


def renew_pools(proxy: Proxy, conn: BackendConnection | None) -> None:
    """Replaces the pooled connections to the server ``conn`` (pyproxy's own
    connection beside the SET GLOBAL) went to; all of them when unknown."""
    server = f"{conn.target.host}:{conn.target.port}" if conn is not None else None
    for pool in proxy.pools.values():
        if server is None or pool.target is None or pool.target.name == server:
            pool.renew()


def new_sessions_timeouts(proxy: Proxy, after: dict[str, str | None]) -> None:
    """SET GLOBAL wait_timeout / interactive_timeout: sessions that begin from now
    on get the new idle timeouts (pyproxy.idle), unless init_query sets
    pyproxy's connections' own wait_timeout."""
    current = proxy.timeouts
    wait = parse_timeout(after.get("wait_timeout"))
    if wait is None or "wait_timeout" in proxy.config.backend.init_query.lower():
        wait = current.wait
    interactive = parse_timeout(after.get("interactive_timeout")) or current.interactive
    proxy.timeouts_learned(SessionTimeouts(wait, interactive))


def new_sessions_autocommit(proxy: Proxy, on: bool) -> None:
    """SET GLOBAL autocommit: what sessions that begin from now on start with."""
    server = proxy.server
    status = (server.status | c.SERVER_STATUS_AUTOCOMMIT if on
              else server.status & ~c.SERVER_STATUS_AUTOCOMMIT)
    proxy.server = attrs.evolve(server, status=status)


def variables(rows: list[tuple[str | None, ...]]) -> dict[str, str | None]:
    """SHOW VARIABLES rows as a dict, names in lower case."""
    return {row[0].lower(): row[1] for row in rows if len(row) >= 2 and row[0] is not None}
