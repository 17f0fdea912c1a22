"""pyproxy.wire.commands: reply shapes per command and the few fields pyproxy reads."""

from __future__ import annotations

import pytest

from pyproxy.wire.commands import (
    REPLIES,
    Reply,
    command_name,
    opens_cursor,
    make_init_db,
    make_query,
    make_set_option,
    statement_id,
)
from pyproxy.wire.constants import COM_RESET_CONNECTION, COMMAND, MYSQL_OPTION_MULTI_STATEMENTS_OFF


@pytest.mark.parametrize(("command", "reply"), [
    (COMMAND.COM_QUERY, Reply.RESULT),
    (COMMAND.COM_STMT_EXECUTE, Reply.EXECUTE),
    (COMMAND.COM_STMT_FETCH, Reply.FETCH),
    (COMMAND.COM_STMT_PREPARE, Reply.PREPARE),
    (COMMAND.COM_FIELD_LIST, Reply.FIELD_LIST),
    (COMMAND.COM_PING, Reply.SINGLE),
    (COMMAND.COM_INIT_DB, Reply.SINGLE),
    (COM_RESET_CONNECTION, Reply.SINGLE),
    (COMMAND.COM_STATISTICS, Reply.STATISTICS),
    (COMMAND.COM_STMT_CLOSE, Reply.NONE),
    (COMMAND.COM_STMT_SEND_LONG_DATA, Reply.NONE),
])
def test_reply_shapes(command: int, reply: Reply) -> None:
    """Each command the proxy forwards is mapped to the shape of its reply."""
    assert REPLIES[command] == reply


def test_quit_has_no_reply_shape() -> None:
    """COM_QUIT is handled by the frontend, never forwarded."""
    assert COMMAND.COM_QUIT not in REPLIES


def test_command_names() -> None:
    """Known commands are named as in the MySQL docs, unknown ones in hex."""
    assert command_name(COMMAND.COM_QUERY) == "COM_QUERY"
    assert command_name(COM_RESET_CONNECTION) == "COM_RESET_CONNECTION"
    assert command_name(0xEE) == "0xee"


def test_query_builders() -> None:
    """COM_QUERY, COM_INIT_DB and COM_SET_OPTION payloads."""
    assert make_query("SELECT 'é'") == b"\x03SELECT '\xc3\xa9'"
    assert make_query(b"DO 1") == b"\x03DO 1"
    assert make_init_db("app") == b"\x02app"
    assert make_set_option(MYSQL_OPTION_MULTI_STATEMENTS_OFF) == b"\x1b\x01\x00"


def test_statement_fields() -> None:
    """statement_id and opens_cursor read COM_STMT_EXECUTE's header."""
    payload = b"\x17\x07\x01\x00\x00\x01\x01\x00\x00\x00"
    assert statement_id(payload) == 263
    assert opens_cursor(payload)


def test_statement_id_of_truncated_packet() -> None:
    """A COM_STMT_CLOSE too short for its id raises ValueError, not IndexError."""
    with pytest.raises(ValueError):
        statement_id(b"\x19\x01")
