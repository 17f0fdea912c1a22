"""Prepared statements shared across backend connections: the statements and their caches.

A client's statement ids are pyproxy's own (pyproxy.prepared runs the
COM_STMT_* commands with what is here).  The statement itself is
prepared on whichever backend connection runs it, the first time that
connection needs it, and stays cached there (per SQL text, least recently
used closed first) for every client that prepares the same SQL.  The client's
COM_STMT_EXECUTE (and MariaDB's COM_STMT_BULK_EXECUTE) is then rewritten:
the backend's statement id, and the parameter types when the backend's copy
was last bound with other ones (drivers send types only with the first
execute).
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

from pyproxy.sqltext import Found
from pyproxy.wire.buffer import MalformedPacket
from pyproxy.wire.constants import BULK_SEND_TYPES


@attrs.define(eq=False, slots=True)
class ClientStatement:
    """A statement as one client prepared it."""

    id: int
    sql: bytes
    params: int
    columns: int
    # The parameter types (2 bytes each) the client bound last.
    types: bytes | None = None
    # COM_STMT_SEND_LONG_DATA payloads waiting for the next execute, with the
    # statement id cut off: they are replayed on the connection that runs it.
    long_data: list[bytes] | None = None
    # Bytes of long data per parameter, and whether one passed the server's
    # max_allowed_packet (the execute then gets the server's error).
    long_data_sizes: dict[int, int] | None = None
    long_data_too_long: bool = False
    # The backend statement whose cursor this statement has open on the
    # connection its session holds; taken out of that connection's cache
    # while open, so that no other execute reuses (and closes) it.
    cursor: BackendStatement | None = None
    # What sqltext.scan() found in ``sql``, read once at prepare.
    found: Found | None = None
    # A KILL, which pyproxy runs itself (pyproxy.kill): never on a server.
    kill: bool = False

    def add_long_data(self, chunk: bytes, limit: int) -> None:
        """Keeps one COM_STMT_SEND_LONG_DATA chunk (parameter number, then data)
        for the next execute, as the server would, up to ``limit`` bytes per
        parameter; past it, everything kept is dropped and the execute fails,
        as on the server, without pyproxy holding what the server would not."""
        if self.long_data_too_long or len(chunk) < 2:
            return
        param = chunk[0] | (chunk[1] << 8)
        sizes = self.long_data_sizes if self.long_data is not None and self.long_data_sizes is not None else {}
        size = sizes.get(param, 0) + len(chunk) - 2
        if size > limit:
            self.long_data = None
            self.long_data_sizes = None
            self.long_data_too_long = True
            return
        sizes[param] = size
        self.long_data_sizes = sizes
        if self.long_data is None:
            self.long_data = []
        self.long_data.append(chunk)


@attrs.define(eq=False, slots=True)
class BackendStatement:
    """A statement prepared on one backend connection."""

    id: int
    params: int
    columns: int
    # The parameter types the server last saw bound to it.
    types: bytes | None = None


class StatementCache:
    """One backend connection's prepared statements, by SQL text, bounded."""

    __slots__ = ("capacity", "_by_sql")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_sql: OrderedDict[bytes, BackendStatement] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_sql)

    def get(self, sql: bytes) -> BackendStatement | None:
        statement = self._by_sql.get(sql)
        if statement is not None:
            self._by_sql.move_to_end(sql)
        return statement

    def add(self, sql: bytes, statement: BackendStatement) -> list[int]:
        """Caches a statement; returns the ids the server should close: a
        replaced copy of the same SQL, and the least recently used beyond capacity."""
        stale = []
        old = self._by_sql.pop(sql, None)
        if old is not None and old.id != statement.id:
            stale.append(old.id)
        self._by_sql[sql] = statement
        while len(self._by_sql) > self.capacity:
            _, evicted = self._by_sql.popitem(last=False)
            stale.append(evicted.id)
        return stale

    def detach(self, sql: bytes, statement: BackendStatement) -> None:
        """Takes ``statement`` out of the cache (it holds an open cursor); add()
        puts it back."""
        if self._by_sql.get(sql) is statement:
            del self._by_sql[sql]

    def shrink(self, keep: int) -> list[int]:
        """Evicts least recently used statements down to ``keep``; returns their ids."""
        evicted = []
        while len(self._by_sql) > keep:
            _, statement = self._by_sql.popitem(last=False)
            evicted.append(statement.id)
        return evicted

    def clear(self) -> None:
        """The server dropped every statement (COM_RESET_CONNECTION, COM_CHANGE_USER)."""
        self._by_sql.clear()


def execute_types(payload: bytes, params: int) -> bytes | None:
    """The parameter types a COM_STMT_EXECUTE binds, or None if it binds none."""
    if params == 0:
        return None
    bitmap = (params + 7) // 8
    flag_at = 10 + bitmap
    if len(payload) <= flag_at:
        raise MalformedPacket("COM_STMT_EXECUTE ends before its new-params-bound flag")
    if payload[flag_at] != 1:
        return None
    types = payload[flag_at + 1:flag_at + 1 + 2 * params]
    if len(types) != 2 * params:
        raise MalformedPacket("COM_STMT_EXECUTE ends inside its parameter types")
    return types


def rewrite_execute(payload: bytes, backend_id: int, params: int, types: bytes | None) -> bytes:
    """The client's COM_STMT_EXECUTE for the backend's statement ``backend_id``.

    ``types``: when given and the execute does not bind types itself, they
    are inserted (new-params-bound = 1), because the backend's copy of the
    statement was prepared afresh or last bound with other types.
    """
    head = payload[:1] + backend_id.to_bytes(4, "little") + payload[5:10]
    if params == 0 or types is None:
        return head + payload[10:]
    bitmap = (params + 7) // 8
    flag_at = 10 + bitmap
    if payload[flag_at] == 1:
        return head + payload[10:]
    return head + payload[10:flag_at] + b"\x01" + types + payload[flag_at + 1:]


def bulk_types(payload: bytes, params: int) -> bytes | None:
    """The parameter types a COM_STMT_BULK_EXECUTE sends (its flags say whether
    it does), or None if it sends none: then the server uses the ones bound last."""
    if len(payload) < 7:
        raise MalformedPacket("COM_STMT_BULK_EXECUTE ends before its flags")
    if not payload[5] & BULK_SEND_TYPES:
        return None
    types = payload[7:7 + 2 * params]
    if len(types) != 2 * params:
        raise MalformedPacket("COM_STMT_BULK_EXECUTE ends inside its parameter types")
    return types


def rewrite_bulk(payload: bytes, backend_id: int, types: bytes | None) -> bytes:
    """The client's COM_STMT_BULK_EXECUTE for the backend's statement ``backend_id``;
    ``types`` as for rewrite_execute: inserted (with the send-types flag) when
    the bulk does not send them itself."""
    head = payload[:1] + backend_id.to_bytes(4, "little")
    if types is None or payload[5] & BULK_SEND_TYPES:
        return head + payload[5:]
    return head + bytes((payload[5] | BULK_SEND_TYPES,)) + payload[6:7] + types + payload[7:]
