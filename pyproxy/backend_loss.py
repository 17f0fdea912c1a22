"""A client's backend connection died: what the client is told, and the lost-transaction policy.

pyproxy never runs a statement again by itself.  A connection lost during a
command gives its client error 2013 (1927 for libmariadb) at the right
sequence id, or closes the client when no ERR can follow (mid-packet, during
a LOCAL INFILE upload) or when the session's state died with it (a pinned
session).  A connection lost while it held an idle client's transaction or
open cursor is found by the client's next command, which gets the error;
the cursors die with their connection (their statements stay), so nothing
counts them any more and COM_STMT_CLOSE of their statements still works.

Inside a transaction the message says what became of it:

- rolled back, when the lost statement could not have committed (a SELECT,
  an INSERT... or nothing was running): from then on every statement but
  ROLLBACK gets error 9002 (SQLSTATE 40000), so that a COMMIT can never
  report the rest of a lost transaction as committed;
- unknown, when it was a COMMIT, DDL or CALL, which may have committed
  before the connection died;
- lost SET TRANSACTION characteristics, outside a transaction.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pyproxy.backend import BackendConnection, BackendError
from pyproxy.flow import run_queued
from pyproxy.wire import constants as c
from pyproxy.wire.constants import COM_RESET_CONNECTION, COMMAND
from pyproxy.wire.framing import frame

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase

# ROLLBACK [WORK] [AND [NO] CHAIN] [[NO] RELEASE], not ROLLBACK TO SAVEPOINT.
ROLLBACK = re.compile(rb"(?is)\s*rollback(?:\s+work)?(?!\s*to\b)(?:\s+and\s+(?:no\s+)?chain)?"
                      rb"(?:\s+(?:no\s+)?release)?\s*;?\s*$")
# Statements that never commit a transaction, explicitly or implicitly: when
# one dies with its connection, the server certainly rolled the transaction
# back.  (COMMIT, DDL, CALL and the rest may have committed before dying.)
_NEVER_COMMITS = re.compile(rb"(?is)(?:\s|/\*.*?\*/)*(?:select|insert|update|delete|replace|with|do|"
                            rb"values|table|savepoint|show|describe|desc|explain|handler|help)\b")
# Commands that change no data and so may run after a lost transaction.
HARMLESS = frozenset((COMMAND.COM_PING, COMMAND.COM_QUIT, COMMAND.COM_STMT_CLOSE, COMMAND.COM_STMT_RESET,
                      COMMAND.COM_STMT_PREPARE, COMMAND.COM_STMT_SEND_LONG_DATA, COMMAND.COM_SET_OPTION,
                      COMMAND.COM_STATISTICS, COMMAND.COM_CHANGE_USER, COM_RESET_CONNECTION))


def held_connection_lost(client: CommandPhase) -> bool:
    """The connection an idle client held died; its next command found it.  A
    pinned session is told and closed.  A transaction (or SET TRANSACTION's
    characteristics) is lost, and the command gets the error, unless it is the
    ROLLBACK that would have ended it anyway.  Returns True when the command
    was answered and must not run."""
    if client.pinned:
        # The connection this session was pinned to died while the
        # client was idle: its state is gone with it.
        client.fatal(c.CR_SERVER_LOST, "Lost connection to MySQL server: the backend "
                     "connection holding this session's state was closed")
        return True
    session = client.session
    statements = client.statements
    if statements is not None and statements.connection_lost():
        # The cursor died with the connection: the command is told, whatever it
        # is, as a server's connection would be.
        if not session.holds_state():
            client.command_failed(BackendError(
                *c.CR_SERVER_LOST, "Lost connection to MySQL server: the backend connection "
                "holding this session's open cursor was closed; the cursor is gone"))
            return True
    if session.holds_state():
        rollback = client.sql is not None and ROLLBACK.match(client.sql) is not None
        what = ("the transaction was rolled back" if session.in_transaction
                else "the transaction settings it held (SET TRANSACTION) were lost")
        if session.in_transaction and not rollback:
            transaction_lost(client)
        else:
            session.lose_transaction()
        if not rollback:
            # Never run on another connection as if nothing had happened.
            client.command_failed(BackendError(
                *c.CR_SERVER_LOST, "Lost connection to MySQL server: the backend connection "
                f"holding this session's transaction was closed; {what}"))
            return True
    session.hold_next = False
    return False


def lost_during_command(client: CommandPhase, conn: BackendConnection | None, error: BackendError) -> None:
    """``conn`` died while relaying the client's command (it is already dropped):
    the client gets the error after what it was sent of the reply, or is closed."""
    session = client.session
    client.log.warning("backend_lost_during_command", error=error.message, pinned=client.pinned,
                       in_transaction=session.in_transaction)
    tracker = conn.tracker if conn is not None else None
    mid_reply = client.forwarded and (tracker is None or tracker.mid_packet() or conn.has_partial_packet())
    if client.pinned or mid_reply or client.infile:
        # During LOCAL INFILE the client is still sending the file: its
        # next packets must never be taken for commands.  A pinned
        # session's state died with the connection: the client must not
        # carry on as if nothing happened.
        seq = tracker.seq + 1 if client.forwarded and tracker is not None else None
        client.fatal((error.code, error.sqlstate), error.message + "; session state was lost", seq)
        return
    if session.holds_state():
        sql = client.sql
        if sql is not None and ROLLBACK.match(sql):
            outcome = "the transaction was rolled back"
        elif session.in_transaction and sql is not None and _NEVER_COMMITS.match(sql):
            outcome = "the transaction was rolled back"
            transaction_lost(client)
        elif session.in_transaction:
            # COMMIT, DDL, CALL...: the server may have committed before
            # the connection died, as a direct client would be left to wonder.
            outcome = "whether the transaction was committed is unknown"
        else:
            outcome = "the transaction settings it held (SET TRANSACTION) were lost"
        session.lose_transaction()
        error = BackendError(error.code, error.sqlstate, f"{error.message}; {outcome}")
    seq = tracker.seq + 1 if client.forwarded and tracker is not None else None
    if seq is not None:
        packet = client.connection.error_packet(error.code, error.sqlstate, error.message)
        data = frame(packet, seq)
        client.stats.bytes_out += len(data)
        client.transport.write(data)
        client.command = None
    else:
        client.reply_error((error.code, error.sqlstate), error.message)
    client.busy = False
    client.infile = False
    client.sql = None
    run_queued(client)


def transaction_lost(client: CommandPhase) -> None:
    """The server rolled back the client's transaction as its connection died.

    The client is told and keeps its session; but until it says ROLLBACK
    nothing else runs, so a client that missed the error cannot COMMIT
    the rest of its transaction as if the lost part had been applied.
    """
    client.session.lose_transaction()
    client.lost_transaction = True
    client.log.info("transaction_lost")


def refused_after_loss(client: CommandPhase, payload: bytes) -> bool:
    """After a lost transaction: lets a ROLLBACK through (ending the refusal)
    and refuses anything else that could change data."""
    command = payload[0]
    if command == COMMAND.COM_QUERY:
        sql: bytes | None = payload[1:]
    elif command == COMMAND.COM_STMT_EXECUTE and client.statements is not None:
        sql = client.statements.sql_of(payload)
    else:
        sql = None
    if sql is not None and ROLLBACK.match(sql):
        client.lost_transaction = False
        return False
    client.reply_error(c.ER_PROXY_TRANSACTION_LOST,
                       "pyproxy: this session's transaction was rolled back when its backend "
                       "connection was lost; send ROLLBACK before anything else")
    return True
