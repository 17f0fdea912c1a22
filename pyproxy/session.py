"""What a client's session looks like, and whether its backend connection may go back.

A client borrows a backend connection per transaction, so pyproxy keeps the
session state each client asked for (``SessionState``) apart from the
connection that happens to serve it.  Session variables, the schema and the
multi-statements option are carried to whichever connection the client
borrows, replayed with one combined SET; any other change pins the client
to its connection, always with a reason.  What changed is read
from the server's own session-state tracking; SQL text is consulted only
where the server reports nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from pymysql.charset import charset_by_id

from pyproxy import sqltext
from pyproxy.wire.commands import make_init_db, make_query, make_set_option
from pyproxy.wire.constants import (
    MYSQL_OPTION_MULTI_STATEMENTS_OFF,
    MYSQL_OPTION_MULTI_STATEMENTS_ON,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_STATE_CHANGE,
    SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
    SESSION_TRACK_TRANSACTION_STATE,
)
from pyproxy.wire.responses import SessionChanges

CHARSET_VARIABLES = ("character_set_client", "character_set_results",
                     "character_set_connection", "collation_connection")
CARRIED_VARIABLES = frozenset(("autocommit",) + CHARSET_VARIABLES)
# Assigned its own value, it makes the server report every tracked change it
# has not reported yet (see ClientSession.read_back_changes).
FLUSH_VARIABLE = "character_set_client"

# The schema's character set and collation: USE sets them to the schema's
# own, a SET overrides them until the next USE (SessionState.database_charset).
DATABASE_CHARSET_VARIABLES = frozenset(("character_set_database", "collation_database"))
# SessionState.database_charset after COM_RESET_CONNECTION: the reset keeps the
# schema but gives the database character set the global value, not the
# schema's own (which is what a SET ... = DEFAULT gives back).
SERVER_DATABASE_CHARSET = ("collation_database", "@@GLOBAL.collation_database")

# Session variables that cannot be carried to another connection by a SET:
# they steer pyproxy's own tracking, or hold one-shot values for the next
# statement (insert ids, random seeds) whose meaning is the connection's.
UNCARRIED_VARIABLES = frozenset((
    "session_track_schema", "session_track_state_change", "session_track_system_variables",
    "session_track_transaction_info", "session_track_gtids", "insert_id", "last_insert_id",
    "identity", "rand_seed1", "rand_seed2", "pseudo_thread_id", "pseudo_slave_mode",
    "gtid_next", "gtid_domain_id", "gtid_seq_no", "server_id", "skip_replication",
    # SET timestamp=DEFAULT is not reported, so a carried value would go stale.
    "timestamp",
))
_PLAIN = re.compile(r"[\x20-\x26\x28-\x5b\x5d-\x7e]*\Z")  # printable ASCII but quote and backslash
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\Z")
_NAME = re.compile(r"[a-z0-9_]+\Z")
# COMMIT RELEASE / ROLLBACK RELEASE end the server session, and so the client's.
_RELEASE = re.compile(rb"(?is)^\s*(?:commit|rollback)\b(?:\s+work)?(?:\s+and\s+(?:no\s+)?chain)?\s+release\b")
_COLLATE = re.compile(rb"(?i)\bcollate\s*=?\s*['\"`]?(\w+)")
# What the statement's text says can explain a "session state changed" report
# that no variable or schema change in the same OK accounts for.
_STATE_HINTS = ((sqltext.USER_VARIABLE, "user variable set"),
                (sqltext.TEMPORARY, "temporary table created"),
                (sqltext.SQL_PREPARE, "SQL prepared statement created"))
_HIDDEN = sqltext.USER_VARIABLE | sqltext.TEMPORARY | sqltext.SQL_PREPARE | sqltext.DYNAMIC


@attrs.frozen(slots=True)
class SessionState:
    """The carried part of a session; a value, so "unchanged" is a cheap compare."""

    schema: str | None = None
    autocommit: bool = True
    character_set_client: str = "utf8mb4"
    character_set_results: str = "utf8mb4"  # "" stands for NULL (no conversion)
    character_set_connection: str = "utf8mb4"
    # None: the server's default collation for character_set_connection, which
    # is what SET NAMES gives and what the server does not report by name.
    collation_connection: str | None = "utf8mb4_general_ci"
    multi_statements: bool = False
    # The last SET of character_set_database or collation_database since the
    # schema was last chosen, as (name, value); None: the schema's own, which
    # is what a USE of it gives.  Either assignment decides both variables.
    database_charset: tuple[str, str] | None = None
    # Every other session variable the client changed, as (name, value) in name
    # order, values as the server reports them: sql_mode, time_zone, the
    # isolation level, foreign_key_checks, wait_timeout...
    variables: tuple[tuple[str, str], ...] = ()


TRACKING_VARIABLES = ("session_track_system_variables", "session_track_schema",
                      "session_track_state_change", "session_track_transaction_info")
_TRACKING_KINDS = {"STATE": frozenset((SESSION_TRACK_TRANSACTION_STATE,)),
                   "CHARACTERISTICS": frozenset((SESSION_TRACK_TRANSACTION_STATE,
                                                 SESSION_TRACK_TRANSACTION_CHARACTERISTICS))}


@attrs.frozen(slots=True)
class Tracking:
    """The session-state tracking settings a client's session has, which decide
    what the server reports to it; pyproxy's backend connections track more
    (see pyproxy.backend.TRACKING).  Values are as the server shows them.
    Made with tracking(), which shares equal values."""

    system_variables: str = "autocommit,character_set_client,character_set_connection,character_set_results,time_zone"
    schema: str = "ON"
    state_change: str = "OFF"
    transaction_info: str = "OFF"
    # The system variables reported (None: every one) and the other entry types.
    variables: frozenset[str] | None = attrs.field(init=False, eq=False, repr=False)
    kinds: frozenset[int] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        names = self.system_variables.strip()
        variables = None if names == "*" else frozenset(
            name.strip().lower() for name in names.split(",") if name.strip())
        kinds = set(_TRACKING_KINDS.get(self.transaction_info.upper(), ()))
        if self.schema.upper() in ("ON", "1"):
            kinds.add(SESSION_TRACK_SCHEMA)
        if self.state_change.upper() in ("ON", "1"):
            kinds.add(SESSION_TRACK_STATE_CHANGE)
        object.__setattr__(self, "variables", variables)
        object.__setattr__(self, "kinds", frozenset(kinds))

    def values(self) -> dict[str, str]:
        return dict(zip(TRACKING_VARIABLES, (self.system_variables, self.schema,
                                             self.state_change, self.transaction_info)))


def _on_off(value: str) -> str:
    return {"1": "ON", "0": "OFF"}.get(value, value)


def tracking(system_variables: str, schema: str, state_change: str, transaction_info: str) -> Tracking:
    """A Tracking, shared by every connection and session with the same settings
    (booleans as ON/OFF whether the server said 1 or ON)."""
    return _shared_tracking(system_variables, _on_off(schema), _on_off(state_change), transaction_info)


@functools.lru_cache(maxsize=64)
def _shared_tracking(system_variables: str, schema: str, state_change: str, transaction_info: str) -> Tracking:
    return Tracking(system_variables, schema, state_change, transaction_info)


DEFAULT_TRACKING = tracking(*Tracking().values().values())


@functools.lru_cache(maxsize=256)
def initial_state(collation_id: int, schema: str | None, autocommit: bool,
                  multi_statements: bool) -> SessionState:
    """The state a server gives a new connection that logged in with ``collation_id``.

    Cached: states are values, and most clients start from the same one.
    """
    try:
        charset = charset_by_id(collation_id)
        name, collation = charset.name, charset.collation
    except KeyError:
        name, collation = "utf8mb4", "utf8mb4_general_ci"
    return SessionState(schema, autocommit, name, name, name, collation, multi_statements)


def reset_state(collation_id: int, schema: str | None, autocommit: bool,
                multi_statements: bool) -> SessionState:
    """The state COM_RESET_CONNECTION leaves: a new session's, but for the schema
    it keeps, whose character set is then the server's default, not its own."""
    state = initial_state(collation_id, schema, autocommit, multi_statements)
    return state if schema is None else attrs.evolve(state, database_charset=SERVER_DATABASE_CHARSET)


def _quote(value: str) -> str:
    """A string literal that means ``value`` whatever the connection it runs on
    has: the introducer keeps it from being converted to the connection's
    character set (a ucs2 collation_connection would make '+01:00' an unknown
    time zone), and a hex literal needs no escaping, which the connection's
    sql_mode (NO_BACKSLASH_ESCAPES) would otherwise decide."""
    if _PLAIN.match(value):
        return f"_utf8mb4'{value}'"
    return f"_utf8mb4 X'{value.encode('utf-8').hex()}'"


def _literal(value: str) -> str:
    """A reported value as SQL: numeric variables refuse quoted numbers."""
    return value if _NUMBER.match(value) else _quote(value)


def _with_variable(variables: tuple[tuple[str, str], ...], name: str,
                   value: str) -> tuple[tuple[str, str], ...]:
    changed = dict(variables)
    changed[name] = value
    return tuple(sorted(changed.items()))


def reconcile(desired: SessionState, actual: SessionState, extra: Sequence[str] = ()) -> list[bytes]:
    """Command payloads that bring a backend connection from ``actual`` to ``desired``.

    One combined SET for the variables (with the ``extra`` assignments),
    COM_INIT_DB for the schema and COM_SET_OPTION for multi-statements: at
    most three round trips, usually none.  A connection whose schema must be
    *unset* cannot be reconciled this way (MySQL has no "USE nothing"); the
    caller resets it first.
    """
    if desired == actual and not extra:
        return []
    commands = []
    if desired.multi_statements != actual.multi_statements:
        commands.append(make_set_option(MYSQL_OPTION_MULTI_STATEMENTS_ON if desired.multi_statements
                                        else MYSQL_OPTION_MULTI_STATEMENTS_OFF))
    if desired.schema is not None and (
            desired.schema != actual.schema
            or desired.database_charset is None and actual.database_charset is not None):
        # Choosing the schema again is also what gives back its own character set.
        commands.append(make_init_db(desired.schema))
    assignments = []
    if desired.autocommit != actual.autocommit:
        assignments.append(f"autocommit={int(desired.autocommit)}")
    for name in ("character_set_client", "character_set_results"):
        want = getattr(desired, name)
        if want != getattr(actual, name):
            assignments.append(f"{name}={_quote(want) if want else 'NULL'}")
    # Setting character_set_connection also resets collation_connection to
    # that character set's default, which is how a default collation is restored.
    collation = desired.collation_connection
    if (desired.character_set_connection != actual.character_set_connection
            or (collation is None and actual.collation_connection is not None)):
        assignments.append(f"character_set_connection={_quote(desired.character_set_connection)}")
        if collation is not None:
            assignments.append(f"collation_connection={_quote(collation)}")
    elif collation is not None and collation != actual.collation_connection:
        assignments.append(f"collation_connection={_quote(collation)}")
    if desired.database_charset is not None and (
            desired.database_charset != actual.database_charset or desired.schema != actual.schema):
        name, value = desired.database_charset
        assignments.append(f"{name}={value}" if desired.database_charset == SERVER_DATABASE_CHARSET
                           else f"{name}={_quote(value)}")
    if desired.variables != actual.variables:
        have = dict(actual.variables)
        want = dict(desired.variables)
        for name, value in desired.variables:
            if have.get(name) != value:
                assignments.append(f"{name}={_literal(value)}")
        for name in have:
            if name not in want:
                # Back to what a new session gets: the global value.
                assignments.append(f"{name}=DEFAULT")
    assignments.extend(extra)
    if assignments:
        commands.append(make_query("SET SESSION " + ", ".join(assignments)))
    return commands


def last_insert_id_assignment(value: int, clear_diagnostics: bool) -> str:
    """The assignment that gives a connection a client's LAST_INSERT_ID().

    With ``clear_diagnostics`` it also empties the connection's diagnostics
    area, which holds another client's warnings and errors: MariaDB clears it
    only for a statement that uses a table, and a derived table is the
    cheapest one that needs no privilege.
    """
    if clear_diagnostics:
        return f"last_insert_id=(SELECT {int(value)} FROM (SELECT 1) AS pyproxy_clear)"
    return f"last_insert_id={int(value)}"


def tracking_assignments(settings: Tracking, keep: frozenset[str]) -> bytes | None:
    """The SET that gives a connection the tracking ``settings``, but for the
    variables in ``keep`` (which the client set itself); None if nothing is left."""
    values = [(name, value) for name, value in settings.values().items() if name not in keep]
    if not values:
        return None
    return make_query("SET SESSION " + ", ".join(f"{name}={_literal(value)}" for name, value in values))


def changed_defaults(before: Mapping[str, str | None], after: Mapping[str, str | None],
                     ignore: frozenset[str] = frozenset()) -> dict[str, str]:
    """The session defaults a SET GLOBAL changed, with their old values.

    ``before`` and ``after`` are the server's global values (``SHOW GLOBAL
    VARIABLES``) around the statement.  Left out: variables every session
    carries explicitly anyway (autocommit, the character sets), those that are
    not carried at all, and NULLs, which a SET cannot restore by value.  Some
    of the rest are global only; the caller checks which have a session value.
    """
    changed = {}
    for name, old in before.items():
        if (old is None or after.get(name, old) == old or name in CARRIED_VARIABLES
                or name in DATABASE_CHARSET_VARIABLES or name in UNCARRIED_VARIABLES or name in ignore
                or _NAME.match(name) is None):
            continue
        changed[name] = old
    return changed


def needs_reset(desired: SessionState, actual: SessionState) -> bool:
    """True when the backend has a schema selected and the client has none, or
    a database character set the client's schema-less session does not have:
    only a new session gives those back."""
    return desired.schema is None and (
        actual.schema is not None
        or desired.database_charset is None and actual.database_charset is not None)


@attrs.define(eq=False, slots=True)
class ClientSession:
    """One client's view of its session across the backend connections it borrows."""

    state: SessionState
    pin_reason: str | None = None
    in_transaction: bool = False
    # SET TRANSACTION without SESSION applies to the next transaction only,
    # so the connection that holds it must serve that transaction.
    pending_characteristics: bool = False
    # After an error with autocommit off the server may have opened a
    # transaction that no status flag has confirmed yet.
    uncertain: bool = False
    # The last statement left something its successor may read back on the
    # same connection: LAST_INSERT_ID(), ROW_COUNT(), FOUND_ROWS() after
    # SQL_CALC_FOUND_ROWS, SHOW WARNINGS / SHOW ERRORS.  Held for one statement.
    hold_next: bool = False
    # What LAST_INSERT_ID() returns in this session: the insert id of its last
    # statement that generated one.
    last_insert_id: int = 0
    # Variables the last statement assigned without the server reporting them
    # (SET @@name = value): pyproxy reads them back before the next command.
    reread: tuple[str, ...] = ()
    # The session's tracking settings when they differ from its connection's
    # (a SET GLOBAL changed them after the session began), else None.
    tracking: Tracking | None = None
    # The session_track_* variables the client set itself.
    own_tracking: frozenset[str] = frozenset()
    # Cursors open (COM_STMT_EXECUTE with a cursor flag): each lives on the
    # held connection until it is closed.
    cursors: int = 0
    # A SAVEPOINT with autocommit off before any statement started the
    # transaction: the server keeps it but reports no transaction (no
    # IN_TRANS), so only this says the session's state is on its connection.
    savepoint: bool = False

    def observe_result(self, *, error: bool, warnings: int, affected: int, insert_id: int) -> None:
        """Whether the next statement should run where this one did: SHOW WARNINGS,
        SHOW ERRORS and ROW_COUNT() read back what this one left (LAST_INSERT_ID()
        is carried instead)."""
        self.hold_next = bool(error or warnings or affected)
        if insert_id:
            self.last_insert_id = insert_id

    def keep_defaults(self, defaults: Mapping[str, str]) -> None:
        """A SET GLOBAL changed what new server sessions start from; this session
        started before, and keeps the values it started with, as a server
        session does.  Those it did not set itself become carried values, so
        that connections opened after the change are brought back to them."""
        own = dict(self.state.variables)
        kept = {name: value for name, value in defaults.items() if name not in own}
        if kept:
            own.update(kept)
            self.state = attrs.evolve(self.state, variables=tuple(sorted(own.items())))

    def holds_state(self) -> bool:
        """Whether the held connection carries something that dies with it (what
        keeps it with the client: pyproxy.release)."""
        return bool(self.pin_reason or self.in_transaction or self.pending_characteristics
                    or self.uncertain or self.cursors or self.savepoint)

    def observe_savepoint(self) -> None:
        """A SAVEPOINT succeeded.  With autocommit on and no transaction it is
        gone at once; with autocommit off it stays, even before the server
        reports a transaction, until COMMIT or ROLLBACK."""
        if not self.state.autocommit and not self.in_transaction:
            self.savepoint = True

    def lose_transaction(self) -> None:
        """The connection holding the session's transaction is gone, and with it
        what the transaction held (savepoints, the next one's characteristics)."""
        self.in_transaction = self.uncertain = self.pending_characteristics = self.savepoint = False

    def observe_status(self, status: int) -> None:
        """The final OK/EOF of a reply is the truth about transactions and autocommit."""
        self.in_transaction = bool(status & SERVER_STATUS_IN_TRANS)
        self.uncertain = False
        autocommit = bool(status & SERVER_STATUS_AUTOCOMMIT)
        if self.in_transaction or autocommit:
            # The transaction (whose end clears savepoints) is reported now, or
            # autocommit ended it.
            self.savepoint = False
        if autocommit != self.state.autocommit:
            self.state = attrs.evolve(self.state, autocommit=autocommit)

    def observe_error(self) -> None:
        if not self.state.autocommit and not self.in_transaction:
            self.uncertain = True

    def observe_changes(self, changes: SessionChanges, sql: bytes | None,
                        ignore: frozenset[str] = frozenset(), found: sqltext.Found | None = None,
                        hidden: str | None = None) -> str | None:
        """Applies one OK packet's tracked changes; returns a pin reason, if any.

        ``found``: what the statement's text shows (pyproxy.sqltext), which can
        say what a "state changed" report with nothing else in it was.
        ``hidden``: the statement ran stored code that may change state the
        server does not name (pyproxy.routines), so no report is explained.
        """
        updates: dict[str, Any] = {}
        reason = None
        variables = self.state.variables
        for name, value in changes.variables:
            if name in CARRIED_VARIABLES:
                if name == "autocommit":
                    updates[name] = value.upper() in ("ON", "1")
                else:
                    updates[name] = value
            elif name in ignore:
                continue
            elif name in DATABASE_CHARSET_VARIABLES:
                # Reported with a schema change, it is the new schema's own.
                updates["database_charset"] = (name, value) if changes.schema is None else None
            elif name in UNCARRIED_VARIABLES:
                if name in TRACKING_VARIABLES:
                    self.own_tracking = self.own_tracking | {name}
                if reason is None:
                    reason = f"system variable {name} changed"
            else:
                variables = _with_variable(variables, name, value)
        if variables is not self.state.variables:
            updates["variables"] = variables
        if "character_set_connection" in updates and "collation_connection" not in updates:
            # SET NAMES reports the character sets but not the collation.
            match = _COLLATE.search(sql) if sql is not None else None
            updates["collation_connection"] = match.group(1).decode("ascii").lower() if match else None
        elif "collation_connection" in updates and "character_set_connection" not in updates:
            # SET collation_connection reports only itself, yet sets the
            # character set too: the collation's name begins with it.
            collation = updates["collation_connection"]
            if isinstance(collation, str) and "_" in collation:
                updates["character_set_connection"] = collation.split("_", 1)[0]
        if changes.schema is not None:
            updates["schema"] = changes.schema or None
            updates.setdefault("database_charset", None)
        if updates:
            self.state = attrs.evolve(self.state, **updates)
        if changes.transaction_characteristics is not None:
            # What the next (or the running) transaction will be, as SET
            # TRANSACTION statements; "" once a transaction has used them.
            self.pending_characteristics = bool(changes.transaction_characteristics)
        state = changes.transaction_state
        if reason is None and state is not None and state[7:8] == "L":
            reason = "LOCK TABLES used"
        if changes.state_changed and reason is None:
            if found is None and sql is not None:
                found = sqltext.scan(sql)
            flags = found.flags if found is not None else 0
            # A variable or schema change raises the flag too; anything else
            # that did (or might have, next to them) is named from the text.
            if not (changes.variables or changes.schema is not None) or flags & _HIDDEN or hidden:
                reason = next((what for flag, what in _STATE_HINTS if flags & flag), None)
                if reason is None:
                    reason = ("session state changed by stored code (user variable or temporary table)"
                              if hidden or flags & (sqltext.CALLS | sqltext.DYNAMIC) else
                              "session state changed (user variable, temporary table or prepared "
                              "statement) by code the statement text does not show")
        if reason is not None:
            self.pin(reason)
        return reason

    def read_back_changes(self) -> None:
        """A classic EOF said the session changed, not how: the variables the
        server tracks are read back after the reply (see ``reread``), through one
        that is always carried, so reading it adds nothing to carry."""
        if FLUSH_VARIABLE not in self.reread:
            self.reread = self.reread + (FLUSH_VARIABLE,)

    def observe_query(self, sql: bytes, failed: bool, found: sqltext.Found | None) -> str | None:
        """Reads what the server's reports leave out from the statement text
        (pyproxy.sqltext): named locks, HANDLER, XA, readers of the previous
        statement's results and unprovable statements pin the session;
        SQL_CALC_FOUND_ROWS holds the connection for the FOUND_ROWS() that
        follows; SET @@name and SET STATEMENT leave the names in ``reread``.
        ``found``: what sqltext.scan() gave for ``sql`` before it ran."""
        if found is None:
            return None
        if failed and not found.flags & sqltext.MULTI:
            # A failed statement took no lock and assigned nothing.  (Of several,
            # those before the one that failed ran.)
            return None
        names = found.reread
        if found.scoped and found.flags & sqltext.MULTI:
            # Other statements may have set the same variables for good: the
            # server says what they are now.
            names = names + tuple(name for name in found.scoped if name not in UNCARRIED_VARIABLES)
        if names:
            self.reread = self.reread + tuple(name for name in names if name not in self.reread)
        if found.flags & sqltext.HOLD_NEXT:
            self.hold_next = True
        if found.pin is not None:
            self.pin(found.pin)
        return found.pin

    def ends_session(self, sql: bytes) -> bool:
        """Whether a successful statement ended the server session: COMMIT RELEASE,
        or COMMIT/ROLLBACK with completion_type=RELEASE."""
        head = sql[:1]
        if head.isspace():
            head = sql.lstrip()[:1]
        if head not in (b"c", b"C", b"r", b"R"):
            return False  # the cheap answer for nearly every statement
        if _RELEASE.match(sql):
            return True
        variables = self.state.variables
        if not variables:
            return False
        completion = dict(variables).get("completion_type")
        return completion in ("RELEASE", "2") and re.match(rb"(?is)^\s*(?:commit|rollback)\b", sql) is not None

    def pin(self, reason: str) -> None:
        if self.pin_reason is None:
            self.pin_reason = reason
