"""pyproxy.statements: the per-connection cache and the COM_STMT_EXECUTE rewriting."""

from __future__ import annotations

import pytest

import vectors
from pyproxy.statements import (
    BackendStatement,
    StatementCache,
    bulk_types,
    execute_types,
    rewrite_bulk,
    rewrite_execute,
)
from pyproxy.wire.buffer import MalformedPacket

TYPES = b"\x08\x00\xfd\x00"
BOUND = (b"\x17\x01\x00\x00\x00" b"\x00" b"\x01\x00\x00\x00" b"\x00" b"\x01" + TYPES
         + (7).to_bytes(8, "little") + b"\x03abc")
UNBOUND = (b"\x17\x01\x00\x00\x00" b"\x00" b"\x01\x00\x00\x00" b"\x00" b"\x00"
           + (7).to_bytes(8, "little") + b"\x03abc")


def test_cache_is_lru_and_bounded() -> None:
    """Past capacity the least recently used statement is evicted and its id returned for closing."""
    cache = StatementCache(2)
    assert cache.add(b"a", BackendStatement(1, 0, 1)) == []
    assert cache.add(b"b", BackendStatement(2, 0, 1)) == []
    assert cache.get(b"a").id == 1  # a is now the most recent
    assert cache.add(b"c", BackendStatement(3, 0, 1)) == [2]
    assert cache.get(b"b") is None and len(cache) == 2


def test_cache_replacing_the_same_sql_closes_the_old_copy() -> None:
    """Preparing the same SQL again on a connection leaves one copy; the old one is closed."""
    cache = StatementCache(4)
    cache.add(b"a", BackendStatement(1, 0, 1))
    assert cache.add(b"a", BackendStatement(5, 0, 1)) == [1]
    assert cache.get(b"a").id == 5


def test_execute_types() -> None:
    """Types are read only when the execute binds them (new-params-bound = 1)."""
    assert execute_types(BOUND, 2) == TYPES
    assert execute_types(UNBOUND, 2) is None
    assert execute_types(b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00", 0) is None
    with pytest.raises(MalformedPacket):
        execute_types(BOUND[:12], 2)


def test_rewrite_id_only() -> None:
    """Same types on the server: only the statement id changes."""
    assert rewrite_execute(BOUND, 9, 2, None) == b"\x17\x09\x00\x00\x00" + BOUND[5:]
    assert rewrite_execute(UNBOUND, 9, 2, None) == b"\x17\x09\x00\x00\x00" + UNBOUND[5:]


def test_rewrite_inserts_types_for_a_fresh_copy() -> None:
    """An execute that binds no types gets the client's types on a connection whose copy
    has not seen them; one that binds its own keeps them."""
    assert rewrite_execute(UNBOUND, 9, 2, TYPES) == b"\x17\x09\x00\x00\x00" + BOUND[5:]
    assert rewrite_execute(BOUND, 9, 2, b"\x01\x00\x01\x00") == b"\x17\x09\x00\x00\x00" + BOUND[5:]


def test_cache_shrinks_least_recent_first() -> None:
    """When the server's statement limit is hit, half the cache goes, oldest first."""
    cache = StatementCache(8)
    for i in range(4):
        cache.add(bytes((i,)), BackendStatement(i + 10, 0, 1))
    cache.get(b"\x00")
    assert cache.shrink(2) == [11, 12]
    assert len(cache) == 2 and cache.get(b"\x00") is not None


# --- COM_STMT_BULK_EXECUTE (MariaDB) ---------------------------------------------------------

BULK_WITHOUT_TYPES = b"\xfa\x01\x00\x00\x00" + b"\x00\x00" + b"\x00" + (5).to_bytes(4, "little") \
    + b"\x01"


def test_bulk_types_from_a_captured_bulk() -> None:
    """The captured bulk sends its types (flag 128): one LONG parameter."""
    assert bulk_types(vectors.BULK_EXECUTE, 1) == b"\x03\x00"
    assert bulk_types(BULK_WITHOUT_TYPES, 1) is None


def test_bulk_types_truncated() -> None:
    with pytest.raises(MalformedPacket):
        bulk_types(b"\xfa\x01\x00\x00\x00\x80", 1)
    with pytest.raises(MalformedPacket):
        bulk_types(b"\xfa\x01\x00\x00\x00\x80\x00\x03", 1)


def test_rewrite_bulk_maps_the_statement_id() -> None:
    """The backend's statement id; a bulk that sends its types is otherwise unchanged."""
    rewritten = rewrite_bulk(vectors.BULK_EXECUTE, 0x0102, b"\x08\x00")
    assert rewritten == b"\xfa\x02\x01\x00\x00" + vectors.BULK_EXECUTE[5:]


def test_rewrite_bulk_inserts_types() -> None:
    """Without types of its own, a bulk on a backend statement bound otherwise (or never)
    gets the client's last types and the send-types flag, its rows untouched."""
    rewritten = rewrite_bulk(BULK_WITHOUT_TYPES, 9, b"\x03\x00")
    assert rewritten == b"\xfa\x09\x00\x00\x00" + b"\x80\x00" + b"\x03\x00" + BULK_WITHOUT_TYPES[7:]
    assert bulk_types(rewritten, 1) == b"\x03\x00"
    assert rewrite_bulk(BULK_WITHOUT_TYPES, 9, None) == b"\xfa\x09\x00\x00\x00" + BULK_WITHOUT_TYPES[5:]
