"""Reading and writing the protocol's primitive types."""

from __future__ import annotations

import struct
from typing import TypeAlias


class MalformedPacket(ValueError):
    """A payload ended early or held a value its type does not allow."""


#: A payload as received, or a reply being rewritten in place (ResponseTracker
#: moves sequence ids in a bytearray).  Spelled out because mypyc checks the
#: declared types at run time, and bytes alone refuses a bytearray.
BytesLike: TypeAlias = bytes | bytearray

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Reader:
    """A cursor over one packet payload.

    Every read checks bounds, so a truncated or hostile packet raises
    MalformedPacket instead of an IndexError deep in the proxy.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: BytesLike, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def _take(self, n: int) -> BytesLike:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise MalformedPacket(f"need {n} bytes at offset {self.pos}, have {len(self.data) - self.pos}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise MalformedPacket(f"need 1 byte at offset {self.pos}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        return _U16.unpack(self._take(2))[0]

    def u24(self) -> int:
        return int.from_bytes(self._take(3), "little")

    def u32(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def u64(self) -> int:
        return _U64.unpack(self._take(8))[0]

    def fixed(self, n: int) -> BytesLike:
        return self._take(n)

    def lenenc_int(self) -> int:
        first = self.u8()
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.u16()
        if first == 0xFD:
            return self.u24()
        if first == 0xFE:
            return self.u64()
        raise MalformedPacket(f"0x{first:02x} does not start a length-encoded integer")

    def lenenc_bytes(self) -> BytesLike:
        return self._take(self.lenenc_int())

    def nul_bytes(self) -> BytesLike:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise MalformedPacket(f"no NUL terminator after offset {self.pos}")
        chunk = self.data[self.pos:end]
        self.pos = end + 1
        return chunk

    def rest(self) -> BytesLike:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk


def lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value <= 0xFFFF:
        return b"\xfc" + _U16.pack(value)
    if value <= 0xFFFFFF:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + _U64.pack(value)


def lenenc_bytes(value: BytesLike) -> bytes:
    return lenenc_int(len(value)) + value


def u16(value: int) -> bytes:
    return _U16.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)
