"""Building a text-protocol result set: column definitions, rows, terminators.

pyproxy relays the server's result sets untouched; the only ones it makes
itself are its admin console's answers (pyproxy.admin), small tables read off
its own state.  They must still be real result sets, typed column by column,
so that every driver decodes them as it would a server's: an integer column
as LONGLONG comes back to PyMySQL as an int, a string as VAR_STRING as text.
The layout depends on one capability, CLIENT_DEPRECATE_EOF: without it an EOF
follows the definitions and another ends the rows; with it there is no EOF
after the definitions and an OK with header 0xFE ends the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from pyproxy.wire.buffer import lenenc_bytes, lenenc_int, u16, u32
from pyproxy.wire.responses import make_eof, make_ok

# Column types (include/mysql_com.h enum_field_types) the admin console uses.
TYPE_DOUBLE = 0x05
TYPE_LONGLONG = 0x08
TYPE_VAR_STRING = 0xFD

# Column flags.
NOT_NULL_FLAG = 0x0001
UNSIGNED_FLAG = 0x0020
BINARY_FLAG = 0x0080
NUM_FLAG = 0x8000

# Character sets of column definitions: utf8mb4_general_ci for text, binary
# for numbers (as servers send them).
CHARSET_UTF8MB4 = 45
CHARSET_BINARY = 63

# Decimals of a floating-point column whose values are printed as they come.
NOT_FIXED_DEC = 31

NULL = b"\xfb"


@attrs.frozen(slots=True)
class Column:
    """One column definition (Protocol::ColumnDefinition41)."""

    name: str
    type: int
    charset: int
    length: int
    flags: int = 0
    decimals: int = 0
    schema: str = ""
    table: str = ""
    org_table: str = ""
    org_name: str = ""


def text_column(name: str, length: int = 256) -> Column:
    """A string column (VAR_STRING, utf8mb4); ``length`` in characters."""
    return Column(name, TYPE_VAR_STRING, CHARSET_UTF8MB4, length * 4)


def int_column(name: str, *, nullable: bool = False) -> Column:
    """An integer column (LONGLONG)."""
    return Column(name, TYPE_LONGLONG, CHARSET_BINARY, 20,
                  BINARY_FLAG | NUM_FLAG | (0 if nullable else NOT_NULL_FLAG))


def float_column(name: str) -> Column:
    """A floating-point column (DOUBLE), NULL allowed."""
    return Column(name, TYPE_DOUBLE, CHARSET_BINARY, 22, BINARY_FLAG | NUM_FLAG, NOT_FIXED_DEC)


def make_column_definition(column: Column) -> bytes:
    """Protocol::ColumnDefinition41: catalog "def", the names, then the fixed part
    (its length 0x0c, character set, length, type, flags, decimals, filler)."""
    return b"".join((
        lenenc_bytes(b"def"), lenenc_bytes(column.schema.encode()), lenenc_bytes(column.table.encode()),
        lenenc_bytes(column.org_table.encode()), lenenc_bytes(column.name.encode()),
        lenenc_bytes(column.org_name.encode()), b"\x0c", u16(column.charset), u32(column.length),
        bytes((column.type,)), u16(column.flags), bytes((column.decimals,)), b"\x00\x00"))


Value = str | bytes | int | float | bool | None


def text_value(value: Value) -> bytes:
    """One value of a text-protocol row: NULL, or its text, length-encoded.

    A bool is 1 or 0 and a float is printed with repr's shortest digits."""
    if value is None:
        return NULL
    if isinstance(value, bytes):
        return lenenc_bytes(value)
    if isinstance(value, bool):
        return b"\x011" if value else b"\x010"
    if isinstance(value, (int, float)):
        return lenenc_bytes(repr(value).encode())
    return lenenc_bytes(value.encode("utf-8"))


def make_text_row(values: Iterable[Value]) -> bytes:
    return b"".join(text_value(value) for value in values)


def make_result_set(columns: Sequence[Column], rows: Iterable[Sequence[Value]], status: int,
                    deprecate_eof: bool, warnings: int = 0) -> list[bytes]:
    """The payloads of a whole result set, in order: column count, definitions,
    (EOF,) rows, then the EOF or the 0xFE OK that ends it with ``status``.

    Raises:
        ValueError: a row does not have one value per column.
    """
    out = [lenenc_int(len(columns))]
    out.extend(make_column_definition(column) for column in columns)
    if not deprecate_eof:
        out.append(make_eof(status, warnings))
    width = len(columns)
    for row in rows:
        if len(row) != width:
            raise ValueError(f"a row of {len(row)} values for {width} columns")
        out.append(make_text_row(row))
    out.append(make_ok(status, warnings=warnings, header=0xFE) if deprecate_eof else make_eof(status, warnings))
    return out
