"""pyproxy.wire.responses: OK, ERR and EOF, and the session-state block, against captured packets."""

from __future__ import annotations

import pytest

import vectors
from pyproxy.wire.buffer import lenenc_bytes
from pyproxy.wire.constants import (
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_STATE_CHANGE,
    SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
    SESSION_TRACK_TRANSACTION_STATE,
)
from pyproxy.wire.framing import PacketFramer
from pyproxy.wire.responses import (
    ERR,
    OK,
    SessionChanges,
    eof_status,
    filter_session_track,
    make_eof,
    make_err,
    make_ok,
    make_ok_tracked,
    make_prepare_ok,
    ok_status,
    parse_err,
    parse_ok,
    parse_session_changes,
    strip_session_track,
)

TRACKED = SERVER_STATUS_AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED


def payloads(stream: bytes) -> list[bytes]:
    return [p.payload for p in PacketFramer().feed(stream)]


def only(stream: bytes) -> bytes:
    [payload] = payloads(stream)
    return payload


def test_tracking_ok() -> None:
    """Turning tracking on reports the three tracking variables and a state change."""
    ok = parse_ok(only(vectors.TRACKING_OK), session_track=True)
    assert ok.status == TRACKED
    assert ok.changes == SessionChanges(
        variables=(("session_track_system_variables", "*"), ("session_track_state_change", "ON"),
                   ("session_track_schema", "ON")),
        state_changed=True)


def test_set_names_ok() -> None:
    """SET NAMES latin1 reports three character_set_* variables (MariaDB leaves out the collation)."""
    ok = parse_ok(only(vectors.SET_NAMES_OK), session_track=True)
    assert ok.changes is not None
    assert dict(ok.changes.variables) == {"character_set_results": "latin1",
                                          "character_set_client": "latin1",
                                          "character_set_connection": "latin1"}
    assert ok.changes.state_changed


def test_use_ok() -> None:
    """USE mysql reports the schema."""
    changes = parse_ok(only(vectors.USE_OK), session_track=True).changes
    assert changes == SessionChanges(schema="mysql", state_changed=True)


def test_user_variable_and_temp_table_ok() -> None:
    """A user variable and a temporary table both show up only as 'state changed'."""
    for stream in (vectors.USER_VARIABLE_OK, vectors.TEMP_TABLE_OK):
        ok = parse_ok(only(stream), session_track=True)
        assert ok.status == TRACKED
        assert ok.changes == SessionChanges(state_changed=True)


def test_autocommit_ok() -> None:
    """SET autocommit=0 reports the variable and clears AUTOCOMMIT in the status."""
    off = parse_ok(only(vectors.AUTOCOMMIT_OFF_OK), session_track=True)
    assert off.status == SERVER_SESSION_STATE_CHANGED
    assert off.changes is not None and off.changes.variables == (("autocommit", "OFF"),)
    on = parse_ok(only(vectors.AUTOCOMMIT_ON_OK), session_track=True)
    assert on.status == TRACKED
    assert on.changes is not None and on.changes.variables == (("autocommit", "ON"),)


def test_plain_ok() -> None:
    """OKs with no state change have no changes block; BEGIN sets IN_TRANS."""
    assert parse_ok(only(vectors.LOGIN_OK), True) == OK(0, 0, SERVER_STATUS_AUTOCOMMIT, 0)
    assert parse_ok(only(vectors.BEGIN_OK), True).status == SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_IN_TRANS


def test_ok_with_info() -> None:
    """LOAD DATA's OK carries its info as a length-encoded string when tracking is on."""
    ok = parse_ok(only(vectors.INFILE_OK), session_track=True)
    assert ok.info == b"Records: 0  Deleted: 0  Skipped: 0  Warnings: 0"
    assert ok.changes is None


def test_ok_without_session_track_has_length_encoded_info() -> None:
    """Without CLIENT_SESSION_TRACK the info is still length-encoded, as servers write it
    (mysqlnd reads a length there: a bare info made it drop the connection)."""
    payload = make_ok(2, affected_rows=300, last_insert_id=70000, warnings=1, info=b"hello")
    assert payload.endswith(b"\x05hello")
    assert parse_ok(payload, session_track=False) == OK(300, 70000, 2, 1, b"hello")
    assert make_ok(2).endswith(b"\x02\x00\x00\x00")  # no info: nothing after the warnings


def test_strip_session_track() -> None:
    """A tracked OK rewritten for an untracking client keeps counts, status and info, loses the block."""
    for stream in (vectors.SET_NAMES_OK, vectors.INIT_DB_OK, vectors.INFILE_OK, vectors.AUTOCOMMIT_OFF_OK):
        tracked = parse_ok(only(stream), session_track=True)
        stripped = strip_session_track(only(stream))
        plain = parse_ok(stripped, session_track=False)
        assert plain == OK(tracked.affected_rows, tracked.last_insert_id,
                           tracked.status & ~SERVER_SESSION_STATE_CHANGED, tracked.warnings, tracked.info)
    assert strip_session_track(only(vectors.USE_OK)) == b"\x00\x00\x00\x02\x00\x00\x00"


def test_strip_keeps_header_of_terminating_ok() -> None:
    """The 0xFE OK that ends a DEPRECATE_EOF result set keeps its header when stripped."""
    final = payloads(vectors.SELECT_DEOF)[-1]
    assert final[0] == 0xFE
    assert strip_session_track(final)[0] == 0xFE
    assert ok_status(strip_session_track(final)) == ok_status(final)


def test_make_ok_tracked_round_trip() -> None:
    """make_ok_tracked writes the layout a tracking client parses."""
    payload = make_ok_tracked(TRACKED, affected_rows=5, info=b"x")
    assert parse_ok(payload, session_track=True) == OK(5, 0, SERVER_STATUS_AUTOCOMMIT, 0, b"x")


def test_make_ok_never_claims_state_changed() -> None:
    """pyproxy's own OKs carry no state block, so the flag is cleared."""
    assert ok_status(make_ok(TRACKED)) == SERVER_STATUS_AUTOCOMMIT
    assert eof_status(make_eof(TRACKED)) == SERVER_STATUS_AUTOCOMMIT


def test_captured_errs() -> None:
    """The captured ERR packets parse to code, SQLSTATE and message."""
    assert parse_err(only(vectors.ERR_NO_TABLE)) == ERR(
        1146, "42S02", "Table 'mysql.no_such_table' doesn't exist")
    assert parse_err(payloads(vectors.ERR_MID_ROWS_EOF)[-1]) == ERR(
        1242, "21000", "Subquery returns more than 1 row")


def test_err_round_trip() -> None:
    """make_err and parse_err agree; the SQLSTATE is always five characters."""
    assert parse_err(make_err(1045, "28000", "Access denied")) == ERR(1045, "28000", "Access denied")
    assert parse_err(make_err(9001, "HY", "x")).sqlstate == "HY000"


def test_err_without_sqlstate() -> None:
    """A pre-4.1 style ERR (no '#') gets HY000."""
    assert parse_err(b"\xff\x10\x04Too many connections") == ERR(1040, "HY000", "Too many connections")


def test_eof_status() -> None:
    """eof_status reads the flags of classic EOFs, captured and built."""
    eofs = [p for p in payloads(vectors.MULTI_EOF) if p[0] == 0xFE]
    assert [eof_status(p) for p in eofs] == [0x0A, 0x0A, 0x0A, 0x0A]
    assert eofs[0] == make_eof(SERVER_STATUS_AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS)
    assert eof_status(b"\xfe") == 0


def test_ok_status_reads_terminating_ok() -> None:
    """ok_status reads the flags of 0x00 and 0xFE OK packets without parsing the rest."""
    assert ok_status(payloads(vectors.MULTI_DEOF)[3]) == SERVER_STATUS_AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS
    assert ok_status(only(vectors.SET_NAMES_OK)) == TRACKED


def entry(kind: int, data: bytes) -> bytes:
    return bytes((kind,)) + lenenc_bytes(data)


def test_session_changes_skips_unknown_types() -> None:
    """GTIDs and unknown entry types are counted and skipped by length; the rest still parse."""
    block = (entry(3, b"\x00" + lenenc_bytes(b"0-1-100")) + entry(200, b"whatever")
             + entry(1, lenenc_bytes(b"app")))
    assert parse_session_changes(block) == SessionChanges(schema="app", other=2)


def test_session_changes_transaction_entries() -> None:
    """Transaction state and characteristics entries are read as text."""
    block = entry(5, lenenc_bytes(b"T_____")) + entry(4, lenenc_bytes(b"SET TRANSACTION READ ONLY;"))
    changes = parse_session_changes(block)
    assert changes.transaction_state == "T_____"
    assert changes.transaction_characteristics == "SET TRANSACTION READ ONLY;"


def test_session_changes_variable_names_lowercased() -> None:
    """Variable names compare case-insensitively, so they are lowered."""
    block = entry(0, lenenc_bytes(b"AutoCommit") + lenenc_bytes(b"OFF"))
    assert parse_session_changes(block).variables == (("autocommit", "OFF"),)


def test_truncated_session_block_raises() -> None:
    """An entry longer than its block is a malformed packet (a ValueError)."""
    with pytest.raises(ValueError):
        parse_session_changes(b"\x01\x09\x03app")


def test_filter_session_track_keeps_what_the_client_tracks() -> None:
    """Only the listed variables and entry types stay; the flag stays with them."""
    ok = only(vectors.SET_NAMES_OK)  # three character-set variables and a state change
    kept = parse_ok(filter_session_track(ok, frozenset({"character_set_connection"}), frozenset()), True)
    assert kept.changes is not None
    assert kept.changes.variables == (("character_set_connection", "latin1"),)
    assert not kept.changes.state_changed
    everything = parse_ok(filter_session_track(ok, None, frozenset({SESSION_TRACK_STATE_CHANGE})), True)
    assert everything.changes == parse_ok(ok, True).changes


def test_filter_session_track_drops_the_flag_when_nothing_is_left() -> None:
    """An OK whose every entry is filtered out says no state changed, as the server would."""
    ok = only(vectors.USE_OK)  # schema and state change
    bare = filter_session_track(ok, None, frozenset())
    parsed = parse_ok(bare, True)
    assert parsed.changes is None and not parsed.status & SERVER_SESSION_STATE_CHANGED
    assert bare == make_ok_tracked(parsed.status)
    schema = parse_ok(filter_session_track(ok, None, frozenset({SESSION_TRACK_SCHEMA})), True)
    assert schema.changes == SessionChanges(schema="mysql")


# OKs MariaDB 10.11 sent after ``SET character_set_database = ucs2`` (then ``utf32``): the
# buffer the OK is written into has the database collation, whose minimum character length
# pads the empty info's one-byte length with zeros before the state block.
PADDED_UCS2 = b"\x00\x00\x00\x02@\x00\x00\x00\x00!\x00\x1c\x16character_set_database\x04ucs2\x02\x011"
PADDED_UTF32_SET_NAMES = (b"\x00\x00\x00\x02@\x00\x00\x00\x00\x00\x00\\\x00\x1e\x18character_set_connection"
                          b"\x04ujis\x00\x1a\x14character_set_client\x04ujis\x00\x1b\x15character_set_results"
                          b"\x04ujis\x02\x011")
PADDED_USER_VARIABLE = b"\x00\x00\x00\x02@\x00\x00\x00\x00\x03\x02\x011"


@pytest.mark.parametrize(("payload", "variables"), [
    (PADDED_UCS2, (("character_set_database", "ucs2"),)),
    (PADDED_UTF32_SET_NAMES, (("character_set_connection", "ujis"), ("character_set_client", "ujis"),
                              ("character_set_results", "ujis"))),
    (PADDED_USER_VARIABLE, ()),
])
def test_padded_state_block_is_read(payload: bytes, variables: tuple[tuple[str, str], ...]) -> None:
    """Read strictly these blocks would be empty, and the SET NAMES lost."""
    ok = parse_ok(payload, session_track=True)
    assert ok.info == b""
    assert ok.changes == SessionChanges(variables=variables, state_changed=True)
    # A client that tracks state gets the block without the padding.
    filtered = filter_session_track(payload, None, frozenset((SESSION_TRACK_STATE_CHANGE,)))
    assert parse_ok(filtered, session_track=True).changes == ok.changes
    assert filtered.count(b"\x00\x00\x00\x00") == 0


def test_unpadded_block_followed_by_garbage_is_read_as_before() -> None:
    """Only zeros and a length that ends exactly at the packet's end count as padding."""
    payload = b"\x00\x00\x00\x02@\x00\x00\x00\x03\x02\x011\x07"
    assert parse_ok(payload, session_track=True).changes == SessionChanges(state_changed=True)
    not_to_the_end = b"\x00\x00\x00\x02@\x00\x00\x00\x00\x03\x02\x011\x00"
    assert parse_ok(not_to_the_end, session_track=True).changes == SessionChanges()


# OKs MariaDB 10.11 sent with session_track_transaction_info = CHARACTERISTICS after
# ``SET character_set_database = utf32`` (or ucs2): the characteristics are written in
# that character set, with three (one) stray bytes after them, and the entry's two
# one-byte lengths are cut to eight bits once the text passes 250 bytes.
_UNCOMMITTED = "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED;"
UTF32_SET_TRANSACTION = (b"\x00\x00\x00\x02@\x00\x00\x00\x00\x00\x00\xca\x04\xc8\xc7"
                         + _UNCOMMITTED.encode("utf-32-be") + b"\x00\x00\x00")
UTF32_CUT_LENGTHS = (b"\x00\x00\x00\x03@\x00\x00\x00\x00\x00\x00\xfc!\x01\x05\t\x08T_______\x04\x14\x13"
                     + (_UNCOMMITTED + " START TRANSACTION;").encode("utf-32-be") + b"\x00\x00\x00")
UCS2_START_READ_ONLY = (b"\x00\x00\x00\x03`\x01\x00\x00\x00\xdf\x05\t\x08T_R_____\x04\xd2\xd1"
                        + (_UNCOMMITTED + " START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;")
                        .encode("utf-16-be") + b"\x00")


@pytest.mark.parametrize(("payload", "state", "characteristics"), [
    (UTF32_SET_TRANSACTION, None, _UNCOMMITTED),
    (UTF32_CUT_LENGTHS, "T_______", _UNCOMMITTED + " START TRANSACTION;"),
    (UCS2_START_READ_ONLY, "T_R_____", _UNCOMMITTED + " START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;"),
    (b"\x00\x00\x00\x02@\x00\x00\x00\x0e\x05\t\x08________\x04\x01\x00", "________", ""),
], ids=["utf32", "utf32-cut-lengths", "ucs2", "ascii-empty"])
def test_wide_transaction_characteristics_are_read(payload: bytes, state: str | None,
                                                   characteristics: str) -> None:
    """Read by its cut lengths the entry would leave garbage that fails the whole OK (and
    with it the client's connection); read to the block's end it gives the statements."""
    ok = parse_ok(payload, session_track=True)
    assert ok.changes == SessionChanges(transaction_state=state, transaction_characteristics=characteristics)
    # A client that tracks them gets an entry whose lengths frame it.
    kinds = frozenset((SESSION_TRACK_TRANSACTION_STATE, SESSION_TRACK_TRANSACTION_CHARACTERISTICS))
    filtered = filter_session_track(payload, None, kinds)
    assert parse_ok(filtered, session_track=True).changes == ok.changes


def test_characteristics_before_the_state_are_read_by_their_lengths() -> None:
    """Another server may write the characteristics first: a sound entry ends where its
    lengths say, and the state entry after it is read too."""
    text = b"SET TRANSACTION READ ONLY;"
    block = b"\x04" + lenenc_bytes(lenenc_bytes(text)) + b"\x05\t\x08T_______"
    payload = b"\x00\x00\x00\x02@\x00\x00\x00" + lenenc_bytes(block)
    assert parse_ok(payload, session_track=True).changes == SessionChanges(
        transaction_state="T_______", transaction_characteristics=text.decode())


def test_make_prepare_ok_matches_the_server() -> None:
    """The prepare OK MariaDB sent for a statement with 3 columns and 2 parameters."""
    [packet] = PacketFramer().feed(vectors.PREPARE_DEOF)[:1]
    assert make_prepare_ok(1, 3, 2) == packet.payload
