"""The pure helpers of bench/bounds.py: packet builders, reply reader, /proc parsing, output."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from pyproxy.statements import execute_types
from pyproxy.wire.buffer import lenenc_int
from pyproxy.wire.commands import statement_id
from pyproxy.wire.constants import MAX_PAYLOAD
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.responses import make_eof, make_err, make_ok

_PATH = Path(__file__).resolve().parent.parent / "bench" / "bounds.py"
_spec = importlib.util.spec_from_file_location("bench_bounds", _PATH)
assert _spec is not None and _spec.loader is not None
bounds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bounds)

STATUS = """Name:\tpython3
VmPeak:\t  420000 kB
VmHWM:\t   263000 kB
VmRSS:\t    48100 kB
Threads:\t1
"""


def test_parse_status_field_reads_rss_and_high_water_mark() -> None:
    """Both fields come back in bytes, whichever is asked for."""
    assert bounds.parse_status_field(STATUS, "VmRSS") == 48100 * 1024
    assert bounds.parse_status_field(STATUS, "VmHWM") == 263000 * 1024


def test_parse_status_field_refuses_a_missing_field_or_unit() -> None:
    """A kernel thread has no VmRSS line; an unknown unit is not guessed at."""
    with pytest.raises(ValueError):
        bounds.parse_status_field("Name:\tkthreadd\n", "VmRSS")
    with pytest.raises(ValueError):
        bounds.parse_status_field("VmRSS:\t 12 MB\n", "VmRSS")


def _pieces(size: int, chunk: int = bounds.MIB) -> list[tuple[int, bytes]]:
    """(offset, bytes) of every piece of a huge packet's prefix."""
    out = []
    offset = 0
    for piece in bounds.huge_packet_prefix(size, first_seq=1, chunk=chunk):
        out.append((offset, bytes(piece)))
        offset += len(piece)
    return out


@pytest.mark.parametrize("size", [1, 3, 4, 5, 1000, MAX_PAYLOAD + 4, MAX_PAYLOAD + 6,
                                  2 * (MAX_PAYLOAD + 4) + 10])
def test_huge_packet_prefix_is_exactly_the_size_asked(size: int) -> None:
    """The prefix stops at ``size`` bytes, even inside a header."""
    assert sum(len(piece) for _, piece in _pieces(size)) == size


def test_huge_packet_prefix_headers_announce_full_parts_in_sequence() -> None:
    """Every 16 MiB part starts with a full-length header, sequence ids counting up from 1,
    and no piece is longer than the chunk asked for."""
    size = 2 * (MAX_PAYLOAD + 4) + 100
    pieces = _pieces(size, chunk=bounds.MIB)
    headers = {offset: piece for offset, piece in pieces if offset % (MAX_PAYLOAD + 4) == 0}
    assert headers == {0: b"\xff\xff\xff\x01", MAX_PAYLOAD + 4: b"\xff\xff\xff\x02",
                       2 * (MAX_PAYLOAD + 4): b"\xff\xff\xff\x03"}
    assert max(len(piece) for _, piece in pieces) <= bounds.MIB


def test_huge_packet_prefix_never_completes_a_packet() -> None:
    """Fed to pyproxy's own framer, the prefix leaves a packet waiting for more parts."""
    framer = PacketFramer()
    for piece in bounds.huge_packet_prefix(MAX_PAYLOAD + 4 + 1000):
        assert framer.feed(bytes(piece)) == []
    assert framer.buffered() > MAX_PAYLOAD


def test_statement_commands_read_back_with_pyproxy_parsers() -> None:
    """The long data and execute packets carry the statement id where pyproxy reads it, and
    the execute binds one BLOB parameter sent as long data."""
    long_data = bounds.make_stmt_send_long_data(7, 0, b"abc")
    assert long_data == b"\x18\x07\x00\x00\x00\x00\x00abc"
    assert statement_id(long_data) == 7
    execute = bounds.make_stmt_execute_long_data(7, 1)
    assert statement_id(execute) == 7
    assert execute_types(execute, 1) == bytes((0xFC, 0))
    assert bounds.make_stmt_execute_long_data(7, 0) == b"\x17\x07\x00\x00\x00\x00\x01\x00\x00\x00"
    assert bounds.make_stmt_prepare("SELECT ?") == b"\x16SELECT ?"


def test_expected_row_is_a_length_encoded_string() -> None:
    """The row the pipeline checks each reply against, long enough for a 3-byte length."""
    assert bounds.expected_row(3) == b"\x03xxx"
    assert bounds.expected_row(30000) == lenenc_int(30000) + b"x" * 30000


def _feed_all(reader: object, payloads: list[bytes]) -> list[object]:
    """The replies completed, each at the packet that completed it (None elsewhere)."""
    return [reader.feed(payload) for payload in payloads]  # type: ignore[attr-defined]


COLUMN = b"\x03def\x00\x00\x00\x01x\x00\x0c\x21\x00\x00\x00\x00\xfd\x00\x00\x1f\x00\x00"


def test_reply_reader_follows_a_classic_result_set() -> None:
    """Column count, definition, EOF, rows, EOF: one reply with its rows, at the last EOF."""
    reader = bounds.ReplyReader()
    row = bounds.expected_row(5)
    out = _feed_all(reader, [b"\x01", COLUMN, make_eof(2), row, row, make_eof(2)])
    assert out[:-1] == [None] * 5
    assert out[-1].rows == [row, row] and out[-1].row_count == 2 and out[-1].error == 0
    assert out[-1].columns == 1


def test_reply_reader_with_deprecate_eof_ends_at_the_ok() -> None:
    """Without EOF packets the result set ends at an OK with header 0xFE."""
    reader = bounds.ReplyReader(deprecate_eof=True, keep_rows=False)
    ok = b"\xfe" + make_ok(2)[1:] + b"\x00" * 20  # longer than a classic EOF
    out = _feed_all(reader, [b"\x01", COLUMN, b"\x01a", ok])
    assert out[:3] == [None] * 3
    assert out[3].row_count == 1 and out[3].row_bytes == 2 and out[3].rows == []


def test_reply_reader_takes_ok_and_err_as_whole_replies() -> None:
    """An OK or ERR first packet is the whole reply; the reader is then ready for the next."""
    reader = bounds.ReplyReader()
    assert reader.feed(make_ok(2)).error == 0
    failed = reader.feed(make_err(1105, "HY000", "too long"))
    assert (failed.error, failed.message) == (1105, "too long")
    assert reader.feed(b"\x01") is None


def test_reply_reader_stops_at_an_error_among_rows() -> None:
    """An ERR after some rows ends the reply with its code."""
    reader = bounds.ReplyReader()
    out = _feed_all(reader, [b"\x01", COLUMN, make_eof(2), b"\x01a",
                             make_err(1317, "70100", "interrupted")])
    assert out[-1].error == 1317 and out[-1].row_count == 1


def _prepare_ok(statement: int, columns: int, params: int) -> bytes:
    return (b"\x00" + statement.to_bytes(4, "little") + columns.to_bytes(2, "little")
            + params.to_bytes(2, "little") + b"\x00\x00\x00")


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_reply_reader_follows_a_prepare_reply(deprecate_eof: bool) -> None:
    """A prepare-OK with one parameter and one column is done after their definitions, each
    followed by an EOF for a classic client; a statement without either is done at once."""
    reader = bounds.ReplyReader(prepare=True, deprecate_eof=deprecate_eof)
    if deprecate_eof:
        payloads = [_prepare_ok(9, 1, 1), COLUMN, COLUMN]
    else:
        payloads = [_prepare_ok(9, 1, 1), COLUMN, make_eof(2), COLUMN, make_eof(2)]
    out = _feed_all(reader, payloads)
    assert out[:-1] == [None] * (len(payloads) - 1)
    assert (out[-1].statement, out[-1].params, out[-1].columns) == (9, 1, 1)
    assert reader.feed(_prepare_ok(10, 0, 0)).statement == 10
    assert reader.feed(make_err(1461, "42000", "too many")).error == 1461


def test_error_in_finds_an_error_packet() -> None:
    """What pyproxy sent before closing: an ERR names its code, anything else nothing."""
    assert bounds.error_in(frame(make_err(1153, "08S01", "too large"), 2)) == "ERR 1153"
    assert bounds.error_in(frame(make_ok(2), 2)) == ""
    assert bounds.error_in(b"") == ""


def test_summarize_senders_groups_clients_by_outcome() -> None:
    """Clients with the same state and error make one phrase, with the range of bytes sent
    and the latest time; the most frequent outcome comes first."""
    closed = [bounds.SenderOutcome("closed", 512 * 1024, 0.1, "ERR 1153"),
              bounds.SenderOutcome("closed", 3 * bounds.MIB, 0.2, "ERR 1153")]
    opened = bounds.SenderOutcome("open", 64 * bounds.MIB, 2.5)
    assert bounds.summarize_senders(closed) == (
        "2 x closed (ERR 1153) after 512.0 KiB to 3.0 MiB sent, 0.2 s")
    assert bounds.summarize_senders([opened]) == "open after 64.0 MiB sent, 2.5 s"
    assert bounds.summarize_senders([opened, *closed]).startswith("2 x closed")
    refused = bounds.SenderOutcome("refused: ERR 1040")
    assert bounds.summarize_senders([opened, refused]) == (
        "open after 64.0 MiB sent, 2.5 s, refused: ERR 1040")


def test_tcp_receive_queue_finds_the_connection() -> None:
    """The receive queue (hex) of the socket with these local and remote ports; a listening
    socket or another connection does not count."""
    text = "\n".join([
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid",
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000010 00:00000000 00000000  0",
        "   1: 0100007F:1F90 0100007F:C350 01 00000000:00017400 00:00000000 00000000  0",
        "   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  0",
    ])
    assert bounds.tcp_receive_queue(text, 8080, 50000) == 0x17400
    assert bounds.tcp_receive_queue(text, 50000, 8080) == 0
    assert bounds.tcp_receive_queue(text, 8080, 50001) is None


def test_config_setting_reads_section_key_and_typed_value() -> None:
    """--set values become the TOML types pyproxy's config expects; a key without its
    section is refused."""
    assert bounds.config_setting("proxy.max_packet_size=4096") == ("proxy", "max_packet_size", 4096)
    assert bounds.config_setting("session.hold_for_next_statement=0.5")[2] == 0.5
    assert bounds.config_setting("log.level=debug")[2] == "debug"
    assert bounds.config_setting("x.flag=true")[2] is True
    with pytest.raises(argparse.ArgumentTypeError):
        bounds.config_setting("max_packet_size=4096")


def test_result_line_and_table_have_one_row_per_scenario() -> None:
    """Growth is peak - before; the table aligns the memory columns and shows '-' for a
    figure a failed scenario never took."""
    results = [bounds.Result("prelogin", "2 clients", "2 x open", before=48 * bounds.MB,
                             peak=263 * bounds.MB, after=50 * bounds.MB),
               bounds.Result("statements", "40000 prepares", "failed: refused")]
    assert results[0].growth == 215 * bounds.MB
    assert results[0].line().startswith("scenario prelogin: sent 2 clients;")
    assert "growth 215.0 MB" in results[0].line()
    lines = bounds.render_table(results).splitlines()
    assert lines[0].split() == ["scenario", "sent", "before", "peak", "growth", "after",
                                "client", "got"]
    assert len(lines) == 4
    assert lines[2].startswith("prelogin") and "215.0" in lines[2]
    assert lines[3].startswith("statements") and " - " in lines[3]


def test_log_problems_picks_tracebacks_and_errors() -> None:
    """Info events are ignored; a traceback, an unhandled error or an error event is kept."""
    log = "\n".join([
        '{"event": "client_connected", "level": "info"}',
        "Traceback (most recent call last):",
        "2026-01-01 [-] Unhandled Error",
        '{"event": "backend_failed", "level": "error"}',
    ])
    assert len(bounds.log_problems(log)) == 3
    assert bounds.log_problems('{"event": "listening", "level": "info"}') == []


def test_parse_args_quick_and_explicit_counts() -> None:
    """--quick lowers the counts; an explicit count wins over either default."""
    full = bounds.parse_args([])
    quick = bounds.parse_args(["--quick", "--statements", "10"])
    assert full.statements == 40_000 and full.pipeline_queries == 20_000
    assert quick.statements == 10 and quick.pipeline_queries == 2_000
    assert quick.scenarios == list(bounds.SCENARIOS)
    with pytest.raises(SystemExit):
        bounds.parse_args(["--prelogin-clients", "0"])
