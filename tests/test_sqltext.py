"""pyproxy.sqltext: what the text of a statement shows that the server's reports do not.

The cases are the forms a statement can hide in: comments between words, line comments,
executable comments, statements after ';', EXECUTE IMMEDIATE, stored code behind CALL, text
past the scanned head, and look-alikes in strings and names that must not count.
"""

from __future__ import annotations

import pytest

from pyproxy import sqltext
from pyproxy.sqltext import (
    CALLS,
    DYNAMIC,
    HOLD_NEXT,
    INSERT_ID,
    MULTI,
    OWN_TRACKING,
    READ_GLOBALS,
    ROUTINES_CHANGED,
    SCAN_LIMIT,
    SQL_PREPARE,
    TEMPORARY,
    USER_VARIABLE,
)


@pytest.mark.parametrize("sql", [
    b"SELECT 1", b"SELECT c FROM sbtest1 WHERE id = 5", b"INSERT INTO t (a, b) VALUES (1, 'x')",
    b"UPDATE t SET a = a + 1 WHERE id = 3", b"BEGIN", b"COMMIT", b"DELETE FROM t WHERE id IN (1, 2)",
    b"SELECT COUNT(*), MAX(a) FROM t GROUP BY b",
])
def test_ordinary_statements_are_not_flagged(sql: bytes) -> None:
    """The common case costs one needle check and gives None."""
    assert sqltext.scan(sql) is None


@pytest.mark.parametrize(("sql", "reason"), [
    (b"SELECT GET_LOCK('a', 0)", "GET_LOCK used"),
    (b"SELECT GET_LOCK /* c */ ('a', 0)", "GET_LOCK used"),
    (b"SELECT get_lock\n-- line comment\n('a', 0)", "GET_LOCK used"),
    (b"SELECT get_lock # hash comment\n('a', 0)", "GET_LOCK used"),
    (b"SELECT /*!GET_LOCK*/ ('a', 0)", "GET_LOCK used"),
    (b"/*!40101 SELECT GET_LOCK('a', 0) */", "GET_LOCK used"),
    (b"SELECT 1; SELECT GET_LOCK('a', 0)", "GET_LOCK used"),
    (b"LOCK TABLES t WRITE", "LOCK TABLES used"),
    (b"lock table t read", "LOCK TABLES used"),
    (b"LOCK /* c */ TABLES t WRITE", "LOCK TABLES used"),
    (b"/*!40000 LOCK TABLES t WRITE */", "LOCK TABLES used"),
    (b"/*M!100000 LOCK TABLES t READ */", "LOCK TABLES used"),
    (b"/* app */ LOCK TABLES t WRITE", "LOCK TABLES used"),
    (b"-- why\nLOCK TABLES t WRITE", "LOCK TABLES used"),
    (b"FLUSH TABLES WITH READ LOCK", "FLUSH TABLES WITH READ LOCK used"),
    (b"FLUSH TABLES t FOR EXPORT", "FLUSH TABLES WITH READ LOCK used"),
    (b"BACKUP STAGE START", "BACKUP STAGE or BACKUP LOCK used"),
    (b"backup  lock app.t", "BACKUP STAGE or BACKUP LOCK used"),
    (b"HANDLER t OPEN", "HANDLER used"),
    (b"SELECT 1; handler t open", "HANDLER used"),
    (b"XA START 'x'", "XA transaction used"),
    (b"BINLOG 'AAAA'", "BINLOG statement used"),
    (b"xa /**/ begin 'x'", "XA transaction used"),
    (b"SELECT FOUND_ROWS()", "FOUND_ROWS() (reads the previous statement) used"),
    (b"SELECT row_count ()", "ROW_COUNT() (reads the previous statement) used"),
    (b"EXECUTE IMMEDIATE 'SELECT 1'", "EXECUTE IMMEDIATE used (runs SQL pyproxy cannot check)"),
    (b"execute/**/immediate @q", "EXECUTE IMMEDIATE used (runs SQL pyproxy cannot check)"),
])
def test_what_must_pin_is_found_however_written(sql: bytes, reason: str) -> None:
    """Named locks, table locks, HANDLER, XA, readers of the previous statement and
    dynamic SQL are found through comments, executable comments and later statements."""
    found = sqltext.scan(sql)
    assert found is not None and found.pin == reason


@pytest.mark.parametrize("sql", [
    b"SELECT RELEASE_LOCK('job')", b"UNLOCK TABLES", b"SELECT * FROM handler_log",
    b"SELECT handler FROM jobs", b"INSERT INTO notes VALUES ('please lock tables')",
    b"SELECT 1 /* xa start */", b"SELECT * FROM t FOR UPDATE", b"SELECT * FROM t LOCK IN SHARE MODE",
    b"SELECT is_used_lock('x')", b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
])
def test_look_alikes_do_not_pin(sql: bytes) -> None:
    """Words that only look like the statements above pin nothing."""
    found = sqltext.scan(sql)
    assert found is None or found.pin is None


def test_huge_statement_is_checked_past_its_head() -> None:
    """Past SCAN_LIMIT only needles are searched: plain bulk data passes, a GET_LOCK (or
    anything else that could hide there) makes the statement unprovable."""
    bulk = b"INSERT INTO t VALUES " + b"(1, 'abc')," * (SCAN_LIMIT // 8)
    assert len(bulk) > SCAN_LIMIT
    assert sqltext.scan(bulk + b"(2, 'x')") is None
    found = sqltext.scan(bulk + b"(GET_LOCK('x', 1), 'y')")
    assert found is not None and found.pin is not None and "64 KiB" in found.pin
    found = sqltext.scan(bulk + b"(2, 'x'); LOCK TABLES t WRITE")
    assert found is not None and found.pin is not None


@pytest.mark.parametrize(("sql", "flags"), [
    (b"SET GLOBAL max_connections = 10", READ_GLOBALS),
    (b"set @@global.sql_mode = '', @@auto_increment_increment = 2", READ_GLOBALS),
    (b"SET GLOBAL TRANSACTION ISOLATION LEVEL SERIALIZABLE", READ_GLOBALS),
    (b"/*!40101 SET GLOBAL max_connections = 10 */", READ_GLOBALS),
    (b"SELECT @@session_track_system_variables", OWN_TRACKING),
    (b"SHOW VARIABLES LIKE 'session_track%'", OWN_TRACKING),
    (b"SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1", HOLD_NEXT),
    (b"CALL p()", CALLS),
    (b"SELECT LAST_INSERT_ID()", INSERT_ID),
    (b"SELECT @@identity", INSERT_ID),
    (b"CREATE PROCEDURE p() SELECT 1", ROUTINES_CHANGED),
    (b"CREATE DEFINER=root@localhost FUNCTION f() RETURNS INT RETURN 1", ROUTINES_CHANGED),
    (b"drop trigger if exists tr", ROUTINES_CHANGED),
    (b"CREATE OR REPLACE VIEW v AS SELECT 1", ROUTINES_CHANGED),
    (b"SELECT 1; SELECT 2", MULTI),
    (b"SET @x = 1", USER_VARIABLE),
    (b"CREATE TEMPORARY TABLE t (a INT)", TEMPORARY),
    (b"PREPARE s FROM 'SELECT 1'", SQL_PREPARE),
    (b"EXECUTE IMMEDIATE 'SELECT 1'", DYNAMIC),
    (b"SAVEPOINT sa_savepoint_1", sqltext.SAVEPOINT),
])
def test_flags(sql: bytes, flags: int) -> None:
    """What a statement needs before it runs, or what its reply must be read with."""
    found = sqltext.scan(sql)
    assert found is not None and found.flags & flags == flags


@pytest.mark.parametrize(("sql", "names"), [
    (b"SET @@sql_mode = 'ANSI'", ("sql_mode",)),
    (b"set @@Auto_Increment_Increment:=5, @@session.time_zone='+01:00', @@max_join_size=10",
     ("auto_increment_increment", "max_join_size")),
    (b"SELECT 1; SET @@sql_mode = ''", ("sql_mode",)),
    (b"/*!40101 SET @@sql_mode = '' */", ("sql_mode",)),
    (b"SET @@autocommit = 0", ()),
])
def test_bare_assignments_are_read_back(sql: bytes, names: tuple[str, ...]) -> None:
    """SET @@name (unreported by MariaDB) leaves the names to read back; autocommit is in
    every reply's status flags."""
    found = sqltext.scan(sql)
    assert (found.reread if found is not None else ()) == names


@pytest.mark.parametrize(("sql", "names"), [
    (b"SET STATEMENT sql_mode = '' FOR SELECT 1", ("sql_mode",)),
    (b"SET STATEMENT max_statement_time=1, sql_mode='a,b' FOR SELECT 1", ("max_statement_time", "sql_mode")),
    (b"set /* c */ statement sql_mode='for' for select 'for'", ("sql_mode",)),
    (b"/*!100000 SET STATEMENT sql_mode='' FOR */ SELECT 1", ("sql_mode",)),
])
def test_set_statement_names_are_scoped(sql: bytes, names: tuple[str, ...]) -> None:
    """SET STATEMENT ... FOR assigns for one statement: its variables are scoped, not
    carried, whatever the values and comments contain."""
    found = sqltext.scan(sql)
    assert found is not None and found.scoped == names and found.reread == ()


@pytest.mark.parametrize(("sql", "calls"), [
    (b"CALL p()", ("p",)),
    (b"call app.p(1, 2)", ("app.p",)),
    (b"CALL `my db`.`my proc`()", ("`my db`.`my proc`",)),
    (b"CALL p", ("p",)),
    (b"/*!50003 CALL p() */", ("p",)),
    (b"SELECT 1; CALL a(); CALL b()", ("a", "b")),
])
def test_calls_name_their_routines(sql: bytes, calls: tuple[str, ...]) -> None:
    found = sqltext.scan(sql)
    assert found is not None and found.calls == calls


@pytest.mark.parametrize(("written", "default", "name"), [
    ("p", "app", ("app", "p")),
    ("App.P", None, ("app", "p")),
    ("`my db`.`my proc`", None, ("my db", "my proc")),
    ("`a.b`", "x", ("x", "a.b")),
    ("p", None, (None, "p")),
])
def test_qualified_name(written: str, default: str | None, name: tuple[str | None, str]) -> None:
    """Routine names as CALL writes them: quotes removed, the default schema filled in."""
    assert sqltext.qualified_name(written, default) == name


def test_many_spaces_before_a_failing_match_stay_cheap() -> None:
    """The separator pattern never backtracks over a run of spaces (that would be
    exponential): a long run before a word that does not complete a pattern is fast."""
    sql = b"SELECT get_lock" + b" " * 5000 + b"x"
    assert sqltext.scan(sql) is None or sqltext.scan(sql).pin is None
