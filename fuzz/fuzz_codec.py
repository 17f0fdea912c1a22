"""Coverage-guided fuzzing of pyproxy's packet codec (pyproxy.wire) with atheris.

Each input picks one entry point with its first byte and feeds it the rest:
framing (cut into pieces, with a size cap), the connection-phase parsers
(greeting, login, COM_CHANGE_USER, auth switch), the response parsers (OK,
ERR, EOF, session-state block) and the ResponseTracker over any reply kind.
The contract checked is the one pyproxy relies on: parsers answer or raise
ValueError, the tracker raises only ProtocolViolation.  Anything else is a
crash, and libFuzzer writes the input that made it.

    python3 fuzz/fuzz_codec.py -max_total_time=600 fuzz/corpus   # as long as you like
    python3 fuzz/fuzz_codec.py -runs=100000                      # a number of inputs
    python3 fuzz/fuzz_codec.py crash-<hash>                      # replay one input

``--seed-corpus DIR`` writes a few valid packets of each kind into DIR first.
integration/test_fuzz_codec.py runs it for a bounded time in CI.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from fuzz.cli import run  # noqa: E402

with atheris.instrument_imports(include=["pyproxy.wire"]):
    from pyproxy.wire.commands import Reply
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
        ok_counters,
        ok_status,
        parse_err,
        parse_ok,
        parse_session_changes,
        strip_session_track,
    )

REPLIES = list(Reply)


def _framing(fdp: atheris.FuzzedDataProvider) -> None:
    cap = fdp.ConsumeIntInRange(1, 1 << 24)
    step = fdp.ConsumeIntInRange(1, 64)
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    framer = PacketFramer(max_packet_size=cap)
    try:
        for pos in range(0, len(data), step):
            for packet in framer.feed(data[pos:pos + step]):
                assert len(packet.payload) <= cap
    except ValueError:
        pass


def _connection(fdp: atheris.FuzzedDataProvider) -> None:
    caps = fdp.ConsumeInt(4) & 0xFFFFFFFF
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    for call, args in ((parse_handshake_v10, (payload,)), (parse_handshake_response41, (payload,)),
                       (parse_change_user, (payload, caps)), (parse_auth_switch_request, (payload,))):
        try:
            call(*args)
        except ValueError:
            pass


def _responses(fdp: atheris.FuzzedDataProvider) -> None:
    tracked = fdp.ConsumeBool()
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    for call, args in ((parse_ok, (payload, tracked)), (parse_err, (payload,)), (eof_status, (payload,)),
                       (ok_status, (payload,)), (ok_counters, (payload,)), (strip_session_track, (payload,)),
                       (filter_session_track, (payload, None, frozenset({1, 2, 5}))),
                       (filter_session_track, (payload, frozenset({"autocommit"}), frozenset())),
                       (parse_session_changes, (payload,))):
        try:
            call(*args)
        except ValueError:
            pass


def _tracker(fdp: atheris.FuzzedDataProvider) -> None:
    reply = REPLIES[fdp.ConsumeIntInRange(0, len(REPLIES) - 1)]
    tracker = ResponseTracker(fdp.ConsumeBool())
    tracker.start(reply, translate=fdp.ConsumeBool(), cursor=fdp.ConsumeBool(),
                  metadata_status=fdp.ConsumeInt(2) & 0xFFFF)
    step = fdp.ConsumeIntInRange(1, 256)
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    carry = b""
    try:
        for pos in range(0, len(data), step):
            buf = carry + data[pos:pos + step]
            if tracker.translate:
                tracker.edits.clear()
                buf = bytearray(buf)
            end = tracker.scan(buf)
            assert 0 <= end <= len(buf), (end, len(buf))
            carry = bytes(buf[end:])
            if tracker.state == INFILE:
                tracker.infile_sent()
            if tracker.state == DONE:
                break
    except ProtocolViolation:
        pass


TARGETS = (_framing, _connection, _responses, _tracker)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)](fdp)


def seeds() -> dict[str, bytes]:
    """Valid packets of each kind, each behind the byte that picks its target, so the fuzzer
    starts from inputs that reach deep into the parsers."""
    greeting = make_handshake_v10(HandshakeV10("5.5.5-10.11-MariaDB", 7, b"abcdefghijklmnopqrst",
                                               0xF7FEFFFF, 45, 2, "mysql_native_password"))
    login = make_handshake_response41(HandshakeResponse41(0x01AFA68D, 1 << 24, 45, "app", bytes(20),
                                                          "app", "mysql_native_password", {"a": "b"}))
    change = make_change_user("app", bytes(20), "app", 45, "mysql_native_password", {})
    ok = make_ok(2, affected_rows=1, last_insert_id=300, warnings=1, info=b"Records: 1")
    tracked_ok = bytes.fromhex("000000024000000003020131")
    rows = b"".join(frame(payload, seq) for seq, payload in enumerate(
        [b"\x01", b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00",
         b"\x011", make_eof(2)], start=1))
    return {
        "framing": b"\x00" + b"\x00\x10\x00" + frame(b"\x03SELECT 1", 0) + frame(b"", 1),
        "greeting": b"\x01\x00\x00\x00\x00" + greeting,
        "login": b"\x01\xff\xff\xff\xff" + login,
        "change_user": b"\x01\xff\xff\xff\xff" + change,
        "ok": b"\x02\x00" + ok,
        "tracked_ok": b"\x02\x01" + tracked_ok,
        "err": b"\x02\x00" + make_err(1146, "42S02", "Table 'app.t' doesn't exist"),
        "rows": b"\x03\x00\x00\x00\x00\x00\x00\x10" + rows,
    }


if __name__ == "__main__":
    run(sys.argv, test_one_input, seeds)
