"""Follows one command's reply packet by packet to find where it ends.

A backend connection can go back to the pool only once the reply to the
client's command is complete, and only the final OK/EOF says whether a
transaction is still open.  The tracker reads packet headers in place and
looks inside a payload only for the few packets that can end a reply, so
rows pass through without being decoded or copied.
"""

from __future__ import annotations

from pyproxy.wire.buffer import BytesLike, MalformedPacket, Reader
from pyproxy.wire.commands import Reply
from pyproxy.wire.constants import (
    MAX_PAYLOAD,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_PS_OUT_PARAMS,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_CURSOR_EXISTS,
)
from pyproxy.wire.responses import eof_status, ok_counters, ok_status

# States.  Each names what the next packet is expected to be.
FIRST = 0        # first packet of a result: OK, ERR, LOCAL INFILE request or column count
COLUMNS = 1      # column definitions, self._left of them
COLUMNS_EOF = 2  # the classic EOF after column definitions
ROWS = 3         # rows until a terminator
PARAMS = 4       # COM_STMT_PREPARE: parameter definitions
PARAMS_EOF = 5
PCOLUMNS = 6     # COM_STMT_PREPARE: column definitions
PCOLUMNS_EOF = 7
INFILE = 8       # waiting for the client to send a LOCAL INFILE's contents
SINGLE = 9       # any one packet ends the reply
FIELDS = 10      # COM_FIELD_LIST: definitions until a terminator
TEXT = 11        # COM_STATISTICS: one packet of text
DONE = 12

# A cursor opened for the client's COM_STMT_EXECUTE ends the reply after the
# definitions: flagged SERVER_STATUS_CURSOR_EXISTS, and no more results.  A
# CALL's result sets may carry the flag for the routine's own cursor, with
# SERVER_MORE_RESULTS_EXISTS (the CALL's OK is still to come).
_CURSOR_OPENED = SERVER_STATUS_CURSOR_EXISTS | SERVER_MORE_RESULTS_EXISTS

STATE_NAMES = ("FIRST", "COLUMNS", "COLUMNS_EOF", "ROWS", "PARAMS", "PARAMS_EOF", "PCOLUMNS",
               "PCOLUMNS_EOF", "INFILE", "SINGLE", "FIELDS", "TEXT", "DONE")

_START = {
    Reply.RESULT: FIRST, Reply.EXECUTE: FIRST, Reply.FETCH: ROWS, Reply.PREPARE: FIRST,
    Reply.FIELD_LIST: FIELDS, Reply.SINGLE: SINGLE, Reply.STATISTICS: TEXT, Reply.NONE: DONE,
}


def _eof_packet(seq: int, warnings: int, status: int) -> bytes:
    """A whole classic EOF packet, header included."""
    return bytes((5, 0, 0, seq, 0xFE, warnings & 0xFF, (warnings >> 8) & 0xFF,
                  status & 0xFF, (status >> 8) & 0xFF))


class ProtocolViolation(ValueError):
    """The server sent something the reply's grammar does not allow."""


class ResponseTracker:
    """A table-driven reader of one reply, fed the backend's bytes as they arrive.

    After ``scan`` returns, ``state`` tells where the reply stands; ``status``
    holds the flags of the last OK or EOF (-1 while the reply has carried
    none: a prepare reply or statistics may never carry any), ``error`` the code of a final ERR
    (0 if none), and ``oks`` the (start, end) offsets in the scanned buffer
    of every OK packet seen, so session-tracking data can be read (or
    rewritten) without a second pass.
    """

    __slots__ = ("deprecate_eof", "state", "status", "error", "oks", "untracked_change", "seq",
                 "warnings", "affected", "insert_id", "warned", "saw_insert_id", "translate",
                 "terminators", "edits", "changed", "_metadata_status", "prepare_at", "infile_at",
                 "prepared", "_left", "_skip", "_continued", "_reply", "_params", "_pcolumns",
                 "_shift", "_cursor", "_eof_due")

    def __init__(self, deprecate_eof: bool) -> None:
        self.deprecate_eof = deprecate_eof
        self.state = DONE
        self.status = 0
        self.error = 0
        self.seq = 0
        self.warnings = 0
        self.affected = 0
        self.insert_id = 0
        # Whether any packet of the reply carried warnings (or notes), and any
        # OK an insert id: what the statement left in the server session.
        self.warned = False
        self.saw_insert_id = False
        self.oks: list[tuple[int, int]] = []
        # Whether any OK in the last scan carried SERVER_SESSION_STATE_CHANGED.
        self.changed = False
        # Translation for a client without CLIENT_DEPRECATE_EOF (see start()).
        self.translate = False
        self.terminators: list[int] = []
        self.edits: list[tuple[int, int, bytes]] = []
        self._metadata_status = 0
        self._shift = 0
        self._cursor = False
        # Translating a COM_STMT_EXECUTE that asked for a cursor: whether the
        # client needs an EOF after the column definitions depends on the next
        # packet (see _cursor_or_rows).
        self._eof_due = False
        self.untracked_change = False
        self.prepared: tuple[int, int, int] | None = None
        # Offset in the buffer last scanned of the first packet of a prepare reply
        # (its prepare-OK, or the ERR that is the whole reply), -1 if not there.
        self.prepare_at = -1
        # Offset of a LOCAL INFILE request in the buffer last scanned, -1 if none.
        self.infile_at = -1
        self._left = 0
        self._skip = 0
        self._continued = False
        self._reply = Reply.NONE
        self._params = 0
        self._pcolumns = 0

    def start(self, reply: Reply, *, translate: bool = False, cursor: bool = False,
              metadata_status: int = 0) -> None:
        """Begins following the reply to a command just sent.

        With ``translate`` (the connection negotiated CLIENT_DEPRECATE_EOF, the
        client did not) the tracker also works out what that client expects
        instead: ``edits`` holds (start, end, packet) replacements in the
        scanned buffer, an EOF inserted after column or parameter definitions
        (start == end, with ``metadata_status``; when that has
        SERVER_MORE_RESULTS_EXISTS the reply is a CALL's, and a later result
        set's takes the status of the one before) or an EOF in place of an OK
        that ends a result set (whose offset is also in ``terminators``), and
        every later packet header in the buffer gets its sequence id moved up
        in place (the buffer must then be a bytearray).  ``cursor``: a
        COM_STMT_EXECUTE that asked for a cursor, whose definitions the server
        ends with the terminator itself.
        """
        self._reply = reply
        self.prepare_at = self.infile_at = -1
        self._metadata_status = metadata_status & ~SERVER_SESSION_STATE_CHANGED
        self.translate = translate and self.deprecate_eof
        # What the last reply's translation left must not edit this one.
        self.terminators.clear()
        self.edits.clear()
        self._cursor = cursor
        self._eof_due = False
        self._shift = 0
        self.state = _START[reply]
        self.status = -1
        self.error = 0
        self.warnings = 0
        self.affected = 0
        self.insert_id = 0
        self.warned = False
        self.saw_insert_id = False
        self.untracked_change = False
        self.prepared = None
        self._skip = 0
        self._continued = False

    @property
    def done(self) -> bool:
        return self.state == DONE

    def mid_packet(self) -> bool:
        """True while the client has been sent part of a packet (a long row)."""
        return self._skip > 0

    @property
    def shift(self) -> int:
        """How far the client's sequence ids run ahead of the server's in this reply."""
        return self._shift

    def infile_sent(self) -> None:
        """The client finished sending a LOCAL INFILE; the server's OK or ERR follows."""
        if self.state != INFILE:
            raise ProtocolViolation(f"infile_sent in state {STATE_NAMES[self.state]}")
        self.state = FIRST

    def scan(self, buf: BytesLike, pos: int = 0) -> int:
        """Advances over ``buf[pos:]``; returns the offset up to which bytes belong to settled packets.

        Bytes past the returned offset are the start of a packet the tracker
        must see whole (a possible terminator) and have to be offered again
        with more data appended.  Scanning stops at the end of the reply and
        while waiting for the client's LOCAL INFILE data.
        """
        size = len(buf)
        while True:
            if self._skip:
                take = size - pos
                if take < self._skip:
                    self._skip -= take
                    return size
                pos += self._skip
                self._skip = 0
            state = self.state
            if state == DONE or state == INFILE or size - pos < 4:
                return pos
            length = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            # Sequence ids are rewritten only once a packet is taken, never for
            # one left to be offered again.
            if self._continued:
                # The tail of a packet longer than 16 MiB: opaque bytes.
                self._take_header(buf, pos)
                self._continued = length == MAX_PAYLOAD
                self._skip = length
                pos += 4
                continue
            end = pos + 4 + length
            if state == ROWS or state == FIELDS:
                if size - pos < 5 and length:
                    return pos
                first = buf[pos + 4] if length else 0
                if self._eof_due:
                    if first == 0xFE and length < MAX_PAYLOAD and end > size:
                        return pos
                    self._cursor_or_rows(buf, pos, end, first)
                if (first == 0xFE and length < MAX_PAYLOAD) or first == 0xFF:
                    if end > size:
                        return pos
                    self._take_header(buf, pos)
                    self._terminate(buf, pos + 4, end, first)
                    pos = end
                    continue
                if self._shift:
                    self._take_header(buf, pos)
                else:
                    self.seq = buf[pos + 3]
                self._continued = length == MAX_PAYLOAD
                self._skip = length
                pos += 4
                continue
            if state == COLUMNS or state == PARAMS or state == PCOLUMNS:
                if self._left == 1 and end > size and length < MAX_PAYLOAD:
                    # The last definition may end the reply, or be followed by
                    # an EOF for the client: see it whole.
                    return pos
                self._take_header(buf, pos)
                self._continued = length == MAX_PAYLOAD
                self._skip = length
                pos += 4
                self._left -= 1
                if self._left == 0:
                    self._after_definitions(end)
                continue
            # Every other packet is small and must be seen whole.
            if end > size:
                return pos
            self._take_header(buf, pos)
            self._whole(buf, pos + 4, end)
            pos = end

    def _take_header(self, buf: BytesLike, pos: int) -> None:
        seq = buf[pos + 3]
        if self._shift:
            seq = (seq + self._shift) & 0xFF
            buf[pos + 3] = seq  # type: ignore[index]  # a bytearray when translating
        self.seq = seq

    def _insert_eof(self, at: int) -> None:
        """The client expects an EOF here that the server did not send.  Its warning
        count is known for a prepare reply (the prepare-OK carries it), not yet for
        a result set's definitions."""
        self.seq = (self.seq + 1) & 0xFF
        warnings = self.warnings if self._reply == Reply.PREPARE else 0
        self.edits.append((at, at, _eof_packet(self.seq, warnings, self._metadata_status)))
        self._shift += 1

    def _after_definitions(self, end: int) -> None:
        state = self.state
        translate = self.translate
        if state == COLUMNS:
            if translate and self._cursor and self._reply == Reply.EXECUTE:
                self._eof_due = True
            elif translate:
                self._insert_eof(end)
            self.state = ROWS if self.deprecate_eof else COLUMNS_EOF
        elif state == PARAMS:
            if not self.deprecate_eof:
                self.state = PARAMS_EOF
            else:
                if translate:
                    self._insert_eof(end)
                self._prepare_columns()
        elif state == PCOLUMNS:
            if translate:
                self._insert_eof(end)
            self.state = DONE if self.deprecate_eof else PCOLUMNS_EOF

    def _cursor_or_rows(self, buf: BytesLike, pos: int, end: int, first: int) -> None:
        """The first packet after the definitions of an execute that asked for a
        cursor.  A server that opened one ends the definitions itself, with a
        terminator flagged SERVER_STATUS_CURSOR_EXISTS (translated into the
        client's EOF like any other); one that did not (a CALL, whose results
        cannot be a cursor) sends result sets as usual, and the client's EOF
        after the definitions goes in before this packet."""
        self._eof_due = False
        if first == 0xFE and end - pos - 4 >= 7:
            try:
                _, _, status, _ = ok_counters(buf[pos + 4:end])
            except MalformedPacket as exc:
                raise ProtocolViolation(str(exc)) from exc
            if status & _CURSOR_OPENED == SERVER_STATUS_CURSOR_EXISTS:
                return
        self._insert_eof(pos)

    def _prepare_columns(self) -> None:
        if self._pcolumns:
            self._left = self._pcolumns
            self.state = PCOLUMNS
        else:
            self.state = DONE

    def _terminate(self, buf: BytesLike, start: int, end: int, first: int) -> None:
        """A terminator in ROWS or FIELDS: ERR, classic EOF, or an OK with header 0xFE."""
        if first == 0xFF:
            self.error = buf[start + 1] | (buf[start + 2] << 8) if end - start >= 3 else 1
            self.state = DONE
            return
        payload = buf[start:end]
        if self.deprecate_eof and end - start >= 7:
            try:
                _, _, status, self.warnings = ok_counters(payload)
            except MalformedPacket as exc:
                raise ProtocolViolation(str(exc)) from exc
            if self.warnings:
                self.warned = True
            self.oks.append((start - 4, end))
            if status & SERVER_SESSION_STATE_CHANGED:
                self.changed = True
            if self.translate:
                self.terminators.append(start - 4)
                self.edits.append((start - 4, end, _eof_packet(
                    self.seq, self.warnings, status & ~SERVER_SESSION_STATE_CHANGED)))
                if self._metadata_status & status & SERVER_MORE_RESULTS_EXISTS:
                    # Within a CALL: the next result set's definitions end with
                    # the status the server has now.
                    self._metadata_status = status & ~(SERVER_SESSION_STATE_CHANGED | SERVER_PS_OUT_PARAMS)
        else:
            status = eof_status(payload)
            self.warnings = payload[1] | (payload[2] << 8) if len(payload) >= 3 else 0
            if self.warnings:
                self.warned = True
            if status & SERVER_SESSION_STATE_CHANGED:
                # A classic EOF says state changed but cannot say what.
                self.untracked_change = True
        self._set_status(status)

    def _set_status(self, status: int) -> None:
        self.status = status
        if status & SERVER_MORE_RESULTS_EXISTS and self._reply in (Reply.RESULT, Reply.EXECUTE):
            self.state = FIRST
        else:
            self.state = DONE

    def _whole(self, buf: BytesLike, start: int, end: int) -> None:
        state = self.state
        first = buf[start] if end > start else -1
        if state == TEXT:
            self.state = DONE
            return
        if first == 0xFF:
            self.error = buf[start + 1] | (buf[start + 2] << 8) if end - start >= 3 else 1
            self.state = DONE
            if self._reply == Reply.PREPARE:
                self.prepare_at = start - 4
            return
        if state == FIRST and 0 < first < 0xFB and end - start == 1:
            # The common case: a result set with fewer than 251 columns.
            self._left = first
            self.state = COLUMNS
            return
        payload = buf[start:end]
        try:
            if state == FIRST:
                if first == 0x00:
                    if self._reply == Reply.PREPARE:
                        self.prepare_at = start - 4
                        self._prepare_ok(payload)
                        return
                    self.oks.append((start - 4, end))
                    # The counters of the last statement, which LAST_INSERT_ID(),
                    # ROW_COUNT() and SHOW WARNINGS read back later.
                    self.affected, self.insert_id, status, self.warnings = ok_counters(payload)
                    if self.warnings:
                        self.warned = True
                    if self.insert_id:
                        self.saw_insert_id = True
                    if status & SERVER_SESSION_STATE_CHANGED:
                        self.changed = True
                        # An OK with a state block reports every change the server
                        # has not reported yet, those a classic EOF before it (in
                        # a CALL) only flagged too.  (One without says nothing.)
                        self.untracked_change = False
                    self._set_status(status)
                elif first == 0xFB and (self._reply == Reply.RESULT or self._reply == Reply.EXECUTE):
                    # LOAD DATA LOCAL asks for the file in reply to a text query
                    # or, prepared, to its COM_STMT_EXECUTE.
                    self.infile_at = start - 4
                    self.state = INFILE
                elif first == 0xFE and end - start < 9:
                    raise ProtocolViolation("EOF packet where a result was expected")
                else:
                    columns = Reader(payload).lenenc_int()
                    if columns == 0:
                        raise ProtocolViolation("result set with no columns")
                    self._left = columns
                    self.state = COLUMNS
            elif state == SINGLE:
                if first == 0x00:
                    self.oks.append((start - 4, end))
                    self.status = ok_status(payload)
                    if self.status & SERVER_SESSION_STATE_CHANGED:
                        self.changed = True
                elif first == 0xFE:
                    self.status = eof_status(payload)
                self.state = DONE
            elif state in (COLUMNS_EOF, PARAMS_EOF, PCOLUMNS_EOF):
                if first != 0xFE:
                    raise ProtocolViolation(f"expected EOF in {STATE_NAMES[state]}")
                status = eof_status(payload)
                self.status = status
                if state == COLUMNS_EOF:
                    if self._cursor and status & _CURSOR_OPENED == SERVER_STATUS_CURSOR_EXISTS:
                        self.state = DONE
                    else:
                        self.state = ROWS
                elif state == PARAMS_EOF:
                    self._prepare_columns()
                else:
                    self.state = DONE
            else:
                raise ProtocolViolation(f"unexpected packet in {STATE_NAMES[state]}")
        except MalformedPacket as exc:
            raise ProtocolViolation(str(exc)) from exc

    def _prepare_ok(self, payload: BytesLike) -> None:
        r = Reader(payload, 1)
        statement = r.u32()
        columns = r.u16()
        params = r.u16()
        if r.remaining() >= 3:
            r.u8()
            self.warnings = r.u16()
            self.warned = self.warnings > 0
        self.prepared = (statement, columns, params)
        self._pcolumns = columns
        if params:
            self._left = params
            self.state = PARAMS
        else:
            self._prepare_columns()
