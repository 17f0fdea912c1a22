"""pyproxy.wire under hostile and random input: properties checked by hypothesis.

Whatever bytes arrive, a parser either answers or raises ValueError (MalformedPacket is one),
the ResponseTracker raises nothing but ProtocolViolation, framing gives the same packets
however the stream is cut, and what the builders make the parsers read back unchanged.
fuzz/fuzz_codec.py drives the same entry points under a coverage-guided fuzzer.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pyproxy.wire.buffer import Reader, lenenc_int
from pyproxy.wire.commands import Reply
from pyproxy.wire.constants import CLIENT, SERVER_SESSION_STATE_CHANGED
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.handshake import (
    HandshakeResponse41,
    HandshakeV10,
    make_change_user,
    make_handshake_response41,
    make_handshake_v10,
    parse_auth_switch_request,
    parse_change_user,
    parse_handshake_response41,
    parse_handshake_v10,
)
from pyproxy.wire.response_tracker import DONE, INFILE, ProtocolViolation, ResponseTracker
from pyproxy.wire.responses import (
    eof_status,
    filter_session_track,
    make_eof,
    make_err,
    make_ok,
    make_ok_tracked,
    ok_counters,
    ok_status,
    parse_err,
    parse_ok,
    parse_session_changes,
    strip_session_track,
)

# Enough cases to find something, few enough for the unit tests' time; no example
# database written into the checkout (fuzz/fuzz_codec.py is the long search).
PROPERTIES = settings(max_examples=100, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])

u16s = st.integers(0, 0xFFFF)
u32s = st.integers(0, 0xFFFFFFFF)
u64s = st.integers(0, 2**64 - 1)
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@PROPERTIES
@given(payloads=st.lists(st.binary(max_size=300), max_size=8), first_seq=st.integers(0, 255),
       cuts=st.lists(st.integers(0, 3000), max_size=12))
def test_framing_gives_the_same_packets_however_the_stream_is_cut(
        payloads: list[bytes], first_seq: int, cuts: list[int]) -> None:
    """Framed packets, fed in pieces cut anywhere, come out as they went in, raw bytes included,
    with nothing left over."""
    stream = b"".join(frame(payload, (first_seq + i) & 0xFF) for i, payload in enumerate(payloads))
    framer = PacketFramer()
    out = []
    last = 0
    for cut in sorted({min(cut, len(stream)) for cut in cuts}) + [len(stream)]:
        out.extend(framer.feed(stream[last:cut]))
        last = cut
    assert [packet.payload for packet in out] == payloads
    assert [packet.seq for packet in out] == [(first_seq + i) & 0xFF for i in range(len(payloads))]
    assert b"".join(packet.raw for packet in out) == stream
    assert framer.buffered() == 0


@PROPERTIES
@given(data=st.binary(max_size=600), step=st.integers(1, 64), cap=st.integers(1, 1 << 20))
def test_framing_arbitrary_bytes(data: bytes, step: int, cap: int) -> None:
    """Arbitrary bytes: packets or ValueError (too large, out of order), never anything else, and
    never more buffered than was fed."""
    framer = PacketFramer(max_packet_size=cap)
    try:
        for pos in range(0, len(data), step):
            for packet in framer.feed(data[pos:pos + step]):
                assert len(packet.payload) <= cap
    except ValueError:
        return
    assert framer.buffered() <= len(data)


@PROPERTIES
@given(status=u16s, affected=u64s, insert_id=u64s, warnings=u16s, info=st.binary(max_size=300),
       header=st.sampled_from([0x00, 0xFE]))
def test_ok_round_trips(status: int, affected: int, insert_id: int, warnings: int, info: bytes,
                        header: int) -> None:
    """make_ok / make_ok_tracked, then parse_ok and the quick readers, give back what went in
    (but SERVER_SESSION_STATE_CHANGED, which an OK without a state block must not carry)."""
    plain = status & ~SERVER_SESSION_STATE_CHANGED
    for payload, tracked in ((make_ok(status, affected_rows=affected, last_insert_id=insert_id,
                                      warnings=warnings, info=info, header=header), False),
                             (make_ok_tracked(status, affected_rows=affected, last_insert_id=insert_id,
                                              warnings=warnings, info=info, header=header), True)):
        ok = parse_ok(payload, tracked)
        assert (ok.affected_rows, ok.last_insert_id, ok.status, ok.warnings, ok.info) == (
            affected, insert_id, plain, warnings, info)
        assert ok.changes is None
        assert ok_counters(payload) == (affected, insert_id, plain, warnings)
        assert ok_status(payload) == plain
        assert payload[0] == header


@PROPERTIES
@given(code=u16s, sqlstate=st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=5, max_size=5),
       message=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_err_round_trips(code: int, sqlstate: str, message: str) -> None:
    """make_err then parse_err gives the code, SQLSTATE and message back."""
    err = parse_err(make_err(code, sqlstate, message))
    assert (err.code, err.sqlstate, err.message) == (code, sqlstate, message)


@PROPERTIES
@given(status=u16s, warnings=u16s)
def test_eof_round_trips(status: int, warnings: int) -> None:
    """make_eof's status reads back with eof_status (state-changed cleared)."""
    payload = make_eof(status, warnings)
    assert len(payload) == 5 and payload[0] == 0xFE
    assert eof_status(payload) == status & ~SERVER_SESSION_STATE_CHANGED


@PROPERTIES
@given(version=names, connection=u32s, nonce=st.binary(min_size=20, max_size=20).filter(lambda b: b"\x00" not in b),
       caps=u32s, charset=st.integers(0, 255), status=u16s, plugin=names)
def test_handshake_v10_round_trips(version: str, connection: int, nonce: bytes, caps: int,
                                   charset: int, status: int, plugin: str) -> None:
    """A greeting pyproxy makes parses back to itself (for capabilities with secure connection
    and plugin auth, which every server since 5.5 announces)."""
    caps |= CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
    greeting = HandshakeV10(version, connection, nonce, caps, charset, status, plugin)
    assert parse_handshake_v10(make_handshake_v10(greeting)) == greeting


@PROPERTIES
@given(caps=u32s, max_packet=u32s, charset=st.integers(0, 255), user=names,
       auth_response=st.binary(max_size=255), database=names, plugin=names,
       attributes=st.dictionaries(names, names, max_size=4))
def test_handshake_response_round_trips(caps: int, max_packet: int, charset: int, user: str,
                                        auth_response: bytes, database: str, plugin: str,
                                        attributes: dict[str, str]) -> None:
    """A login packet made from any values parses back to them."""
    caps |= CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION
    if not caps & CLIENT.CONNECT_WITH_DB:
        database = ""
    if not caps & CLIENT.PLUGIN_AUTH:
        plugin = ""
    if not caps & CLIENT.CONNECT_ATTRS:
        attributes = {}
    response = HandshakeResponse41(caps, max_packet, charset, user, auth_response,
                                   database or None, plugin, attributes)
    assert parse_handshake_response41(make_handshake_response41(response)) == response


def only_value_errors(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except ValueError:
        pass


@PROPERTIES
@given(payload=st.binary(max_size=400), caps=u32s)
@example(payload=b"\x0a5.5\x00" + bytes(4) + b"12345678\x00\xff\xf7\x21\x02\x00\xff\x81\x15" + bytes(10),
         caps=0)
def test_connection_phase_parsers_raise_only_value_error(payload: bytes, caps: int) -> None:
    """Greeting, login, COM_CHANGE_USER and auth-switch parsers on arbitrary bytes answer or raise
    ValueError (MalformedPacket, a bad UTF-8 plugin name...), nothing else."""
    only_value_errors(parse_handshake_v10, payload)
    only_value_errors(parse_handshake_v10, b"\x0a" + payload)
    only_value_errors(parse_handshake_response41, payload)
    only_value_errors(parse_handshake_response41, (caps | CLIENT.PROTOCOL_41).to_bytes(4, "little") + payload)
    only_value_errors(parse_change_user, payload, caps)
    only_value_errors(parse_auth_switch_request, payload)


@PROPERTIES
@given(payload=st.binary(max_size=400), variables=st.none() | st.frozensets(names, max_size=3),
       kinds=st.frozensets(st.integers(0, 8), max_size=4))
def test_response_parsers_raise_only_value_error(payload: bytes, variables: frozenset[str] | None,
                                                 kinds: frozenset[int]) -> None:
    """OK, ERR, EOF and the session-state block on arbitrary bytes: an answer or ValueError."""
    for body in (payload, b"\x00" + payload, b"\xfe" + payload, b"\xff" + payload):
        only_value_errors(parse_ok, body, True)
        only_value_errors(parse_ok, body, False)
        only_value_errors(parse_err, body)
        only_value_errors(eof_status, body)
        only_value_errors(ok_status, body)
        only_value_errors(ok_counters, body)
        only_value_errors(strip_session_track, body)
        only_value_errors(filter_session_track, body, variables, kinds)
    only_value_errors(parse_session_changes, payload)


@PROPERTIES
@given(value=u64s)
def test_lenenc_int_round_trips(value: int) -> None:
    """Every length-encoded integer reads back, whatever its size class."""
    reader = Reader(lenenc_int(value) + b"rest")
    assert reader.lenenc_int() == value and reader.rest() == b"rest"


@PROPERTIES
@given(username=names, auth_response=st.binary(max_size=255), database=names, charset=u16s,
       plugin=names, attributes=st.dictionaries(names, names, max_size=3))
def test_change_user_round_trips(username: str, auth_response: bytes, database: str, charset: int,
                                 plugin: str, attributes: dict[str, str]) -> None:
    """COM_CHANGE_USER made by pyproxy parses back, for a client with every capability it reads."""
    caps = CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_ATTRS
    change = parse_change_user(make_change_user(username, auth_response, database, charset, plugin,
                                                attributes), caps)
    assert (change.username, change.auth_response, change.database or "", change.charset,
            change.auth_plugin, change.attributes) == (username, auth_response, database, charset,
                                                       plugin, attributes)


def feed_tracker(tracker: ResponseTracker, data: bytes, step: int) -> None:
    """Feeds bytes as BackendConnection._relay_data does: what scan() leaves is offered again
    with the next read; a LOCAL INFILE request is answered at once."""
    carry = b""
    for pos in range(0, len(data), step):
        buf: Any = carry + data[pos:pos + step]
        if tracker.translate:
            tracker.edits.clear()
            buf = bytearray(buf)
        end = tracker.scan(buf)
        assert 0 <= end <= len(buf)
        carry = bytes(buf[end:])
        if tracker.state == INFILE:
            tracker.infile_sent()
        if tracker.state == DONE:
            return


@PROPERTIES
@given(data=st.binary(max_size=800), reply=st.sampled_from(list(Reply)), deprecate_eof=st.booleans(),
       translate=st.booleans(), cursor=st.booleans(), step=st.integers(1, 128))
def test_response_tracker_raises_only_protocol_violation(data: bytes, reply: Reply, deprecate_eof: bool,
                                                         translate: bool, cursor: bool, step: int) -> None:
    """Any bytes from a server, for any command's reply, in any pieces: the tracker follows them
    or raises ProtocolViolation, which pyproxy turns into a lost connection."""
    tracker = ResponseTracker(deprecate_eof)
    tracker.start(reply, translate=translate, cursor=cursor)
    try:
        feed_tracker(tracker, data, step)
    except ProtocolViolation:
        pass
