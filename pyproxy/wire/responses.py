"""Generic responses: OK, ERR and EOF, and the session-state block in OK."""

from __future__ import annotations

import attrs

from pyproxy.wire.buffer import Reader, lenenc_bytes, lenenc_int, u16
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
    info: bytes = b""
    changes: SessionChanges | None = None


@attrs.frozen
class ERR:
    code: int
    sqlstate: str
    message: str


def parse_session_changes(block: bytes) -> SessionChanges:
    r = Reader(block)
    variables: list[tuple[str, str]] = []
    schema = None
    state_changed = False
    trx_state = None
    trx_chars = None
    other = 0
    while r.remaining():
        kind = r.u8()
        entry = Reader(r.lenenc_bytes())
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
            trx_chars = entry.lenenc_bytes().decode("utf-8", "replace")
        else:
            other += 1
    return SessionChanges(tuple(variables), schema, state_changed, trx_state, trx_chars, other)


def parse_ok(payload: bytes, session_track: bool) -> OK:
    """Parses an OK packet (header 0x00, or 0xFE when it ends a result set)."""
    r = Reader(payload, 1)
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = r.u16()
    warnings = r.u16()
    info = b""
    changes = None
    # The info is length-encoded whatever the client negotiated (servers write
    # it so); only the state block depends on CLIENT_SESSION_TRACK.
    if r.remaining():
        info = r.lenenc_bytes()
    if session_track and status & SERVER_SESSION_STATE_CHANGED and r.remaining():
        changes = parse_session_changes(r.lenenc_bytes())
    return OK(affected, insert_id, status, warnings, info, changes)


def make_ok(status: int, *, affected_rows: int = 0, last_insert_id: int = 0,
            warnings: int = 0, info: bytes = b"", header: int = 0x00) -> bytes:
    """An OK without a state block, for a client without CLIENT_SESSION_TRACK.

    ``info`` ("Records: 2  Duplicates: 0 ...") is length-encoded, as servers
    write it to every client: mysqlnd and libmysqlclient read a length there,
    and only readers that take "the rest of the packet" (PyMySQL) would also
    accept it bare.  An empty info is left out."""
    return b"".join((bytes((header,)), lenenc_int(affected_rows), lenenc_int(last_insert_id),
                     u16(status & ~SERVER_SESSION_STATE_CHANGED), u16(warnings),
                     lenenc_bytes(info) if info else b""))


def make_ok_tracked(status: int, *, affected_rows: int = 0, last_insert_id: int = 0,
                    warnings: int = 0, info: bytes = b"", header: int = 0x00) -> bytes:
    """An OK for a client with CLIENT_SESSION_TRACK: info is length-encoded."""
    return b"".join((bytes((header,)), lenenc_int(affected_rows), lenenc_int(last_insert_id),
                     u16(status & ~SERVER_SESSION_STATE_CHANGED), u16(warnings), lenenc_bytes(info)))


def strip_session_track(payload: bytes) -> bytes:
    """Rewrites a tracked OK for a client that did not ask for CLIENT_SESSION_TRACK.

    The backend connection always tracks session state; the client must
    still see the OK layout it negotiated.
    """
    ok = parse_ok(payload, session_track=True)
    return make_ok(ok.status, affected_rows=ok.affected_rows, last_insert_id=ok.last_insert_id,
                   warnings=ok.warnings, info=ok.info, header=payload[0])


def filter_session_track(payload: bytes, variables: frozenset[str] | None,
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
        block = Reader(r.lenenc_bytes())
        while block.remaining():
            kind = block.u8()
            data = block.lenenc_bytes()
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


def parse_err(payload: bytes) -> ERR:
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


def eof_status(payload: bytes) -> int:
    """Status flags of a classic EOF packet (header 0xFE, payload under 9 bytes)."""
    return payload[3] | (payload[4] << 8) if len(payload) >= 5 else 0


def ok_status(payload: bytes) -> int:
    """Status flags of an OK packet, without building an OK object."""
    r = Reader(payload, 1)
    r.lenenc_int()
    r.lenenc_int()
    return r.u16()


def ok_counters(payload: bytes) -> tuple[int, int, int, int]:
    """(affected rows, last insert id, status flags, warnings) of an OK packet."""
    if len(payload) >= 7 and payload[1] < 0xFB and payload[2] < 0xFB:
        # One-byte counters: nearly every OK, read without a Reader.
        return payload[1], payload[2], payload[3] | (payload[4] << 8), payload[5] | (payload[6] << 8)
    r = Reader(payload, 1)
    affected = r.lenenc_int()
    insert_id = r.lenenc_int()
    status = r.u16()
    return affected, insert_id, status, r.u16() if r.remaining() >= 2 else 0
