"""Command-phase packets: which reply each command gets, and the few fields pyproxy reads."""

from __future__ import annotations

import enum

from pyproxy.wire.buffer import Reader
from pyproxy.wire.constants import COM_RESET_CONNECTION, COM_STMT_BULK_EXECUTE, COMMAND


class Reply(enum.IntEnum):
    """The shape of the server's reply to a command, which the ResponseTracker follows."""

    RESULT = 0        # COM_QUERY: OK, ERR, LOCAL INFILE request, or result sets
    EXECUTE = 1       # COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE: OK, ERR or binary result sets
    FETCH = 2         # COM_STMT_FETCH: rows, then a terminator
    PREPARE = 3       # COM_STMT_PREPARE: prepare-OK, parameter and column definitions
    FIELD_LIST = 4    # COM_FIELD_LIST: column definitions until EOF
    SINGLE = 5        # one OK, ERR or EOF packet
    STATISTICS = 6    # one packet of text
    NONE = 7          # no reply at all


REPLIES: dict[int, Reply] = {
    COMMAND.COM_QUERY: Reply.RESULT,
    COMMAND.COM_STMT_EXECUTE: Reply.EXECUTE,
    # MariaDB: an OK (or ERR) for all rows, or with RETURNING one binary result set.
    COM_STMT_BULK_EXECUTE: Reply.EXECUTE,
    COMMAND.COM_STMT_FETCH: Reply.FETCH,
    COMMAND.COM_STMT_PREPARE: Reply.PREPARE,
    COMMAND.COM_FIELD_LIST: Reply.FIELD_LIST,
    COMMAND.COM_INIT_DB: Reply.SINGLE,
    COMMAND.COM_PING: Reply.SINGLE,
    COMMAND.COM_STMT_RESET: Reply.SINGLE,
    COMMAND.COM_SET_OPTION: Reply.SINGLE,
    COMMAND.COM_REFRESH: Reply.SINGLE,
    COM_RESET_CONNECTION: Reply.SINGLE,
    COMMAND.COM_CHANGE_USER: Reply.SINGLE,
    COMMAND.COM_STATISTICS: Reply.STATISTICS,
    COMMAND.COM_STMT_CLOSE: Reply.NONE,
    COMMAND.COM_STMT_SEND_LONG_DATA: Reply.NONE,
}

COMMAND_NAMES: dict[int, str] = {
    value: name for name, value in vars(COMMAND).items() if name.startswith("COM_")
}
COMMAND_NAMES[COM_RESET_CONNECTION] = "COM_RESET_CONNECTION"
COMMAND_NAMES[COM_STMT_BULK_EXECUTE] = "COM_STMT_BULK_EXECUTE"


def command_name(code: int) -> str:
    return COMMAND_NAMES.get(code, f"0x{code:02x}")


def statement_id(payload: bytes) -> int:
    """The statement id of any COM_STMT_* command other than PREPARE."""
    return Reader(payload, 1).u32()


def opens_cursor(payload: bytes) -> bool:
    """Whether a COM_STMT_EXECUTE asks for a cursor (flags byte, cursor type bits)."""
    return len(payload) > 5 and bool(payload[5] & 0x07)


def make_query(sql: str | bytes) -> bytes:
    return b"\x03" + (sql.encode("utf-8") if isinstance(sql, str) else sql)


def make_init_db(schema: str) -> bytes:
    return b"\x02" + schema.encode("utf-8")


def make_set_option(option: int) -> bytes:
    return b"\x1b" + option.to_bytes(2, "little")
