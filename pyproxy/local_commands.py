"""The commands pyproxy answers itself, without a backend connection.

COM_QUIT closes; COM_PING is answered here unless the session is pinned
(then its own connection answers); COM_SET_OPTION's multi-statements flag
is carried with the session; COM_RESET_CONNECTION starts the session over;
COM_CHANGE_USER starts it over too and runs the login phase again
(pyproxy.login).  Replication, server administration and long-deprecated
commands are refused, as are unknown ones, with 1047.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from pyproxy.phases import CLOSED
from pyproxy.release import reset_and_give_back
from pyproxy.session import ClientSession, reset_state
from pyproxy.tls import close_client
from pyproxy.wire import constants as c
from pyproxy.wire.commands import REPLIES, command_name
from pyproxy.wire.constants import CLIENT, COM_RESET_CONNECTION, COMMAND
from pyproxy.wire.framing import Packet
from pyproxy.wire.handshake import parse_change_user
from pyproxy.wire.responses import make_eof

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase

# Commands pyproxy refuses: replication, server administration and
# long-deprecated ones that make no sense through a pooler.
REFUSED = frozenset((
    COMMAND.COM_SLEEP, COMMAND.COM_CREATE_DB, COMMAND.COM_DROP_DB, COMMAND.COM_SHUTDOWN,
    COMMAND.COM_PROCESS_INFO, COMMAND.COM_CONNECT, COMMAND.COM_PROCESS_KILL, COMMAND.COM_DEBUG,
    COMMAND.COM_TIME, COMMAND.COM_DELAYED_INSERT, COMMAND.COM_BINLOG_DUMP, COMMAND.COM_TABLE_DUMP,
    COMMAND.COM_CONNECT_OUT, COMMAND.COM_REGISTER_SLAVE, COMMAND.COM_DAEMON,
    COMMAND.COM_BINLOG_DUMP_GTID,
))
# The commands with a reply that are answered here all the same.
# Refused COM_CHANGE_USERs a connection may make; later ones get 1047 (MariaDB's rule).
MAX_CHANGE_USER_FAILURES = 3
ANSWERED_HERE = frozenset((COMMAND.COM_PING, COMMAND.COM_SET_OPTION, COM_RESET_CONNECTION,
                           COMMAND.COM_CHANGE_USER))


def answer(client: CommandPhase, packet: Packet, command: int) -> None:
    """A command that is not relayed as it is."""
    if command == COMMAND.COM_QUIT:
        connection = client.connection
        connection.closed_reason = "COM_QUIT"
        connection.phase = CLOSED
        close_client(client.transport)
    elif command == COMMAND.COM_PING:
        if client.backend is not None and client.pinned:
            client.busy = True
            client.acquire(client.start)
        else:
            client.reply(client.ok_payload())
    elif command == COMMAND.COM_SET_OPTION:
        _set_option(client, packet.payload)
    elif command == COM_RESET_CONNECTION:
        _reset_connection(client)
    elif command == COMMAND.COM_CHANGE_USER:
        _change_user(client, packet)
    elif command in REFUSED or command not in REPLIES:
        client.reply_error(c.ER_UNKNOWN_COM_ERROR, f"Unknown command {command_name(command)} "
                           "(not supported by pyproxy)")


def _set_option(client: CommandPhase, payload: bytes) -> None:
    if len(payload) < 3 or payload[1] not in (c.MYSQL_OPTION_MULTI_STATEMENTS_ON,
                                              c.MYSQL_OPTION_MULTI_STATEMENTS_OFF):
        client.reply_error(c.ER_UNKNOWN_COM_ERROR, "Unknown option to COM_SET_OPTION")
        return
    on = payload[1] == c.MYSQL_OPTION_MULTI_STATEMENTS_ON
    if on:
        client.capabilities |= CLIENT.MULTI_STATEMENTS
    else:
        client.capabilities &= ~CLIENT.MULTI_STATEMENTS
    session = client.session
    session.state = attrs.evolve(session.state, multi_statements=on)
    if client.capabilities & CLIENT.DEPRECATE_EOF:
        client.reply(client.ok_payload(0xFE))
    else:
        client.reply(make_eof(client.status()))


def _reset_connection(client: CommandPhase) -> None:
    """COM_RESET_CONNECTION: the session starts over (schema kept, as a server
    does); a backend held for this client is reset before anyone else gets it."""
    state = client.session.state
    client.session = ClientSession(reset_state(client.login_charset, state.schema,
                                                 client.proxy.server.autocommit, state.multi_statements))
    if client.statements is not None:
        client.statements.forget()  # the server closes them on reset
    client.lost_transaction = False
    # The server gives a reset session the plain wait_timeout, interactive or not.
    client.interactive = 0
    reset_and_give_back(client)
    client.pinned = False
    client.reply(client.ok_payload())


def _change_user(client: CommandPhase, packet: Packet) -> None:
    """COM_CHANGE_USER: what the session held goes, then the login phase runs again."""
    connection = client.connection
    if connection.change_user_failures >= MAX_CHANGE_USER_FAILURES:
        # As MariaDB answers (MDEV-3915): no more tries on this connection.
        client.reply_error(c.ER_UNKNOWN_COM_ERROR, "Unknown command")
        return
    try:
        request = parse_change_user(packet.payload, client.capabilities)
    except ValueError:
        client.fatal(c.ER_HANDSHAKE_ERROR, "Bad COM_CHANGE_USER packet", packet.last_seq + 1)
        return
    before = (client.user, client.session.state.schema)
    reset_and_give_back(client)
    client.pinned = False
    if client.statements is not None:
        client.statements.forget()
    client.lost_transaction = False
    client.command = None
    connection.log_in_again(request, packet.last_seq + 1, before)
