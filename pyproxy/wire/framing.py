"""Packet framing: 3-byte length + 1-byte sequence id, with 16 MiB continuation."""

from __future__ import annotations

import attrs

from pyproxy.wire.constants import MAX_PAYLOAD


class PacketTooLarge(ValueError):
    """A logical packet grew past the configured cap; ``seq`` is the offending packet's."""

    def __init__(self, size: int, seq: int) -> None:
        super().__init__(f"packet of {size} bytes")
        self.size = size
        self.seq = seq


class PacketsOutOfOrder(ValueError):
    """A continuation packet carried the wrong sequence id ``seq``."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"sequence id {seq} out of order")
        self.seq = seq


@attrs.frozen(slots=True)
class Packet:
    """One logical packet: its payload (continuations joined) and its exact wire bytes.

    ``raw`` is kept so that a packet can be forwarded as received, without
    being framed again; ``last_seq`` is the sequence id of its final part.
    """

    seq: int
    payload: bytes
    raw: bytes
    last_seq: int


class PacketFramer:
    """Turns a byte stream into logical packets, joining 0xFFFFFF-byte parts.

    Push-style so it can be fed from ``dataReceived`` and tested at every
    split point; it owns no transport.
    """

    __slots__ = ("max_packet_size", "_buf", "_parts", "_raw_parts", "_parts_len", "_first_seq",
                 "_last_seq")

    def __init__(self, max_packet_size: int = 1 << 30) -> None:
        self.max_packet_size = max_packet_size
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._raw_parts: list[bytes] = []
        self._parts_len = 0
        self._first_seq = 0
        self._last_seq = 0

    def feed(self, data: bytes) -> list[Packet]:
        """Adds received bytes; returns every logical packet now complete.

        Raises:
            PacketTooLarge: the packet being assembled exceeds max_packet_size.
            PacketsOutOfOrder: a continuation packet's sequence id is wrong.
        """
        buf: bytes | bytearray
        if self._buf:
            # Only a packet split across reads lands here; bytearray keeps
            # the accumulation linear for multi-megabyte packets.
            self._buf += data
            buf = self._buf
        else:
            buf = data
        pos = 0
        size = len(buf)
        out: list[Packet] = []
        while size - pos >= 4:
            length = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            seq = buf[pos + 3]
            if self._parts_len + length > self.max_packet_size:
                raise PacketTooLarge(self._parts_len + length, seq)
            end = pos + 4 + length
            if end > size:
                break
            if self._raw_parts:
                if seq != (self._last_seq + 1) & 0xFF:
                    raise PacketsOutOfOrder(seq)
            else:
                self._first_seq = seq
            self._last_seq = seq
            if length == MAX_PAYLOAD or self._raw_parts:
                raw_part = bytes(buf[pos:end])
                self._parts.append(raw_part[4:])
                self._raw_parts.append(raw_part)
                self._parts_len += length
                if length < MAX_PAYLOAD:
                    out.append(Packet(self._first_seq, b"".join(self._parts),
                                      b"".join(self._raw_parts), seq))
                    self._parts.clear()
                    self._raw_parts.clear()
                    self._parts_len = 0
            else:
                raw = buf if pos == 0 and end == size and type(buf) is bytes else bytes(buf[pos:end])
                out.append(Packet(seq, raw[4:], raw, seq))
            pos = end
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < size:
            self._buf = bytearray(buf[pos:])
        return out

    def take_buffer(self) -> bytes:
        """Hands back the bytes held for a packet not yet complete, and forgets
        them (the stream switches to TLS after an SSLRequest)."""
        held = bytes(self._buf)
        self._buf = bytearray()
        return held

    def unread(self, data: bytes) -> None:
        """Puts back the wire bytes of packets :meth:`feed` returned and the reader
        did not take: the next feed returns them again, in order, before anything
        that follows (a reader that stops taking packets part-way through a read
        keeps them as bytes rather than as packets)."""
        self._buf = bytearray(data) + b"".join(self._raw_parts) + self._buf
        self._parts.clear()
        self._raw_parts.clear()
        self._parts_len = 0

    def buffered(self) -> int:
        """Bytes held for a packet not yet complete."""
        return len(self._buf) + self._parts_len


def frame(payload: bytes, seq: int) -> bytes:
    """Frames a payload as one or more packets starting at sequence id ``seq``."""
    length = len(payload)
    if length < MAX_PAYLOAD:
        return length.to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload
    parts = []
    pos = 0
    while True:
        chunk = payload[pos:pos + MAX_PAYLOAD]
        parts.append(len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,)) + chunk)
        seq += 1
        pos += MAX_PAYLOAD
        if len(chunk) < MAX_PAYLOAD:
            return b"".join(parts)

