"""pyproxy.wire.response_tracker: finding the end of every kind of reply, however it is split.

Each captured reply is scanned the way pyproxy.backend's _relay_data scans
it: bytes past the offset scan() returns are kept and offered again with the
next read appended.  The reply must end exactly at its last byte, never
earlier, with the right status, error, prepared-statement info and OK offsets.
"""

from __future__ import annotations

import attrs
import pytest

import vectors
from pyproxy.wire.commands import Reply
from pyproxy.wire.constants import (
    MAX_PAYLOAD,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_CURSOR_EXISTS,
    SERVER_STATUS_IN_TRANS,
    SERVER_STATUS,
)
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.response_tracker import (
    DONE,
    FIRST,
    INFILE,
    SINGLE,
    ProtocolViolation,
    ResponseTracker,
)
from pyproxy.wire.responses import make_eof, make_ok, ok_status

AUTOCOMMIT = SERVER_STATUS_AUTOCOMMIT
NO_INDEX_USED = SERVER_STATUS.SERVER_QUERY_NO_INDEX_USED  # a full scan: 0x20


@attrs.define
class Relayed:
    tracker: ResponseTracker
    forwarded: int       # bytes passed on; they are the stream's prefix by construction
    carry: bytes
    oks: list[tuple[int, int]]
    done_early: bool


def relay(reply: Reply, stream: bytes, deprecate_eof: bool, cuts: list[int] = (),  # type: ignore[assignment]
          tracker: ResponseTracker | None = None, cursor: bool = False) -> Relayed:
    """Feeds ``stream`` in pieces cut at ``cuts`` as BackendConnection._relay_data does."""
    if tracker is None:
        tracker = ResponseTracker(deprecate_eof)
        tracker.start(reply, cursor=cursor)
    forwarded = 0
    oks: list[tuple[int, int]] = []
    carry = b""
    last = 0
    done_early = False
    for cut in list(cuts) + [len(stream)]:
        chunk = stream[last:cut]
        data = carry + chunk if carry else chunk
        last = cut
        if tracker.state in (DONE, INFILE) and data:
            done_early = True
        tracker.oks.clear()
        end = tracker.scan(data)
        oks += [(forwarded + start, forwarded + stop) for start, stop in tracker.oks]
        forwarded += end
        carry = data[end:]
    return Relayed(tracker, forwarded, carry, oks, done_early)


def packet_bounds(stream: bytes) -> list[tuple[int, int]]:
    """(start, end) of each physical packet in a stream."""
    out = []
    pos = 0
    while pos < len(stream):
        end = pos + 4 + int.from_bytes(stream[pos:pos + 3], "little")
        out.append((pos, end))
        pos = end
    return out


@attrs.frozen
class Case:
    name: str
    reply: Reply
    stream: bytes
    deprecate_eof: bool
    status: int | None = None
    error: int = 0
    # Indexes (among physical packets) of the OK packets the tracker must report.
    oks: tuple[int, ...] = ()
    prepared: tuple[int, int, int] | None = None
    untracked_change: bool = False
    # A COM_STMT_EXECUTE that asked for a cursor.
    cursor: bool = False


def last_packet(stream: bytes) -> int:
    return len(packet_bounds(stream)) - 1


TRACKED = AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED
CASES = [
    Case("select", Reply.RESULT, vectors.SELECT_EOF, False, AUTOCOMMIT | NO_INDEX_USED),
    Case("select-deof", Reply.RESULT, vectors.SELECT_DEOF, True, AUTOCOMMIT | NO_INDEX_USED, oks=(5,)),
    Case("err-mid-rows", Reply.RESULT, vectors.ERR_MID_ROWS_EOF, False, error=1242),
    Case("err-mid-rows-deof", Reply.RESULT, vectors.ERR_MID_ROWS_DEOF, True, error=1242),
    Case("multi", Reply.RESULT, vectors.MULTI_EOF, False, AUTOCOMMIT, oks=(10,)),
    Case("multi-deof", Reply.RESULT, vectors.MULTI_DEOF, True, AUTOCOMMIT, oks=(3, 7, 8)),
    Case("multi-as-execute", Reply.EXECUTE, vectors.MULTI_DEOF, True, AUTOCOMMIT, oks=(3, 7, 8)),
    Case("execute", Reply.EXECUTE, vectors.EXECUTE_EOF, False, AUTOCOMMIT),
    Case("execute-deof", Reply.EXECUTE, vectors.EXECUTE_DEOF, True, AUTOCOMMIT, oks=(6,)),
    Case("cursor", Reply.EXECUTE, vectors.CURSOR_EXECUTE_EOF, False,
         AUTOCOMMIT | SERVER_STATUS_CURSOR_EXISTS | NO_INDEX_USED, cursor=True),
    Case("cursor-deof", Reply.EXECUTE, vectors.CURSOR_EXECUTE_DEOF, True,
         AUTOCOMMIT | SERVER_STATUS_CURSOR_EXISTS | NO_INDEX_USED, oks=(3,), cursor=True),
    # A CALL whose routine has a cursor of its own: its flag is not the client's cursor.
    Case("call-cursor", Reply.EXECUTE, vectors.CALL_CURSOR_EXECUTE_EOF, False,
         AUTOCOMMIT | NO_INDEX_USED, oks=(5,)),
    Case("call-cursor-asked", Reply.EXECUTE, vectors.CALL_CURSOR_EXECUTE_EOF, False,
         AUTOCOMMIT | NO_INDEX_USED, oks=(5,), cursor=True),
    Case("call-cursor-deof", Reply.EXECUTE, vectors.CALL_CURSOR_EXECUTE_DEOF, True,
         AUTOCOMMIT | NO_INDEX_USED, oks=(3, 4), cursor=True),
    Case("fetch", Reply.FETCH, vectors.FETCH_EOF, False, AUTOCOMMIT | SERVER_STATUS_CURSOR_EXISTS),
    Case("fetch-deof", Reply.FETCH, vectors.FETCH_DEOF, True, AUTOCOMMIT | SERVER_STATUS_CURSOR_EXISTS,
         oks=(1,)),
    Case("prepare", Reply.PREPARE, vectors.PREPARE_EOF, False, prepared=(1, 3, 2)),
    Case("prepare-deof", Reply.PREPARE, vectors.PREPARE_DEOF, True, prepared=(1, 3, 2)),
    Case("field-list", Reply.FIELD_LIST, vectors.FIELD_LIST_EOF, False, AUTOCOMMIT),
    Case("field-list-deof", Reply.FIELD_LIST, vectors.FIELD_LIST_DEOF, True, AUTOCOMMIT, oks=(2,)),
    Case("ping", Reply.SINGLE, vectors.PING_OK, True, AUTOCOMMIT, oks=(0,)),
    Case("init-db", Reply.SINGLE, vectors.INIT_DB_OK, False, TRACKED, oks=(0,)),
    Case("statistics", Reply.STATISTICS, vectors.STATISTICS, False),
    # MariaDB's extended capabilities: definitions with extended type information pass
    # as any definition; COM_STMT_BULK_EXECUTE answers with one OK, or with RETURNING a
    # binary result set.
    Case("extended-metadata-deof", Reply.RESULT, vectors.EXTENDED_METADATA_SELECT_DEOF, True,
         AUTOCOMMIT | NO_INDEX_USED, oks=(2,)),
    Case("bulk-ok", Reply.EXECUTE, vectors.BULK_OK, True, AUTOCOMMIT, oks=(0,)),
    Case("bulk-returning-deof", Reply.EXECUTE, vectors.BULK_RETURNING_DEOF, True, AUTOCOMMIT, oks=(5,)),
    Case("call-deof", Reply.RESULT, vectors.CALL_ROWS_DEOF, True, AUTOCOMMIT, oks=(3, 8, 9)),
    Case("call", Reply.RESULT, vectors.CALL_ROWS_EOF, False, AUTOCOMMIT, oks=(11,)),
]
for _deof in (False, True):
    CASES += [
        Case(f"set-names-{_deof}", Reply.RESULT, vectors.SET_NAMES_OK, _deof, TRACKED, oks=(0,)),
        Case(f"autocommit-off-{_deof}", Reply.RESULT, vectors.AUTOCOMMIT_OFF_OK, _deof,
             SERVER_SESSION_STATE_CHANGED, oks=(0,)),
        Case(f"begin-{_deof}", Reply.RESULT, vectors.BEGIN_OK, _deof, AUTOCOMMIT | SERVER_STATUS_IN_TRANS,
             oks=(0,)),
        Case(f"err-{_deof}", Reply.RESULT, vectors.ERR_NO_TABLE, _deof, error=1146),
        Case(f"prepare-err-{_deof}", Reply.PREPARE, vectors.ERR_NO_TABLE, _deof, error=1146),
        Case(f"single-err-{_deof}", Reply.SINGLE, vectors.ERR_NO_TABLE, _deof, error=1146),
    ]


SPLIT_CASES = [pytest.param(c, id=c.name) for c in CASES]


def check(case: Case, got: Relayed) -> None:
    assert not got.done_early, "reply ended before its last byte"
    assert got.tracker.state == DONE
    assert got.forwarded == len(case.stream)
    assert got.carry == b""
    assert got.tracker.error == case.error
    if case.status is not None:
        assert got.tracker.status == case.status
    assert got.tracker.prepared == case.prepared
    assert got.tracker.untracked_change == case.untracked_change
    bounds = packet_bounds(case.stream)
    assert got.oks == [bounds[i] for i in case.oks]
    for start, end in got.oks:
        assert case.stream[start + 4] in (0x00, 0xFE)
    assert got.tracker.seq == case.stream[bounds[-1][0] + 3]
    assert not got.tracker.mid_packet()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_whole_reply(case: Case) -> None:
    """The reply scanned in one piece ends at its last byte with the right outcome."""
    check(case, relay(case.reply, case.stream, case.deprecate_eof, cursor=case.cursor))


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_reply_split_at_every_position(case: Case) -> None:
    """However the reply is cut in two, the outcome is the same."""
    for cut in range(len(case.stream) + 1):
        check(case, relay(case.reply, case.stream, case.deprecate_eof, [cut], cursor=case.cursor))


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_reply_byte_by_byte(case: Case) -> None:
    """Fed one byte per read, the reply still ends exactly at its end."""
    check(case, relay(case.reply, case.stream, case.deprecate_eof, list(range(1, len(case.stream))),
                      cursor=case.cursor))


def test_not_done_before_last_byte() -> None:
    """Any strict prefix of a reply leaves the tracker waiting."""
    for case in CASES:
        if case.name == "prepare-deof":
            continue  # test_prepare_deof_not_done_inside_last_definition
        for cut in range(len(case.stream)):
            got = relay(case.reply, case.stream[:cut], case.deprecate_eof, cursor=case.cursor)
            assert got.tracker.state != DONE, (case.name, cut)
@pytest.mark.parametrize("stream", [
    vectors.PREPARE_DEOF,
    # 'DO ?': one parameter and no columns, so the parameter definition is last.
    frame(b"\x00\x02\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00", 1)
    + PacketFramer().feed(vectors.PREPARE_DEOF)[1].raw,
], ids=["columns-last", "params-last"])
def test_prepare_deof_not_done_inside_last_definition(stream: bytes) -> None:
    """Cut inside the last definition, a DEPRECATE_EOF prepare reply is not complete yet."""
    # Otherwise backend.py ends the relay while the rest of that packet is still
    # on its way, and then reads it as unsolicited data.
    last_start = packet_bounds(stream)[-1][0]
    tracker = ResponseTracker(True)
    tracker.start(Reply.PREPARE)
    tracker.scan(stream[:last_start + 6])
    assert tracker.state != DONE


def test_multi_statement_passes_through_first() -> None:
    """MORE_RESULTS_EXISTS sends the tracker back to FIRST for the next result."""
    first_result = b"".join(vectors.MULTI_DEOF[s:e] for s, e in packet_bounds(vectors.MULTI_DEOF)[:4])
    got = relay(Reply.RESULT, first_result, True)
    assert got.tracker.state == FIRST
    assert got.tracker.status & SERVER_MORE_RESULTS_EXISTS


def test_more_results_ignored_for_single_reply() -> None:
    """A terminator with MORE_RESULTS_EXISTS ends a COM_FIELD_LIST reply all the same."""
    stream = frame(make_eof(AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS), 1)
    assert relay(Reply.FIELD_LIST, stream, False).tracker.state == DONE


@pytest.mark.parametrize("reply", [Reply.RESULT, Reply.EXECUTE])
@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_local_infile(deprecate_eof: bool, reply: Reply) -> None:
    """A LOCAL INFILE request stops the scan until infile_sent(); the OK after it ends the
    reply.  LOAD DATA LOCAL prepared asks for the file in reply to COM_STMT_EXECUTE."""
    tracker = ResponseTracker(deprecate_eof)
    tracker.start(reply)
    got = relay(reply, vectors.INFILE_REQUEST, deprecate_eof, tracker=tracker)
    assert tracker.state == INFILE
    assert got.forwarded == len(vectors.INFILE_REQUEST)
    # Nothing is scanned while the client is still sending its file.
    assert tracker.scan(vectors.INFILE_OK) == 0
    tracker.infile_sent()
    assert tracker.state == FIRST
    for cut in range(len(vectors.INFILE_OK) + 1):
        again = ResponseTracker(deprecate_eof)
        again.start(Reply.RESULT)
        relay(Reply.RESULT, vectors.INFILE_REQUEST, deprecate_eof, tracker=again)
        again.infile_sent()
        got = relay(Reply.RESULT, vectors.INFILE_OK, deprecate_eof, [cut], tracker=again)
        assert again.state == DONE
        assert got.forwarded == len(vectors.INFILE_OK)
        assert again.status == AUTOCOMMIT
        assert got.oks == [(0, len(vectors.INFILE_OK))]


def test_infile_request_only_for_queries() -> None:
    """A LOCAL INFILE request comes only in reply to COM_QUERY or COM_STMT_EXECUTE; infile_sent
    while none is pending is refused."""
    tracker = ResponseTracker(False)
    tracker.start(Reply.RESULT)
    with pytest.raises(ProtocolViolation):
        tracker.infile_sent()


# -- long rows ---------------------------------------------------------------

def result_set(rows: list[bytes], deprecate_eof: bool, final_status: int = AUTOCOMMIT | NO_INDEX_USED) -> bytes:
    """A one-column text result set around the given row payloads, framed with running seq ids."""
    column = PacketFramer().feed(vectors.SELECT_EOF)[1].payload
    payloads = [b"\x01", column]
    if not deprecate_eof:
        payloads.append(make_eof(AUTOCOMMIT))
    payloads += rows
    payloads.append(make_ok(final_status, header=0xFE) if deprecate_eof else make_eof(final_status))
    out = []
    seq = 1
    for payload in payloads:
        wire = frame(payload, seq)
        out.append(wire)
        seq += 1 + len(payload) // MAX_PAYLOAD
    return b"".join(out)


LONG_ROWS = {
    # exactly 0xFFFFFF bytes: an empty packet follows
    "exact": b"\xfd\xfc\xff\xff" + b"r" * (MAX_PAYLOAD - 4),
    # 0xFFFFFF + 5 bytes, the tail shaped like a classic EOF
    "eof-tail": b"\xfd\x05\x00\x00\x01" + b"s" * (MAX_PAYLOAD - 5) + b"\xfe\x00\x00\x02\x00",
    # a row starting with 0xFE (an 8-byte length): not a terminator
    "fe-start": b"\xfe" + (MAX_PAYLOAD + 20).to_bytes(8, "little") + b"t" * (MAX_PAYLOAD + 11),
    # the tail shaped like an ERR
    "err-tail": b"\xfd" + (MAX_PAYLOAD - 3).to_bytes(3, "little") + b"u" * (MAX_PAYLOAD - 4) + b"\xff\x7a\x04",
}


def cuts_near_headers(stream: bytes) -> list[list[int]]:
    """Cuts around each physical packet header of a long row, and one in each long payload."""
    cuts = set()
    for start, end in packet_bounds(stream):
        if end - start < 1000 and start > 0 and end - start != 4:
            continue
        for delta in (-1, 0, 1, 3, 4, 5, 6):
            if 0 < start + delta < len(stream):
                cuts.add(start + delta)
        if end - start > 1 << 20:
            cuts.add(start + (1 << 20))
    return [[cut] for cut in sorted(cuts)] + [sorted(cuts)]


@pytest.mark.parametrize("deprecate_eof", [False, True])
@pytest.mark.parametrize("row", list(LONG_ROWS))
def test_rows_of_max_payload(row: str, deprecate_eof: bool) -> None:
    """Rows of 0xFFFFFF bytes and more, some whose parts look like terminators, are rows."""
    stream = result_set([b"\x01a", LONG_ROWS[row], b"\x02bb"], deprecate_eof)
    case = Case("long", Reply.RESULT, stream, deprecate_eof, AUTOCOMMIT | NO_INDEX_USED,
                oks=(last_packet(stream),) if deprecate_eof else ())
    check(case, relay(Reply.RESULT, stream, deprecate_eof))
    for cuts in cuts_near_headers(stream):
        check(case, relay(Reply.RESULT, stream, deprecate_eof, cuts))


def test_mid_packet_while_a_long_row_streams() -> None:
    """mid_packet() is true once part of a long row has been passed on."""
    stream = result_set([LONG_ROWS["exact"]], True)
    row_start = packet_bounds(stream)[2][0]
    tracker = ResponseTracker(True)
    tracker.start(Reply.RESULT)
    relay(Reply.RESULT, stream[:row_start + 1000], True, tracker=tracker)
    assert tracker.mid_packet()
    assert tracker.state != DONE


def test_err_after_long_row() -> None:
    """An ERR right after a continued row ends the reply with its code."""
    stream = result_set([b"\x01a", LONG_ROWS["exact"]], True)
    stream = stream[:packet_bounds(stream)[-1][0]]
    err = PacketFramer().feed(vectors.ERR_MID_ROWS_DEOF)[-1].payload
    stream += frame(err, 7)
    case = Case("long-err", Reply.RESULT, stream, True, error=1242)
    check(case, relay(Reply.RESULT, stream, True))
    for cuts in cuts_near_headers(stream):
        check(case, relay(Reply.RESULT, stream, True, cuts))


def test_classic_eof_with_state_change_is_untracked() -> None:
    """A classic EOF that says state changed cannot say what: flagged as untracked."""
    stream = result_set([b"\x01a"], False)
    # make_eof never sets the flag, so the final EOF is written by hand.
    stream = stream[:-2] + (AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED).to_bytes(2, "little")
    tracker = relay(Reply.RESULT, stream, False).tracker
    assert tracker.state == DONE
    assert tracker.untracked_change


def test_ok_after_a_flagged_eof_reports_the_change() -> None:
    """In a CALL the result set's classic EOF flags the change, and the CALL's final OK,
    which carries every change not yet reported, says what it was: nothing is left
    untracked."""
    stream = result_set([b"\x01a"], False)
    flags = AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED | SERVER_MORE_RESULTS_EXISTS
    stream = stream[:-2] + flags.to_bytes(2, "little")
    last = packet_bounds(stream)[-1]
    ok = PacketFramer().feed(vectors.SET_NAMES_OK)[0].payload
    stream += frame(ok, stream[last[0] + 3] + 1)
    got = relay(Reply.RESULT, stream, False)
    assert got.tracker.state == DONE
    assert not got.tracker.untracked_change
    assert got.tracker.changed


def test_ok_without_a_state_block_leaves_the_change_untracked() -> None:
    """An OK without SERVER_SESSION_STATE_CHANGED reports nothing, not even what a
    classic EOF before it flagged (the server keeps that for its next OK with a block)."""
    stream = result_set([b"\x01a"], False)
    flags = AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED | SERVER_MORE_RESULTS_EXISTS
    stream = stream[:-2] + flags.to_bytes(2, "little")
    last = packet_bounds(stream)[-1]
    stream += frame(make_ok(AUTOCOMMIT), stream[last[0] + 3] + 1)
    got = relay(Reply.RESULT, stream, False)
    assert got.tracker.state == DONE
    assert got.tracker.untracked_change


def test_deprecate_eof_ok_with_state_change_is_reported() -> None:
    """With DEPRECATE_EOF the final OK holds the changes, so it is listed in oks instead."""
    stream = result_set([b"\x01a"], True, AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED)
    got = relay(Reply.RESULT, stream, True)
    assert not got.tracker.untracked_change
    assert got.oks == [packet_bounds(stream)[-1]]


def test_start_resets_outcome() -> None:
    """start() clears the previous reply's error and prepared info."""
    tracker = relay(Reply.PREPARE, vectors.ERR_NO_TABLE, True).tracker
    assert tracker.error == 1146
    tracker.start(Reply.SINGLE)
    assert (tracker.error, tracker.prepared, tracker.state) == (0, None, SINGLE)
    tracker.scan(vectors.PING_OK)
    assert tracker.done


def test_no_reply_command_is_done_at_once() -> None:
    """COM_STMT_CLOSE expects nothing: the tracker is done before any byte."""
    tracker = ResponseTracker(False)
    tracker.start(Reply.NONE)
    assert tracker.done
    assert tracker.scan(vectors.PING_OK) == 0


@pytest.mark.parametrize(("reply", "stream"), [
    (Reply.RESULT, frame(make_eof(AUTOCOMMIT), 1)),          # EOF where a result belongs
    (Reply.RESULT, frame(b"\x00", 1)),                      # an OK too short for its status
    (Reply.RESULT, b"\x00\x00\x00\x01"),                   # an empty first packet
    (Reply.PREPARE, frame(b"\x00\x01\x00", 1)),              # a prepare-OK cut short
])
def test_protocol_violations(reply: Reply, stream: bytes) -> None:
    """Packets the reply grammar does not allow raise ProtocolViolation."""
    tracker = ResponseTracker(False)
    tracker.start(reply)
    with pytest.raises(ProtocolViolation):
        tracker.scan(stream)


def test_missing_eof_after_columns() -> None:
    """Without DEPRECATE_EOF a row right after the definitions is a violation."""
    bounds = packet_bounds(vectors.SELECT_EOF)
    stream = vectors.SELECT_EOF[:bounds[3][0]] + vectors.SELECT_EOF[bounds[4][0]:]
    tracker = ResponseTracker(False)
    tracker.start(Reply.RESULT)
    with pytest.raises(ProtocolViolation):
        tracker.scan(stream)


def test_zero_column_result_is_a_violation() -> None:
    """A column count of zero is not a result set."""
    tracker = ResponseTracker(False)
    tracker.start(Reply.RESULT)
    with pytest.raises(ProtocolViolation):
        tracker.scan(frame(b"\xfc\x00\x00", 1))


def test_oks_offsets_point_into_scanned_buffer() -> None:
    """oks are offsets in the buffer passed to scan, including a carried prefix."""
    got = relay(Reply.RESULT, vectors.SET_NAMES_OK, True, [10])
    assert got.oks == [(0, len(vectors.SET_NAMES_OK))]
    start, end = got.oks[0]
    assert ok_status(vectors.SET_NAMES_OK[start + 4:end]) == TRACKED


def test_prepare_status_comes_from_its_own_reply() -> None:
    """After COM_STMT_PREPARE, status holds the flags of that reply's EOF, not a stale value."""
    tracker = ResponseTracker(False)
    tracker.start(Reply.PREPARE)
    tracker.scan(vectors.PREPARE_EOF)
    assert tracker.done
    assert tracker.status == AUTOCOMMIT


def test_malformed_terminator_is_a_protocol_violation() -> None:
    """Found by fuzz/fuzz_codec.py: a 0xFE terminator of 7 bytes or more (an OK, with
    CLIENT_DEPRECATE_EOF) whose counters are no length-encoded integers raised MalformedPacket
    out of scan(), which the backend does not catch; it is a ProtocolViolation."""
    tracker = ResponseTracker(True)
    tracker.start(Reply.FETCH)
    with pytest.raises(ProtocolViolation, match="length-encoded"):
        tracker.scan(frame(b"\xfe\xff" + bytes(5), 1))
    # The same at the end of a result set's rows.
    tracker = ResponseTracker(True)
    tracker.start(Reply.RESULT)
    columns = frame(b"\x01", 1) + frame(b"\x03def" + bytes(20), 2) + frame(b"\x011", 3)
    with pytest.raises(ProtocolViolation):
        tracker.scan(columns + frame(b"\xfe\xfb" + bytes(6), 4))


def test_malformed_packet_after_cursor_definitions_is_a_protocol_violation() -> None:
    """The same for the packet after the definitions of an execute that asked for a cursor,
    translated for a client without CLIENT_DEPRECATE_EOF: a long 0xFE packet with bad counters."""
    tracker = ResponseTracker(True)
    tracker.start(Reply.EXECUTE, translate=True, cursor=True)
    stream = bytearray(frame(b"\x01", 1) + frame(b"\x03def" + bytes(20), 2) + frame(b"\xfe\xff" + bytes(6), 3))
    with pytest.raises(ProtocolViolation, match="length-encoded"):
        tracker.scan(stream)


def apply_edits(data: bytearray, tracker: ResponseTracker) -> bytes:
    """What the client is sent: the tracker's edits applied (as pyproxy.hygiene does)."""
    pieces, last = [], 0
    for start, end, packet in tracker.edits:
        pieces.append(bytes(data[last:start]))
        pieces.append(packet)
        last = end
    pieces.append(bytes(data[last:]))
    return b"".join(pieces)


def test_call_translated_byte_for_byte() -> None:
    """A CALL's reply for a client without CLIENT_DEPRECATE_EOF is what the server sends
    such a client, byte for byte: the EOFs inserted after each result set's definitions
    say SERVER_MORE_RESULTS_EXISTS, as the server's own do inside a CALL."""
    tracker = ResponseTracker(True)
    tracker.start(Reply.RESULT, translate=True, metadata_status=AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS)
    data = bytearray(vectors.CALL_ROWS_DEOF)
    assert tracker.scan(data) == len(data) and tracker.state == DONE
    assert apply_edits(data, tracker) == vectors.CALL_ROWS_EOF
