"""pyproxy.wire.framing: the push-style packet framer and frame()."""

from __future__ import annotations

import pytest

import vectors
from pyproxy.wire.constants import MAX_PAYLOAD
from pyproxy.wire.framing import Packet, PacketFramer, PacketsOutOfOrder, PacketTooLarge, frame

# Every captured reply, back to back: many packets of many shapes in one stream.
STREAM = b"".join((
    vectors.GREETING, vectors.LOGIN_OK, vectors.TRACKING_OK, vectors.SELECT_EOF, vectors.SELECT_DEOF,
    vectors.PREPARE_EOF, vectors.EXECUTE_DEOF, vectors.MULTI_EOF, vectors.ERR_NO_TABLE,
    vectors.INFILE_REQUEST, vectors.FIELD_LIST_DEOF, vectors.STATISTICS,
))


def split_packets(stream: bytes) -> list[tuple[int, bytes]]:
    """A reference splitter (no continuation): (seq, payload) per packet header."""
    out = []
    pos = 0
    while pos < len(stream):
        length = int.from_bytes(stream[pos:pos + 3], "little")
        out.append((stream[pos + 3], stream[pos + 4:pos + 4 + length]))
        pos += 4 + length
    assert pos == len(stream)
    return out


def feed_in_pieces(framer: PacketFramer, data: bytes, cuts: list[int]) -> list[Packet]:
    packets = []
    last = 0
    for cut in cuts + [len(data)]:
        packets += framer.feed(data[last:cut])
        last = cut
    return packets


def test_whole_stream_in_one_read() -> None:
    """Fed at once, the captured stream yields every packet with its seq, payload and raw bytes."""
    packets = PacketFramer().feed(STREAM)
    assert [(p.seq, p.payload) for p in packets] == split_packets(STREAM)
    assert b"".join(p.raw for p in packets) == STREAM
    assert all(p.last_seq == p.seq for p in packets)


def test_split_at_every_position() -> None:
    """Cutting the stream in two at any byte gives exactly the same packets."""
    expected = PacketFramer().feed(STREAM)
    for cut in range(len(STREAM) + 1):
        framer = PacketFramer()
        assert feed_in_pieces(framer, STREAM, [cut]) == expected, cut
        assert framer.buffered() == 0


def test_one_byte_at_a_time() -> None:
    """The stream fed byte by byte gives the same packets, each once complete."""
    expected = PacketFramer().feed(STREAM)
    framer = PacketFramer()
    got = []
    for i in range(len(STREAM)):
        got += framer.feed(STREAM[i:i + 1])
    assert got == expected


def test_buffered_counts_partial_bytes() -> None:
    """buffered() reports the bytes held for an incomplete packet."""
    framer = PacketFramer()
    assert framer.feed(vectors.LOGIN_OK[:6]) == []
    assert framer.buffered() == 6
    assert len(framer.feed(vectors.LOGIN_OK[6:])) == 1
    assert framer.buffered() == 0


def test_empty_packet() -> None:
    """A zero-length packet (end of LOCAL INFILE data) is a packet."""
    assert PacketFramer().feed(b"\x00\x00\x00\x05") == [Packet(5, b"", b"\x00\x00\x00\x05", 5)]


def test_exactly_max_payload_needs_an_empty_packet() -> None:
    """A payload of exactly 0xFFFFFF bytes is followed by an empty packet, and joined with it."""
    payload = bytes(range(256)) * (MAX_PAYLOAD // 256) + bytes(range(MAX_PAYLOAD % 256))
    assert len(payload) == MAX_PAYLOAD
    wire = frame(payload, 3)
    assert len(wire) == 4 + MAX_PAYLOAD + 4
    assert wire[-4:] == b"\x00\x00\x00\x04"
    framer = PacketFramer()
    # The first part alone is not a packet yet.
    assert framer.feed(wire[:-4]) == []
    assert framer.buffered() == MAX_PAYLOAD
    [packet] = framer.feed(wire[-4:] + vectors.LOGIN_OK)[:1]
    assert packet.seq == 3
    assert packet.last_seq == 4
    assert packet.payload == payload
    assert packet.raw == wire
    assert framer.buffered() == 0


def test_payload_longer_than_max_payload() -> None:
    """0xFFFFFF + 10 bytes travel as two parts and come out as one packet."""
    payload = b"\xab" * (MAX_PAYLOAD + 10)
    wire = frame(payload, 0)
    assert wire[MAX_PAYLOAD + 4:MAX_PAYLOAD + 8] == b"\x0a\x00\x00\x01"
    for cuts in ([], [3], [MAX_PAYLOAD + 4], [MAX_PAYLOAD + 5], [MAX_PAYLOAD + 8], [10, MAX_PAYLOAD + 6]):
        packets = feed_in_pieces(PacketFramer(), wire + vectors.PING_OK, cuts)
        assert [(p.seq, p.last_seq, len(p.payload)) for p in packets] == [(0, 1, MAX_PAYLOAD + 10), (1, 1, 7)]
        assert packets[0].payload == payload
        assert packets[0].raw == wire


def test_continuation_sequence_wraps() -> None:
    """A continuation after seq 255 carries seq 0."""
    wire = frame(b"x" * (MAX_PAYLOAD + 1), 255)
    assert wire[MAX_PAYLOAD + 7] == 0
    [packet] = PacketFramer().feed(wire)
    assert (packet.seq, packet.last_seq) == (255, 0)


def test_size_cap_from_the_header() -> None:
    """A packet over the cap is refused as soon as its header arrives, before its payload."""
    framer = PacketFramer(max_packet_size=100)
    assert framer.feed(frame(b"a" * 100, 0))[0].payload == b"a" * 100
    with pytest.raises(PacketTooLarge):
        framer.feed((101).to_bytes(3, "little") + b"\x00")


def test_size_cap_counts_continuations() -> None:
    """The cap applies to the joined packet, not to each part."""
    wire = frame(b"z" * (MAX_PAYLOAD + 10), 0)
    framer = PacketFramer(max_packet_size=MAX_PAYLOAD + 5)
    with pytest.raises(PacketTooLarge):
        framer.feed(wire)
    assert len(PacketFramer(max_packet_size=MAX_PAYLOAD + 10).feed(wire)) == 1


def test_out_of_order_continuation() -> None:
    """A continuation whose seq does not follow the first part's is refused."""
    wire = bytearray(frame(b"q" * (MAX_PAYLOAD + 1), 7))
    wire[MAX_PAYLOAD + 7] = 9
    with pytest.raises(PacketsOutOfOrder):
        PacketFramer().feed(bytes(wire))


def test_frame_round_trip() -> None:
    """frame() then feed() gives back the payload and seq, for small and large payloads."""
    for size in (0, 1, 250, 65536, MAX_PAYLOAD - 1):
        payload = b"p" * size
        wire = frame(payload, 42)
        [packet] = PacketFramer().feed(wire)
        assert (packet.seq, packet.payload, packet.raw) == (42, payload, wire)
    assert frame(b"abc", 256 + 7)[3] == 7




def test_unread_packets_come_back_in_order() -> None:
    """Packets handed back with unread come out of the next feed first, then what follows,
    and the bytes of a packet not yet whole stay behind them."""
    framer = PacketFramer()
    packets = framer.feed(STREAM[:-3])
    taken = 3
    framer.unread(b"".join(packet.raw for packet in packets[taken:]))
    assert framer.buffered() == len(STREAM) - 3 - sum(len(packet.raw) for packet in packets[:taken])
    again = framer.feed(STREAM[-3:])
    assert [packet.raw for packet in packets[:taken] + again] == [raw for raw in (
        frame(payload, seq) for seq, payload in split_packets(STREAM))]


def test_unread_before_a_continued_packet() -> None:
    """Unread while a packet of several parts is half in: the parts already in go back to
    the buffer behind the unread bytes, and the whole packet comes out once it is whole."""
    big = frame(b"x" * (MAX_PAYLOAD + 10), 1)
    framer = PacketFramer()
    [first] = framer.feed(frame(b"\x03SELECT 1", 0) + big[:MAX_PAYLOAD + 4 + 5])
    framer.unread(first.raw)
    assert framer.buffered() == len(first.raw) + MAX_PAYLOAD + 4 + 5
    out = framer.feed(big[MAX_PAYLOAD + 4 + 5:])
    assert [packet.payload for packet in out] == [b"\x03SELECT 1", b"x" * (MAX_PAYLOAD + 10)]
    assert out[1].raw == big and (out[1].seq, out[1].last_seq) == (1, 2)
