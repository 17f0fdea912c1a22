"""pyproxy.wire.buffer: the Reader cursor and the primitive writers."""

from __future__ import annotations

import pytest

from pyproxy.wire.buffer import MalformedPacket, Reader, lenenc_bytes, lenenc_int, u16, u32


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"),
    (250, b"\xfa"),
    (251, b"\xfc\xfb\x00"),
    (0xFFFF, b"\xfc\xff\xff"),
    (0x10000, b"\xfd\x00\x00\x01"),
    (0xFFFFFF, b"\xfd\xff\xff\xff"),
    (0x1000000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
    (2**64 - 1, b"\xfe" + b"\xff" * 8),
])
def test_lenenc_int_round_trip(value: int, encoded: bytes) -> None:
    """Each length-encoded integer uses the shortest form, and reads back to itself."""
    assert lenenc_int(value) == encoded
    r = Reader(encoded)
    assert r.lenenc_int() == value
    assert r.remaining() == 0


@pytest.mark.parametrize("first", [b"\xfb", b"\xff"])
def test_lenenc_int_rejects_null_and_err_markers(first: bytes) -> None:
    """0xFB (NULL) and 0xFF (ERR) do not start a length-encoded integer."""
    with pytest.raises(MalformedPacket):
        Reader(first + b"\x00" * 8).lenenc_int()


def test_lenenc_bytes_round_trip() -> None:
    """A length-prefixed string reads back whole, whatever its length."""
    for size in (0, 1, 250, 251, 70000):
        data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        r = Reader(lenenc_bytes(data) + b"tail")
        assert r.lenenc_bytes() == data
        assert r.rest() == b"tail"


def test_fixed_integers_little_endian() -> None:
    """u8/u16/u24/u32/u64 read little-endian and advance the cursor."""
    r = Reader(bytes(range(1, 19)))
    assert r.u8() == 0x01
    assert r.u16() == 0x0302
    assert r.u24() == 0x060504
    assert r.u32() == 0x0A090807
    assert r.u64() == 0x1211100F0E0D0C0B
    assert r.remaining() == 0
    assert u16(0x0302) == b"\x02\x03"
    assert u32(0x0A090807) == b"\x07\x08\x09\x0a"


def test_nul_bytes_and_rest() -> None:
    """A NUL-terminated string stops at the NUL and skips it; rest takes what is left."""
    r = Reader(b"abc\x00def")
    assert r.nul_bytes() == b"abc"
    assert r.pos == 4
    assert r.rest() == b"def"
    assert r.remaining() == 0
    assert r.rest() == b""


@pytest.mark.parametrize("read", [
    lambda r: r.u8(), lambda r: r.u16(), lambda r: r.u24(), lambda r: r.u32(), lambda r: r.u64(),
    lambda r: r.fixed(1), lambda r: r.nul_bytes(), lambda r: r.lenenc_int(),
])
def test_reads_past_the_end_raise_malformed(read) -> None:  # type: ignore[no-untyped-def]
    """Every read on an exhausted cursor raises MalformedPacket, never IndexError."""
    with pytest.raises(MalformedPacket):
        read(Reader(b""))


def test_truncated_lenenc_string_raises() -> None:
    """A length prefix promising more bytes than the packet holds is malformed."""
    with pytest.raises(MalformedPacket):
        Reader(b"\x05abc").lenenc_bytes()
    with pytest.raises(MalformedPacket):
        Reader(b"\xfc\x01").lenenc_int()


def test_negative_fixed_length_raises() -> None:
    """A negative length (from a hostile length field) is refused, not sliced backwards."""
    with pytest.raises(MalformedPacket):
        Reader(b"abc", 2).fixed(-1)


def test_malformed_is_a_value_error() -> None:
    """Callers that catch ValueError also catch malformed packets."""
    assert issubclass(MalformedPacket, ValueError)


def test_reader_starts_at_offset() -> None:
    """A Reader can start past a command byte."""
    r = Reader(b"\x17\x01\x00\x00\x00", 1)
    assert r.u32() == 1
