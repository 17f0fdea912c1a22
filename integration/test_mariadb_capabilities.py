"""MariaDB's extended capabilities through pyproxy, and what a client's capability flags change.

A MariaDB server announces capability bits 32-63 in its greeting's filler; a MariaDB client
answers with its own.  pyproxy offers MARIADB_CLIENT_EXTENDED_METADATA (column definitions
carry extended type information such as ``format=json``) and
MARIADB_CLIENT_STMT_BULK_OPERATIONS (COM_STMT_BULK_EXECUTE) when the server does, and gives
each client what it would get directly: raw sessions compare the packets, the mariadb CLI
its ``--column-type-info``.  Also here: a CALL's reply to a client without
CLIENT_DEPRECATE_EOF, byte for byte (the EOF after the column definitions says
SERVER_MORE_RESULTS_EXISTS), and CLIENT_PS_MULTI_RESULTS taken from the client.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from integration import servers
from integration.raw_session import RawSession
from pyproxy.wire.constants import (
    CLIENT,
    CLIENT_MYSQL,
    COM_STMT_BULK_EXECUTE,
    MARIADB_CLIENT_EXTENDED_METADATA,
    MARIADB_CLIENT_STMT_BULK_OPERATIONS,
)

DB = servers.APP_DATABASE
BASE = (CLIENT.LONG_FLAG | CLIENT.TRANSACTIONS | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS
        | CLIENT.DEPRECATE_EOF)
MARIADB = MARIADB_CLIENT_EXTENDED_METADATA | MARIADB_CLIENT_STMT_BULK_OPERATIONS
TABLE = "caps_doc"


@pytest.fixture(scope="module")
def setup(db_server: servers.DbServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A pyproxy with a pool of two, and a table with a JSON column."""
    if db_server.flavor != "mariadb":
        pytest.skip("MariaDB's extended capabilities need a MariaDB server")
    proxy = servers.start_proxy(db_server, tmp_path_factory.mktemp("caps"), pool={"max_connections": 2})
    root = db_server.connect(database=DB)
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE OR REPLACE TABLE {TABLE} (id INT PRIMARY KEY, doc JSON, p POINT)")
            cur.execute(f"INSERT INTO {TABLE} VALUES (1, '{{\"a\": 1}}', POINT(1, 2))")
            cur.execute("CREATE OR REPLACE TABLE caps_bulk (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
            cur.execute("CREATE OR REPLACE PROCEDURE caps_rows() BEGIN SELECT 1 AS a; "
                        "SELECT 2 AS b, 'x' AS c; END")
        yield db_server, proxy
    finally:
        root.close()
        proxy.stop()


def session(target: Any, capabilities: int) -> RawSession:
    return RawSession(target.host, target.port, servers.APP_USER, servers.APP_PASSWORD, DB, capabilities)


def without_index_hints(reply: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The reply with the index-use hints (0x10, 0x20) cleared in an EOF right after column
    definitions: pyproxy inserts that EOF for a client without CLIENT_DEPRECATE_EOF before
    the rows pass, when the server has not yet said how it read the table (the final EOF
    says it, as directly)."""
    out = []
    previous = b""
    for seq, payload in reply:
        if payload[:1] == b"\xfe" and len(payload) == 5 and previous.startswith(b"\x03def"):
            payload = payload[:3] + bytes((payload[3] & ~0x30,)) + payload[4:]
        out.append((seq, payload))
        previous = payload
    return out


def both(setup: Any, capabilities: int) -> tuple[RawSession, RawSession]:
    db_server, proxy = setup
    return session(db_server, capabilities), session(proxy, capabilities)


def test_greeting_offers_extended_capabilities(setup: Any) -> None:
    """Like the server, pyproxy clears CLIENT_MYSQL and announces bulk operations and extended
    metadata in the filler; neither progress reports nor cached metadata."""
    direct, through = both(setup, BASE)
    server, offered = direct.greeting.capabilities, through.greeting.capabilities
    assert not offered & CLIENT_MYSQL and not server & CLIENT_MYSQL
    assert offered >> 32 == (MARIADB >> 32) & (server >> 32)
    assert offered & MARIADB == MARIADB
    direct.close()
    through.close()


@pytest.mark.parametrize("capabilities", [BASE | MARIADB, BASE | CLIENT_MYSQL, BASE | MARIADB_CLIENT_EXTENDED_METADATA,
                                          (BASE & ~CLIENT.DEPRECATE_EOF) | MARIADB],
                         ids=["mariadb-client", "client-mysql", "metadata-only", "classic-eof"])
def test_column_definitions_as_direct(setup: Any, capabilities: int) -> None:
    """Column definitions carry format=json and the geometry type name only for a client that
    asked for extended metadata, through pyproxy as directly; clients of both kinds share
    the pool, one after the other."""
    direct, through = both(setup, capabilities)
    sql = f"\x03SELECT id, doc, p FROM {TABLE}".encode()
    expected = direct.command(sql)
    assert without_index_hints(through.command(sql)) == without_index_hints(expected)
    extended = any(b"\x04json" in payload for _, payload in expected)
    assert extended == bool(capabilities & MARIADB_CLIENT_EXTENDED_METADATA and not capabilities & CLIENT_MYSQL)
    # The binary protocol's definitions too, at prepare and at execute.
    prepare = f"\x16SELECT id, doc FROM {TABLE} WHERE id = ?".encode()
    prepared_direct, prepared_through = direct.command(prepare), through.command(prepare)
    assert [p for _, p in prepared_through][1:] == [p for _, p in prepared_direct][1:]
    execute = b"\x00\x01\x00\x00\x00\x00\x01\x03\x00" + (1).to_bytes(4, "little")
    assert (through.command(b"\x17" + prepared_through[0][1][1:5] + execute)
            == direct.command(b"\x17" + prepared_direct[0][1][1:5] + execute))
    direct.close()
    through.close()


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="no mariadb command-line client")
def test_mariadb_cli_column_type_info(setup: Any) -> None:
    """``mariadb --column-type-info`` (libmariadb) shows ``BLOB (format=json)`` through pyproxy
    as directly."""
    def run(target: Any) -> str:
        return subprocess.run(
            ["mariadb", "--no-defaults", "-t", "--column-type-info", "-h", target.host, "-P", str(target.port),
             "-u", servers.APP_USER, f"-p{servers.APP_PASSWORD}", DB, "-e", f"SELECT id, doc, ST_AsText(p) AS p, p AS g FROM {TABLE}"],
            capture_output=True, check=True, timeout=30).stdout.decode("utf-8", "replace")

    db_server, proxy = setup
    direct = run(db_server)
    assert "Type:       BLOB (format=json)" in direct
    assert "Type:       GEOMETRY (type=point)" in direct
    assert run(proxy) == direct


def bulk(statement: bytes, rows: list[int], types: bool = True) -> bytes:
    """COM_STMT_BULK_EXECUTE of one INT parameter per row."""
    head = bytes((COM_STMT_BULK_EXECUTE,)) + statement
    if types:
        head += b"\x80\x00\x03\x00"
    else:
        head += b"\x00\x00"
    return head + b"".join(b"\x00" + v.to_bytes(4, "little") for v in rows)


def test_bulk_insert(setup: Any) -> None:
    """COM_STMT_BULK_EXECUTE: one OK for every row, as directly; then without types, on
    whichever connection pyproxy lends (the client's statement is prepared there again and
    given the types bound last); by statement id -1, the statement prepared last; with
    RETURNING, one result set."""
    db_server, proxy = setup
    direct, through = both(setup, BASE | MARIADB)
    insert = b"\x16INSERT INTO caps_bulk (v) VALUES (?)"
    ids = []
    for raw in (direct, through):
        reply = raw.command(insert)
        ids.append(reply[0][1][1:5])
    first = direct.command(bulk(ids[0], [1, 2, 3]))
    assert through.command(bulk(ids[1], [1, 2, 3]))[0][1][:2] == first[0][1][:2] == b"\x00\x03"
    # Another client holds a connection in a transaction: the next one this client
    # borrows may be another (the pool has two), which has no copy of the statement yet.
    other = session(proxy, BASE)
    other.command(b"\x03BEGIN")
    other.command(b"\x03SELECT 1")
    for raw, statement in ((direct, ids[0]), (through, ids[1])):
        assert raw.command(bulk(statement, [4, 5], types=False))[0][1][:2] == b"\x00\x02"
        assert raw.command(bulk(b"\xff\xff\xff\xff", [6]))[0][1][:2] == b"\x00\x01"
    other.command(b"\x03COMMIT")
    other.close()
    returning = b"\x16INSERT INTO caps_bulk (v) VALUES (?) RETURNING v"
    replies = []
    for raw in (direct, through):
        statement = raw.command(returning)[0][1][1:5]
        replies.append(raw.command(bulk(statement, [7, 8])))
    assert replies[1] == replies[0]
    assert [p for _, p in replies[0][-3:-1]] == [b"\x00\x00\x07\x00\x00\x00", b"\x00\x00\x08\x00\x00\x00"]
    # Unknown statements, as directly (the server's words for the command aside).
    for raw in (direct, through):
        assert raw.command(bulk(b"\x55\x55\x00\x00", [1]))[0][1][:3] == b"\xff\xdb\x04"
    with db_server.connect(database=DB) as root, root.cursor() as cur:
        cur.execute("SELECT v, COUNT(*) FROM caps_bulk GROUP BY v ORDER BY v")
        assert cur.fetchall() == tuple((v, 2) for v in range(1, 9))
    direct.close()
    through.close()


def test_bulk_refused_without_the_capability(setup: Any) -> None:
    """A client that did not negotiate bulk operations gets the server's error 1295."""
    direct, through = both(setup, BASE | CLIENT_MYSQL)
    replies = []
    for raw in (direct, through):
        statement = raw.command(b"\x16INSERT INTO caps_bulk (v) VALUES (?)")[0][1][1:5]
        replies.append(raw.command(bulk(statement, [1])))
        assert raw.command(b"\x03SELECT 1")[-2][1] == b"\x011"
    assert replies[1] == replies[0]
    assert replies[0][0][1][:3] == b"\xff\x0f\x05"
    direct.close()
    through.close()


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["classic", "deprecate-eof"])
def test_call_reply_byte_for_byte(setup: Any, deprecate_eof: bool) -> None:
    """A CALL's reply, every packet and status, as directly: for a client without
    CLIENT_DEPRECATE_EOF the EOF pyproxy inserts after each result set's definitions says
    SERVER_MORE_RESULTS_EXISTS, as the server's own does inside a CALL."""
    capabilities = (BASE if deprecate_eof else BASE & ~CLIENT.DEPRECATE_EOF) | CLIENT_MYSQL
    direct, through = both(setup, capabilities)
    for _ in range(2):
        assert through.command(b"\x03CALL caps_rows()") == direct.command(b"\x03CALL caps_rows()")
    direct.close()
    through.close()


def test_out_parameters_follow_ps_multi_results(setup: Any) -> None:
    """A prepared CALL with OUT parameters: their result set comes back only to a client that
    asked for CLIENT_PS_MULTI_RESULTS, through pyproxy as directly, whichever client used
    the pool before."""
    db_server, _ = setup
    with db_server.connect(database=DB) as root, root.cursor() as cur:
        cur.execute("CREATE OR REPLACE PROCEDURE caps_out(OUT x INT) SET x = 5")
    for capabilities in (BASE | CLIENT_MYSQL, (BASE & ~CLIENT.PS_MULTI_RESULTS) | CLIENT_MYSQL,
                         BASE | CLIENT_MYSQL):
        direct, through = both(setup, capabilities)
        replies = []
        for raw in (direct, through):
            statement = raw.command(b"\x16CALL caps_out(?)")[0][1][1:5]
            replies.append(raw.command(b"\x17" + statement + b"\x00\x01\x00\x00\x00\x00\x01\x03\x00"
                                       + (0).to_bytes(4, "little")))
        assert replies[1] == replies[0]
        assert (len(replies[0]) > 1) == bool(capabilities & CLIENT.PS_MULTI_RESULTS)
        direct.close()
        through.close()


def test_bulk_errors_as_direct(setup: Any) -> None:
    """Bulk commands the server refuses get its very error packets: an unknown statement
    (in the server's words), flags other than "types follow" (1295, before the statement
    is looked for), a command cut short (1835); unknown statements for the other commands."""
    direct, through = both(setup, BASE | MARIADB)
    unknown = [bulk(b"\x55\x00\x00\x00", [1]), b"\xfa\x55\x00\x00\x00\x40\x00", b"\xfa\x55\x00\x00\x00",
               b"\x17\x55\x00\x00\x00\x00\x01\x00\x00\x00", b"\x1c\x55\x00\x00\x00\x01\x00\x00\x00",
               b"\x1a\x55\x00\x00\x00"]
    for command in unknown:
        assert through.command(command) == direct.command(command), command
    # After the statement id: unknown flags, nothing, types cut short.
    tails = [b"\x01\x00\x03\x00\x00\x01\x00\x00\x00", b"", b"\x80\x00\x03"]
    statements = [raw.command(b"\x16INSERT INTO caps_bulk (v) VALUES (?)")[0][1][1:5] for raw in (direct, through)]
    for tail in tails:
        assert (through.command(b"\xfa" + statements[1] + tail)
                == direct.command(b"\xfa" + statements[0] + tail)), tail
    direct.close()
    through.close()
