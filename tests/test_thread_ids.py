"""pyproxy.thread_ids: CONNECTION_ID(), IS_USED_LOCK() and PROCESSLIST answer the client's id."""

from __future__ import annotations

from typing import Any

import pytest

import vectors
from pyproxy.thread_ids import Mapping, expand_processlist, rewrite, rewrite_connection_id
from pyproxy.wire.commands import make_query
from pyproxy.wire.framing import PacketFramer, frame
from test_frontend import LoggedIn, err_of


@pytest.mark.parametrize(("sql", "expected"), [
    (b"SELECT CONNECTION_ID()", b"SELECT 42 AS `CONNECTION_ID()`"),
    (b"select connection_id ( ) as id", b"select 42 as id"),
    (b"SELECT CONNECTION_ID() id", b"SELECT 42 id"),
    (b"SELECT a, CONNECTION_ID() FROM t", b"SELECT a, 42 AS `CONNECTION_ID()` FROM t"),
    (b"SELECT CONNECTION_ID()+1", b"SELECT 42+1 AS `CONNECTION_ID()+1`"),
    (b"SELECT DISTINCT CONNECTION_ID() FROM t", b"SELECT DISTINCT 42 AS `CONNECTION_ID()` FROM t"),
    (b"SELECT IF(1, CONNECTION_ID(), 0), 2", b"SELECT IF(1, 42, 0) AS `IF(1, CONNECTION_ID(), 0)`, 2"),
    (b"SELECT CONNECTION_ID() IS NULL", b"SELECT 42 IS NULL AS `CONNECTION_ID() IS NULL`"),
    (b"SELECT CASE WHEN 1 THEN CONNECTION_ID() END",
     b"SELECT CASE WHEN 1 THEN 42 END AS `CASE WHEN 1 THEN CONNECTION_ID() END`"),
    (b"SELECT CONNECTION_ID() INTO @x", b"SELECT 42 AS `CONNECTION_ID()` INTO @x"),
    (b"SELECT (SELECT CONNECTION_ID())",
     b"SELECT (SELECT 42 AS `CONNECTION_ID()`) AS `(SELECT CONNECTION_ID())`"),
    (b"SELECT x FROM t WHERE y = CONNECTION_ID() ORDER BY z", b"SELECT x FROM t WHERE y = 42 ORDER BY z"),
    (b"SET @me = CONNECTION_ID()", b"SET @me = 42"),
    (b"KILL CONNECTION_ID()", b"KILL 42"),
    (b"KILL QUERY connection_id();", b"KILL QUERY 42;"),
    (b"SELECT /*!CONNECTION_ID()*/", b"SELECT /*!42 AS `CONNECTION_ID()`*/"),
    (b"SELECT CONNECTION_ID() -- why\n", b"SELECT 42 AS `CONNECTION_ID()` -- why\n"),
    (b"SELECT CONNECTION_ID(); CREATE TABLE t (a INT DEFAULT CONNECTION_ID())",
     b"SELECT 42 AS `CONNECTION_ID()`; CREATE TABLE t (a INT DEFAULT CONNECTION_ID())"),
])
def test_connection_id_rewritten(sql: bytes, expected: bytes) -> None:
    assert rewrite_connection_id(sql, 42) == expected


@pytest.mark.parametrize("sql", [
    b"SELECT 'CONNECTION_ID()'",
    b'SELECT "CONNECTION_ID()"',
    b"SELECT `CONNECTION_ID()` FROM t",
    b"/* CONNECTION_ID() */ SELECT 1",
    b"# CONNECTION_ID()\nSELECT 1",
    b"-- CONNECTION_ID()\nSELECT 1",
    b"SELECT db.connection_id()",
    b"SELECT connection_id FROM t",
    b"SELECT my_connection_id()",
    b"CREATE VIEW v AS SELECT CONNECTION_ID()",
    b"create procedure p() select connection_id()",
    b"ALTER TABLE t ALTER c SET DEFAULT (CONNECTION_ID())",
    b"SELECT 'it''s CONNECTION_ID()'",
    b"SELECT 'a\\' CONNECTION_ID()'",
])
def test_connection_id_left_alone(sql: bytes) -> None:
    """Strings, quoted names, comments, other functions and stored definitions keep it."""
    assert rewrite_connection_id(sql, 42) is None


def test_no_backslash_escapes() -> None:
    """Under NO_BACKSLASH_ESCAPES a backslash ends nothing: the string closes at the quote."""
    sql = b"SELECT 'C:\\', CONNECTION_ID()"
    assert rewrite_connection_id(sql, 42, backslash_escapes=False) == \
        b"SELECT 'C:\\', 42 AS `CONNECTION_ID()`"
    # Read with escapes, the same text is one unfinished string: nothing replaced.
    assert rewrite_connection_id(sql, 42, backslash_escapes=True) is None


def test_is_used_lock_mapped() -> None:
    """IS_USED_LOCK() gives the holder's client id: this statement's connection is the
    client's, another client's held connection is that client's."""
    threads = Mapping(42, "10.0.0.1:5000", ((100, 7, "10.0.0.2:6000"),))
    out = rewrite_connection_id(b"SELECT IS_USED_LOCK('lk') = CONNECTION_ID()", 42, True, threads.lock_owner())
    assert out == (b"SELECT (CASE IS_USED_LOCK('lk') WHEN CONNECTION_ID() THEN 42 WHEN 100 THEN 7 "
                   b"ELSE IS_USED_LOCK('lk') END) = 42 AS `IS_USED_LOCK('lk') = CONNECTION_ID()`")


COLUMNS = ("ID", "USER", "HOST", "DB", "COMMAND", "TIME", "STATE", "INFO", "PROGRESS")


def test_show_processlist() -> None:
    threads = Mapping(42, "h:1", ((100, 7, "h:2"),), (5, 6))
    out = expand_processlist(b"show full processlist", COLUMNS, threads)
    assert out == (b"SELECT CASE WHEN ID = CONNECTION_ID() THEN 42 WHEN ID = 100 THEN 7 ELSE ID END AS Id, "
                   b"USER AS User, CASE WHEN ID = CONNECTION_ID() THEN 'h:1' WHEN ID = 100 THEN 'h:2' "
                   b"ELSE HOST END AS Host, DB AS db, COMMAND AS Command, TIME AS Time, STATE AS State, "
                   b"INFO AS Info, PROGRESS AS Progress FROM information_schema.PROCESSLIST "
                   b"WHERE ID = CONNECTION_ID() OR ID NOT IN (5, 6)")
    short = expand_processlist(b" SHOW PROCESSLIST;", COLUMNS[:-1], Mapping(42, "h:1"), info_expr=b"X")
    assert short == (b"SELECT CASE WHEN ID = CONNECTION_ID() THEN 42  ELSE ID END AS Id, USER AS User, "
                     b"CASE WHEN ID = CONNECTION_ID() THEN 'h:1'  ELSE HOST END AS Host, DB AS db, "
                     b"COMMAND AS Command, TIME AS Time, STATE AS State, LEFT(X, 100) AS Info "
                     b"FROM information_schema.PROCESSLIST WHERE TRUE")


def test_sleeping_clients_listed() -> None:
    """The user's clients that hold no connection get rows of their own, as a server
    lists sleeping sessions; one waiting for a pooled connection shows as a query."""
    threads = Mapping(42, "h:1", sleeping=((8, "h:3", "app", 12, False), (9, "h:4", None, 0, True)),
                      account="app")
    out = expand_processlist(b"SHOW PROCESSLIST", COLUMNS, threads)
    assert out.endswith(b" WHERE TRUE UNION ALL SELECT 8, 'app', 'h:3', 'app', 'Sleep', 12, '', NULL, 0"
                        b" UNION ALL SELECT 9, 'app', 'h:4', NULL, 'Query', 0, "
                        b"'Waiting for a pooled connection', NULL, 0")
    columns = ("ID", "USER", "HOST", "DB", "COMMAND", "TIME", "STATE", "INFO", "TIME_MS", "INFO_BINARY", "NEW")
    derived = expand_processlist(b"SELECT * FROM information_schema.processlist", columns, threads)
    assert b" UNION ALL SELECT 8, 'app', 'h:3', 'app', 'Sleep', 12, '', NULL, 12000.000, NULL, NULL" in derived


def test_processlist_table() -> None:
    """information_schema.PROCESSLIST becomes a derived table of the same columns, with the
    table's name as alias unless the statement gives one."""
    threads = Mapping(42, "h:1", hidden=(5,))
    derived = (b"(SELECT " + threads.id_expr().encode() + b" AS ID, `USER`, " + threads.host_expr().encode()
               + b" AS HOST, `DB`, `COMMAND`, `TIME`, `STATE`, INFO AS INFO, `PROGRESS` FROM "
               b"information_schema.PROCESSLIST WHERE ID = CONNECTION_ID() OR ID NOT IN (5))")
    expand = lambda sql: expand_processlist(sql, COLUMNS, threads)  # noqa: E731
    assert expand(b"SELECT * FROM information_schema.PROCESSLIST WHERE ID = 5") == \
        b"SELECT * FROM " + derived + b" AS PROCESSLIST WHERE ID = 5"
    assert expand(b"SELECT p.ID FROM `INFORMATION_SCHEMA` . `processlist` p JOIN t") == \
        b"SELECT p.ID FROM " + derived + b" p JOIN t"
    assert expand(b"SELECT COUNT(*) FROM information_schema.processlist AS x") == \
        b"SELECT COUNT(*) FROM " + derived + b" AS x"
    assert expand(b"SELECT * FROM information_schema.processlist") == \
        b"SELECT * FROM " + derived + b" AS PROCESSLIST"
    for untouched in (b"SELECT * FROM app.processlist", b"SELECT 'information_schema.processlist'",
                      b"SELECT * FROM performance_schema.processlist",
                      b"CREATE VIEW v AS SELECT * FROM information_schema.processlist",
                      # Not a table read: a column's type in stored code (main.sp-anchor-type).
                      b"CREATE PROCEDURE p() BEGIN DECLARE i TYPE OF INFORMATION_SCHEMA.PROCESSLIST.INFO; "
                      b"DECLARE r ROW TYPE OF information_schema.processlist; END",
                      b"SELECT information_schema.processlist.id FROM t"):
        assert expand(untouched) is None, untouched
    assert expand_processlist(b"SHOW PROCESSLIST", (), threads) is None


class DispatchTests(LoggedIn):
    """What reaches the server, and what the client is told, over fake transports."""

    def test_connection_id_reaches_the_server_as_the_client_id(self) -> None:
        me = self.client.protocol.id
        self.client.query("SELECT CONNECTION_ID()")
        conn, server = self.backends.open()
        [command] = server.received()
        self.assertEqual(command.payload, make_query(f"SELECT {me} AS `CONNECTION_ID()`"))
        self.assertEqual(command.seq, 0)

    def test_ordinary_statement_unchanged(self) -> None:
        self.first_backend(self.client, "SELECT id FROM t WHERE name = 'connection'")

    def test_prepared_statement_rewritten(self) -> None:
        me = self.client.protocol.id
        self.client.send(b"\x16SELECT CONNECTION_ID(), ?")
        conn, server = self.backends.open()
        [command] = server.received()
        self.assertEqual(command.payload, b"\x16" + f"SELECT {me} AS `CONNECTION_ID()`, ?".encode())

    def test_kill_own_connection(self) -> None:
        """KILL CONNECTION_ID() answers 1927 and closes, as a server does."""
        self.client.query("KILL CONNECTION_ID()")
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 1927, "70100"))
        self.assertTrue(self.client.closed)
        self.assertEqual(self.backends.waiting, [])

    def test_kill_query_own(self) -> None:
        """KILL QUERY CONNECTION_ID() interrupts itself (1317); the session goes on."""
        self.client.query("KILL QUERY CONNECTION_ID()")
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 1317, "70100"))
        self.assertFalse(self.client.closed)

    def test_show_processlist_maps_the_other_clients(self) -> None:
        """Another client's held connection shows that client's id and address; an idle
        pooled connection is left out; the statement's own row shows its text."""
        self.proxy.processlist_columns = ("ID", "USER", "HOST", "DB", "COMMAND", "TIME", "STATE", "INFO")
        other = self.connect()
        other.query("BEGIN")
        held, held_server = self.backends.open()
        held_server.received()
        held_server.send(vectors.BEGIN_OK)
        other.received()
        self.client.query("SELECT 1")
        idle, idle_server = self.backends.open()
        idle_server.received()
        idle_server.send(vectors.SELECT_DEOF)
        self.client.raw()
        self.assertIn(idle, self.pool.idle)
        self.client.query("SHOW PROCESSLIST")
        [command] = idle_server.received()
        sql = command.payload[1:].decode()
        me, them = self.client.protocol.id, other.protocol.id
        self.assertIn(f"WHEN ID = CONNECTION_ID() THEN {me} WHEN ID = {held.handshake.connection_id} "
                      f"THEN {them} ELSE ID END AS Id", sql)
        self.assertIn(f"WHEN ID = {held.handshake.connection_id} THEN '192.168.1.1:54321'", sql)
        self.assertIn("LEFT(CASE WHEN ID = CONNECTION_ID() THEN 'SHOW PROCESSLIST' ELSE INFO END, 100)", sql)
        self.assertTrue(sql.endswith(f"WHERE ID = CONNECTION_ID() OR ID NOT IN "
                                     f"({idle.handshake.connection_id})"), sql)

    def test_big_statement_is_sent_as_it_came(self) -> None:
        """A statement of 16 MiB or more (continuation packets) is never rewritten."""
        sql = b"SELECT CONNECTION_ID(), '" + b"x" * (1 << 24) + b"'"
        [packet] = PacketFramer().feed(frame(b"\x03" + sql, 0))
        self.assertEqual(packet.last_seq, 1)
        self.assertEqual(rewrite(self.client.protocol.commands, packet, sql), (packet, sql))


def test_scan_flags_the_needles_only_there() -> None:
    """The COM_QUERY scan flags statements that name a thread id (and only those), so
    ordinary statements pay nothing more than the needle check."""
    from pyproxy import sqltext
    assert sqltext.scan(b"SELECT id FROM t WHERE connection = 1") is None
    for sql in (b"SELECT CONNECTION_ID()", b"show processlist", b"SELECT IS_USED_LOCK('x')"):
        found = sqltext.scan(sql)
        assert found is not None and found.flags == sqltext.THREAD_IDS, sql


class FlaggedTests(LoggedIn):
    def test_rewritten_statement_runs_unflagged(self) -> None:
        """Once rewritten, a statement with nothing else to prepare for runs as an
        ordinary one (no flagged path)."""
        self.client.query("SELECT CONNECTION_ID()")
        self.assertIsNone(self.client.protocol.commands.found)
        self.assertEqual(self.client.protocol.commands.sql,
                         f"SELECT {self.client.protocol.id} AS `CONNECTION_ID()`".encode())


class PreparedKillTests(LoggedIn):
    def prepare(self, sql: bytes) -> int:
        self.client.send(b"\x16" + sql)
        [ok] = self.client.received()
        self.assertEqual((ok.seq, ok.payload[0], ok.payload[5:]), (1, 0, b"\x00" * 7))  # no columns, no params
        return int.from_bytes(ok.payload[1:5], "little")

    def execute(self, number: int) -> list[Any]:
        self.client.send(b"\x17" + number.to_bytes(4, "little") + b"\x00\x01\x00\x00\x00")
        return self.client.received()

    def test_prepared_kill_runs_in_pyproxy(self) -> None:
        """KILL prepared (mariadb-test --ps-protocol, drivers that prepare everything):
        pyproxy prepares it itself, never on a server (its id is pyproxy's), and runs it
        at each execute, as from the text protocol."""
        victim = self.connect()
        number = self.prepare(f"KILL {victim.protocol.id}".encode())
        [ok] = self.execute(number)
        self.assertEqual(ok.payload[0], 0)
        self.assertTrue(victim.closed)
        unknown = self.prepare(b"KILL 999")
        self.assertEqual(err_of(self.execute(unknown)[0])[1:], (1094, "HY000"))
        own = self.prepare(b" kill query CONNECTION_ID()")
        self.assertEqual(err_of(self.execute(own)[0])[1:], (1317, "70100"))
        self.client.send(b"\x19" + own.to_bytes(4, "little"))  # COM_STMT_CLOSE
        self.assertEqual(err_of(self.execute(own)[0])[1:], (1243, "HY000"))
        self.assertEqual(self.backends.waiting, [])

    def test_placeholder_kill_refused(self) -> None:
        """A KILL whose id would be bound at execute is refused at prepare, saying why."""
        for sql in (b"/* x */ KILL ?", b"KILL QUERY ?"):
            self.client.send(b"\x16" + sql)
            [err] = self.client.received()
            self.assertEqual(err_of(err), (1, 1295, "HY000"))
        self.assertEqual(self.backends.waiting, [])
