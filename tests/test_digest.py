"""pyproxy.digest: statement shapes without values."""

from __future__ import annotations

import pytest

from pyproxy.digest import MAX_DIGEST, digest


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = ?"),
    ("select a from t where name='o''brien' and x=\"q\\\"z\"", "select a from t where name=? and x=?"),
    ("SELECT 1.5e3, .5, 3.", "SELECT ?, ?, ?"),
    ("SELECT 0x1F, X'1F', b'0101', 0b11", "SELECT ?, ?, ?, ?"),
    ("SELECT _utf8mb4'secret' COLLATE utf8mb4_bin", "SELECT ? COLLATE utf8mb4_bin"),
    ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (...)"),
    ("SELECT * FROM t WHERE id IN ('a','b')", "SELECT * FROM t WHERE id IN (...)"),
    ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')", "INSERT INTO t (a, b) VALUES (...), (...)"),
    ("SELECT f(1) FROM t1", "SELECT f(?) FROM t1"),
    ("SELECT `weird``name 1` FROM t2 /* id=7 */ WHERE c = -5", "SELECT `weird``name 1` FROM t2 WHERE c = -?"),
    ("SELECT 1 -- the password is x\n, 2 # another\n", "SELECT ? , ?"),
    ("SELECT /*!50000 'hidden' */ 1", "SELECT ?"),
    ("  SELECT\n\t@@version ,  @x  ", "SELECT @@version , @x"),
    ("ALTER USER u IDENTIFIED BY 'hunter2'", "ALTER USER u IDENTIFIED BY ?"),
    ("SELECT 'unterminated secret", "SELECT ?"),
    ("SELECT 1 /* unterminated secret", "SELECT ?"),
    ("SELECT col1, 1abc FROM t", "SELECT col1, 1abc FROM t"),
])
def test_digest(sql: str, expected: str) -> None:
    """Every literal is a ?, lists collapse, comments and whitespace fold."""
    assert digest(sql) == expected
    assert digest(sql.encode()) == expected


def test_no_value_survives() -> None:
    """Whatever the quoting, none of the values' text reaches the digest."""
    values = ["s3cr3t", "4111111111111111", "alice@example.com", "DEADBEEF"]
    sql = ("UPDATE users SET pw = 's3cr3t', card = 4111111111111111, mail = \"alice@example.com\", "
           "blob = X'DEADBEEF' WHERE id IN (1,2) /* s3cr3t */")
    text = digest(sql)
    assert not any(value.lower() in text.lower() for value in values)
    assert text == "UPDATE users SET pw = ?, card = ?, mail = ?, blob = ? WHERE id IN (...)"


def test_long_statement_is_cut() -> None:
    """A huge statement's digest is cut, marked so."""
    text = digest("SELECT " + ", ".join(f"c{i}" for i in range(1000)))
    assert len(text) == MAX_DIGEST + 3 and text.endswith("...")


def test_bad_utf8() -> None:
    """Bytes that are not UTF-8 do not stop it."""
    assert digest(b"SELECT '\xff\xfe' FROM t") == "SELECT ? FROM t"
