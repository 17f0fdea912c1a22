"""pyproxy.wire.resultset: result sets built by pyproxy, checked against a server's own bytes."""

from __future__ import annotations

import pymysql
import pytest

import vectors
from pyproxy.wire.constants import SERVER_STATUS_AUTOCOMMIT
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.resultset import (
    BINARY_FLAG,
    CHARSET_BINARY,
    NOT_NULL_FLAG,
    NUM_FLAG,
    TYPE_LONGLONG,
    TYPE_VAR_STRING,
    Column,
    float_column,
    int_column,
    make_column_definition,
    make_result_set,
    make_text_row,
    text_column,
    text_value,
)

# MariaDB's own definitions of app.t's columns (id INT PRIMARY KEY, name VARCHAR(20)).
ID = Column("id", 0x03, CHARSET_BINARY, 11, 0x5003, 0, "app", "t", "t", "id")
NAME = Column("name", TYPE_VAR_STRING, 8, 20, 0, 0, "app", "t", "t", "name")



def stream(payloads: list[bytes], first_seq: int = 1) -> bytes:
    return b"".join(frame(payload, first_seq + index) for index, payload in enumerate(payloads))


def test_classic_result_set_is_the_servers() -> None:
    """Without DEPRECATE_EOF: count, definitions, EOF, rows, EOF, byte for byte as MariaDB sent them."""
    payloads = make_result_set([ID, NAME], [(1, "one"), (2, "two")], 0x22, deprecate_eof=False)
    assert stream(payloads) == vectors.SELECT_EOF


def test_deprecate_eof_result_set_is_the_servers() -> None:
    """With DEPRECATE_EOF: no EOF after the definitions, an OK with header 0xFE at the end."""
    payloads = make_result_set([ID, NAME], [(1, "one"), (2, "two")], 0x22, deprecate_eof=True)
    assert stream(payloads) == vectors.SELECT_DEOF


def test_empty_result_set() -> None:
    """No rows: the count, the definition and the terminators only."""
    classic = make_result_set([int_column("n")], [], 2, deprecate_eof=False)
    assert classic[0] == b"\x01" and classic[2] == classic[3] == b"\xfe\x00\x00\x02\x00"
    assert make_result_set([int_column("n")], [], 2, deprecate_eof=True)[2] == b"\xfe\x00\x00\x02\x00\x00\x00"


def test_column_builders() -> None:
    """The typed helpers: LONGLONG in binary with NUM and NOT NULL, VAR_STRING in utf8mb4."""
    assert make_column_definition(int_column("n")) == (
        b"\x03def\x00\x00\x00\x01n\x00\x0c\x3f\x00\x14\x00\x00\x00\x08"
        + (BINARY_FLAG | NUM_FLAG | NOT_NULL_FLAG).to_bytes(2, "little") + b"\x00\x00\x00")
    assert make_column_definition(text_column("s", 10)) == (
        b"\x03def\x00\x00\x00\x01s\x00\x0c\x2d\x00\x28\x00\x00\x00\xfd\x00\x00\x00\x00\x00")
    assert make_column_definition(float_column("f"))[-6:] == b"\x05\x80\x80\x1f\x00\x00"
    assert int_column("n", nullable=True).flags & NOT_NULL_FLAG == 0
    assert int_column("n").type == TYPE_LONGLONG


def test_text_values() -> None:
    """NULL is 0xFB; numbers, booleans and text are length-encoded text; a long one takes 0xFC."""
    assert text_value(None) == b"\xfb"
    assert text_value(True) == b"\x011" and text_value(False) == b"\x010"
    assert text_value(-12) == b"\x03-12"
    assert text_value(0.5) == b"\x030.5"
    assert text_value("é") == b"\x02\xc3\xa9"
    assert text_value(b"x" * 300)[:3] == b"\xfc\x2c\x01"
    assert make_text_row([1, None, "a"]) == b"\x011\xfb\x01a"


def test_row_width_is_checked() -> None:
    """A row with the wrong number of values is pyproxy's bug, raised rather than sent."""
    with pytest.raises(ValueError):
        make_result_set([int_column("n")], [(1, 2)], 2, deprecate_eof=True)


def test_pymysql_decodes_the_types() -> None:
    """PyMySQL's own result reader, over these bytes, gives ints, floats, text and NULL."""
    payloads = make_result_set([int_column("n"), text_column("s"), float_column("f")],
                               [(7, "seven", 0.25), (8, None, None)], 2, deprecate_eof=False)
    packets = [p.payload for p in PacketFramer().feed(stream(payloads))]
    fields = [pymysql.protocol.FieldDescriptorPacket(payload, "utf8") for payload in packets[1:4]]
    assert [f.type_code for f in fields] == [TYPE_LONGLONG, TYPE_VAR_STRING, 0x05]
    assert [f.name for f in fields] == ["n", "s", "f"]
    decoders = [pymysql.converters.decoders.get(f.type_code) for f in fields]
    rows = []
    for payload in packets[5:7]:
        packet = pymysql.protocol.MysqlPacket(payload, "utf8")
        values = [packet.read_length_coded_string() for _ in fields]
        rows.append(tuple(None if value is None else (decode(value.decode()) if decode else value.decode())
                          for value, decode in zip(values, decoders)))
    assert rows == [(7, "seven", 0.25), (8, None, None)]
