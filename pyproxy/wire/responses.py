"""Generic responses: OK, ERR and EOF, and the session-state block in OK."""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from pyproxy.wire.buffer import BytesLike, MalformedPacket, Reader, lenenc_bytes, lenenc_int, u16
from pyproxy.wire.constants import (
    SERVER_SESSION_STATE_CHANGED,
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_STATE_CHANGE,
    SESSION_TRACK_SYSTEM_VARIABLES,
    SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
    SESSION_TRACK_TRANSACTION_STATE,
)


@attrs.frozen
class SessionChanges:
    """What one OK packet says changed in the session, read from its state block.

    ``other`` counts entries of types pyproxy does not interpret (GTIDs, or
    types newer than this code), which are skipped by their length.
    """

    variables: tuple[tuple[str, str], ...] = ()
    schema: str | None = None
    state_changed: bool = False
    transaction_state: str | None = None
    transaction_characteristics: str | None = None
    other: int = 0


@attrs.frozen
class OK:
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int
    info: BytesLike = b""
    changes: SessionChanges | None = None


@attrs.frozen
class ERR:
    code: int
    sqlstate: str
    message: str


def session_entries(block: BytesLike) -> Iterator[tuple[int, BytesLike]]:
    """The (type, data) entries of a session-state block.

    MariaDB (10.11 at least) writes the transaction characteristics ("SET
    TRANSACTION ...; START TRANSACTION;") in the session's database character
    set: after ``SET character_set_database = utf32`` every character takes
    four bytes, while the entry's two lengths keep one byte each, cut to their
    low eight bits once the text passes 250 bytes.  Read by those lengths, the
    rest of the block is garbage.  That entry is the last MariaDB writes, and
    the block's own length is right, so such an entry (one its lengths cannot
    frame, or a wide text that does not end the block) is read to the end of
    the block: its type, two length bytes, then the text.
    """
    r = Reader(block)
    while r.remaining():
        kind = r.u8()
        if kind != SESSION_TRACK_TRANSACTION_CHARACTERISTICS:
            yield kind, r.lenenc_bytes()
            continue
        at = r.pos
        try:
            data = r.lenenc_bytes()
            inner = Reader(data)
            text = inner.lenenc_bytes()
            sound = not inner.remaining() and (not r.remaining() or b"\x00" not in text)
        except MalformedPacket:
            sound = False
        if not sound:
            if at + 2 > len(block):
                raise MalformedPacket(f"transaction characteristics cut at offset {at}")
            data = lenenc_bytes(block[at + 2:])
            r.pos = len(block)
        yield kind, data


def characteristics_text(data: BytesLike) -> str:
    """The statements a transaction-characteristics entry holds, as ASCII text
    whichever character set the server wrote them in (they are SQL keywords)."""
    r = Reader(data)
    text = r.lenenc_bytes() if r.remaining() else b""
    if b"\x00" in text:
        text = bytes(text).replace(b"\x00", b"")
    return bytes(text).decode("ascii", "replace").strip()


def parse_session_changes(block: BytesLike) -> SessionChanges:
    variables: list[tuple[str, str]] = []
    schema = None
    state_changed = False
    trx_state = None
    trx_chars = None
    other = 0
    for kind, data in session_entries(block):
        entry = Reader(data)
        if kind == SESSION_TRACK_SYSTEM_VARIABLES:
            name = entry.lenenc_bytes().decode("utf-8", "replace")
            variables.append((name.lower(), entry.lenenc_bytes().decode("utf-8", "replace")))
        elif kind == SESSION_TRACK_SCHEMA:
            schema = entry.lenenc_bytes().decode("utf-8", "replace")
        elif kind == SESSION_TRACK_STATE_CHANGE:
            # The flag is the bare byte "1", with no inner length.
            state_changed = entry.rest().endswith(b"1")
        elif kind == SESSION_TRACK_TRANSACTION_STATE:
            trx_state = entry.lenenc_bytes().decode("ascii", "replace")
        elif kind == SESSION_TRACK_TRANSACTION_CHARACTERISTICS:
            trx_chars = characteristics_text(data)
        else:
            other += 1
    return SessionChanges(tuple(variables), schema, state_changed, trx_state, trx_chars, other)


def _state_block(r: Reader) -> BytesLike:
    """The OK's session-state block, which follows the info.

    MariaDB (10.11 at least) writes the OK into a buffer in the session's
    ``collation_database``; when that character set has a minimum character
    length over one byte (ucs2, utf16, utf32), the one-byte length of an
    empty info is padded with zeros to that length: ``00 00 21 ...`` instead
    of ``00 21 ...`` after ``SET character_set_database = ucs2``.  Read
    strictly, the block would then be empty and every change it reports
    (a SET NAMES, a USE) lost.  The padding is recognised only where it is
    unambiguous: zeros, then a length that ends the block exactly where the
    packet ends.
    """
    start = r.pos
    data = r.data
    for skip in range(4):
        if skip and (start + skip >= len(data) or data[start + skip - 1] != 0):
            break
        r.pos = start + skip
        try:
            block = r.lenenc_bytes()
        except MalformedPacket:
            continue
        if not r.remaining():
            return block
    r.pos = start
    return r.lenenc_bytes()


def parse_ok(payload: BytesLike, session_track: bool) -> OK:
    """Parses an OK packet (header 0x00, or 0xFE when it ends a result set)."""
    r = Reader(payload, 1)
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = r.u16()
    warnings = r.u16()
    info: BytesLike = b""
    changes = None
    # The info is length-encoded whatever the client negotiated (servers write
    # it so); only the state block depends on CLIENT_SESSION_TRACK.
    if r.remaining():
        info = r.lenenc_bytes()
    if session_track and status & SERVER_SESSION_STATE_CHANGED and r.remaining():
        changes = parse_session_changes(_state_block(r))
    return OK(affected, insert_id, status, warnings, info, changes)


def make_ok(status: int, *, affected_rows: int = 0, last_insert_id: int = 0,
            warnings: int = 0, info: BytesLike = b"", header: int = 0x00) -> bytes:
    """An OK without a state block, for a client without CLIENT_SESSION_TRACK.

    ``info`` ("Records: 2  Duplicates: 0 ...") is length-encoded, as servers
    write it to every client: mysqlnd and libmysqlclient read a length there,
    and only readers that take "the rest of the packet" (PyMySQL) would also
    accept it bare.  An empty info is left out."""
    return b"".join((bytes((header,)), lenenc_int(affected_rows), lenenc_int(last_insert_id),
                     u16(status & ~SERVER_SESSION_STATE_CHANGED), u16(warnings),
                     lenenc_bytes(info) if info else b""))


def make_ok_tracked(status: int, *, affected_rows: int = 0, last_insert_id: int = 0,
                    warnings: int = 0, info: BytesLike = b"", header: int = 0x00) -> bytes:
    """An OK for a client with CLIENT_SESSION_TRACK: info is length-encoded."""
    return b"".join((bytes((header,)), lenenc_int(affected_rows), lenenc_int(last_insert_id),
                     u16(status & ~SERVER_SESSION_STATE_CHANGED), u16(warnings), lenenc_bytes(info)))


def make_prepare_ok(statement_id: int, columns: int, params: int, warnings: int = 0) -> bytes:
    """COM_STMT_PREPARE's OK: the statement id and how many column and parameter
    definitions follow (for a statement pyproxy prepares itself, none)."""
    return b"".join((b"\x00", statement_id.to_bytes(4, "little"), u16(columns), u16(params), b"\x00",
                     u16(warnings)))


def strip_session_track(payload: BytesLike) -> bytes:
    """Rewrites a tracked OK for a client that did not ask for CLIENT_SESSION_TRACK.

    The backend connection always tracks session state; the client must
    still see the OK layout it negotiated.
    """
    ok = parse_ok(payload, session_track=True)
    return make_ok(ok.status, affected_rows=ok.affected_rows, last_insert_id=ok.last_insert_id,
                   warnings=ok.warnings, info=ok.info, header=payload[0])


def filter_session_track(payload: BytesLike, variables: frozenset[str] | None,
                         kinds: frozenset[int]) -> bytes:
    """An OK for a client with CLIENT_SESSION_TRACK, showing only what the client's
    own tracking settings would: the system variables named in ``variables``
    (every one if None) and the entries of the types in ``kinds`` (schema,
    state change, transaction state...).  pyproxy's own tracking is its
    business, not the client's.
    """
    r = Reader(payload, 1)
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = r.u16()
    warnings = r.u16()
    info = r.lenenc_bytes() if r.remaining() else b""
    kept = []
    if status & SERVER_SESSION_STATE_CHANGED and r.remaining():
        for kind, data in session_entries(_state_block(r)):
            if kind == SESSION_TRACK_SYSTEM_VARIABLES:
                if variables is not None:
                    name = Reader(data).lenenc_bytes().decode("utf-8", "replace").lower()
                    if name not in variables:
                        continue
            elif kind not in kinds:
                continue
            kept.append(bytes((kind,)) + lenenc_bytes(data))
    head = b"".join((payload[:1], lenenc_int(affected), lenenc_int(insert_id)))
    if not kept:
        return b"".join((head, u16(status & ~SERVER_SESSION_STATE_CHANGED), u16(warnings),
                         lenenc_bytes(info)))
    return b"".join((head, u16(status), u16(warnings), lenenc_bytes(info),
                     lenenc_bytes(b"".join(kept))))


def parse_err(payload: BytesLike) -> ERR:
    r = Reader(payload, 1)
    code = r.u16()
    sqlstate = "HY000"
    if r.remaining() and payload[r.pos] == 0x23:  # '#'
        r.u8()
        sqlstate = r.fixed(5).decode("ascii", "replace")
    return ERR(code, sqlstate, r.rest().decode("utf-8", "replace"))


def make_err(code: int, sqlstate: str, message: str) -> bytes:
    return b"\xff" + u16(code) + b"#" + sqlstate.encode("ascii")[:5].ljust(5, b"0") + message.encode("utf-8")


def make_eof(status: int, warnings: int = 0) -> bytes:
    return b"\xfe" + u16(warnings) + u16(status & ~SERVER_SESSION_STATE_CHANGED)


def eof_status(payload: BytesLike) -> int:
    """Status flags of a classic EOF packet (header 0xFE, payload under 9 bytes)."""
    return payload[3] | (payload[4] << 8) if len(payload) >= 5 else 0


def ok_status(payload: BytesLike) -> int:
    """Status flags of an OK packet, without building an OK object."""
    r = Reader(payload, 1)
    r.lenenc_int()
    r.lenenc_int()
    return r.u16()


def ok_counters(payload: BytesLike) -> tuple[int, int, int, int]:
    """(affected rows, last insert id, status flags, warnings) of an OK packet."""
    if len(payload) >= 7 and payload[1] < 0xFB and payload[2] < 0xFB:
        # One-byte counters: nearly every OK, read without a Reader.
        return payload[1], payload[2], payload[3] | (payload[4] << 8), payload[5] | (payload[6] << 8)
    r = Reader(payload, 1)
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = r.u16()
    return affected, insert_id, status, r.u16() if r.remaining() >= 2 else 0
