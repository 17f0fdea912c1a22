"""No client inherits another's session: each class the security review found, on a real server.

Every test runs pyproxy with a pool of ONE backend connection, so client B always borrows the
connection client A just used, as the review did.  A leaves something behind in one of the
forms that hid it from pyproxy (an executable comment, EXECUTE IMMEDIATE, a comment before a
parenthesis, a stored procedure or function, a statement past the scanned length, a prepared
statement, a multi-statement), and B must not see it: either A keeps the connection (B's
statement then times out waiting for it, error 9001) or the connection B gets is clean.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from integration import servers
from integration.drivers import log_events

DB = servers.APP_DATABASE

BORROW_TIMEOUT = 1.5
HOLD = 0.2

PROCEDURES = (
    f"CREATE OR REPLACE TABLE {DB}.iso_t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
    f"CREATE OR REPLACE PROCEDURE {DB}.iso_lock() BEGIN DO GET_LOCK('iso_lk', 0); END",
    f"CREATE OR REPLACE PROCEDURE {DB}.iso_dirty() BEGIN SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED; END",
    f"CREATE OR REPLACE PROCEDURE {DB}.iso_dirty_bare() BEGIN SET @@tx_isolation = 'READ-UNCOMMITTED'; END",
    f"CREATE OR REPLACE PROCEDURE {DB}.iso_rows() BEGIN DECLARE n INT; SELECT COUNT(*) INTO n FROM {DB}.iso_t; "
    f"UPDATE {DB}.iso_t SET v = v WHERE id < 0; END",
    f"CREATE OR REPLACE PROCEDURE {DB}.iso_last_id() BEGIN SELECT LAST_INSERT_ID(); END",
    f"CREATE OR REPLACE PROCEDURE {DB}.iso_warn() BEGIN DECLARE x INT; SET x = CAST('secret-abc' AS INT); END",
    f"CREATE OR REPLACE FUNCTION {DB}.iso_flock() RETURNS INT RETURN GET_LOCK('iso_lk', 0)",
    f"CREATE OR REPLACE FUNCTION {DB}.iso_plain(a INT) RETURNS INT RETURN a + 1",
)


@pytest.fixture(scope="module")
def pool_of_one(db_server: servers.DbServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.ProxyProcess]:
    """pyproxy with one backend connection, a short borrow timeout and hold; the routines
    exist before it starts (made directly on the server, as a migration would)."""
    proxy = servers.start_proxy(db_server, tmp_path_factory.mktemp("isolation"),
                                pool={"max_connections": 1, "borrow_timeout": BORROW_TIMEOUT},
                                session={"hold_for_next_statement": HOLD})
    servers.as_root(db_server, *PROCEDURES)
    yield proxy
    proxy.stop()


def connect(proxy: servers.ProxyProcess, *args: Any, **kwargs: Any) -> pymysql.connections.Connection:
    """A PyMySQL client in autocommit mode, so that only what a test does holds a connection."""
    return proxy.connect(*args, autocommit=True, **kwargs)


def scalar(conn: Any, sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    return row[0] if row else None


def waits_for_the_connection(proxy: servers.ProxyProcess) -> bool:
    """Whether another client's statement finds the only backend connection held (9001)."""
    other = None
    try:
        other = connect(proxy)  # PyMySQL's SET autocommit=0 may be what waits
        scalar(other, "SELECT 1")
    except pymysql.err.OperationalError as exc:
        assert exc.args[0] == 9001, exc
        return True
    finally:
        if other is not None:
            other.close()
    return False


def lock_is_free(proxy: servers.ProxyProcess) -> bool:
    b = connect(proxy)
    try:
        return scalar(b, "SELECT IS_USED_LOCK('iso_lk')") is None
    finally:
        b.close()


def tables_unlocked(proxy: servers.ProxyProcess) -> bool:
    """B can read a table A never locked (LOCK TABLES would give 1100 for any other)."""
    b = connect(proxy)
    try:
        scalar(b, f"SELECT COUNT(*) FROM {DB}.iso_other_probe")
        return True
    except pymysql.err.OperationalError as exc:
        if exc.args[0] in (1099, 1100):
            return False
        raise
    finally:
        b.close()


@pytest.fixture
def probe_table(db_server: servers.DbServer) -> None:
    root = db_server.connect()
    with root.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {DB}.iso_other_probe (a INT)")
    root.close()


def a_leaves(proxy: servers.ProxyProcess, run: Callable[[Any], Any], *, connector: bool = False,
             **connect_args: Any) -> Any:
    """Client A runs ``run`` and stays connected; returns A (the caller closes it)."""
    if connector:
        a = mysql.connector.connect(host=proxy.host, port=proxy.port, user=servers.APP_USER,
                                    password=servers.APP_PASSWORD, database=DB, ssl_disabled=True,
                                    use_pure=True, autocommit=True, **connect_args)
    else:
        a = connect(proxy, **connect_args)
    run(a)
    time.sleep(HOLD * 2)  # past hold_for_next_statement: only state keeps the connection now
    return a


LONG = "'" + "x" * 70000 + "'"


@pytest.mark.parametrize("sql", [
    "SELECT GET_LOCK /* a comment */ ('iso_lk', 0)",
    "SELECT GET_LOCK\n-- a line comment\n('iso_lk', 0)",
    "SELECT /*!GET_LOCK*/ ('iso_lk', 0)",
    "/*!40101 SELECT GET_LOCK('iso_lk', 0) */",
    "EXECUTE IMMEDIATE 'SELECT GET_LOCK(''iso_lk'', 0)'",
    f"CALL {DB}.iso_lock()",
    "CALL iso_lock",
    f"SELECT {DB}.iso_flock()",
    "SELECT iso_flock ()",
    pytest.param(f"SELECT {LONG} AS pad, GET_LOCK('iso_lk', 0)", id="past-the-scanned-length"),
    "SELECT 1; SELECT GET_LOCK('iso_lk', 0)",
    "SELECT GET_LOCK('iso_lk', 0); SELECT no_such_column",
])
def test_named_lock_never_reaches_the_next_client(pool_of_one: servers.ProxyProcess, sql: str) -> None:
    """However A takes a named lock, A keeps the connection while it is connected, and the
    connection B gets after A leaves holds no lock."""
    def run(a: Any) -> None:
        with a.cursor() as cur:
            try:
                cur.execute(sql)
                while cur.nextset():
                    pass
            except pymysql.err.OperationalError:
                pass  # the multi-statement whose second statement fails

    a = a_leaves(pool_of_one, run, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        assert scalar(a, "SELECT IS_USED_LOCK('iso_lk') = CONNECTION_ID()") == 1
        assert waits_for_the_connection(pool_of_one)
    finally:
        a.close()
    assert lock_is_free(pool_of_one)


def test_named_lock_in_a_prepared_statement(pool_of_one: servers.ProxyProcess) -> None:
    """GET_LOCK run through COM_STMT_EXECUTE (mysql-connector's prepared cursor)."""
    def run(a: Any) -> None:
        cur = a.cursor(prepared=True)
        cur.execute("SELECT GET_LOCK(%s, 0)", ("iso_lk",))
        cur.fetchall()
        cur.close()

    a = a_leaves(pool_of_one, run, connector=True)
    try:
        assert waits_for_the_connection(pool_of_one)
    finally:
        a.close()
    assert lock_is_free(pool_of_one)


@pytest.mark.parametrize("sql", [
    f"/*!40000 LOCK TABLES {DB}.iso_t WRITE */",
    f"/*M!100000 LOCK TABLES {DB}.iso_t READ */",
    f"EXECUTE IMMEDIATE 'LOCK TABLES {DB}.iso_t WRITE'",
    f"LOCK /* c */ TABLES {DB}.iso_t WRITE",
    f"LOCK TABLE {DB}.iso_t AS x READ",
])
def test_table_locks_never_reach_the_next_client(pool_of_one: servers.ProxyProcess, probe_table: None,
                                                  sql: str) -> None:
    """LOCK TABLES in any form: A keeps the connection; after A leaves, B reads another
    table without error 1099/1100."""
    a = a_leaves(pool_of_one, lambda a: scalar(a, sql))
    try:
        assert waits_for_the_connection(pool_of_one)
    finally:
        a.close()
    assert tables_unlocked(pool_of_one)


@pytest.mark.parametrize("sql", ["BACKUP STAGE START", f"BACKUP LOCK {DB}.iso_t"])
def test_backup_locks_never_reach_the_next_client(pool_of_one: servers.ProxyProcess, db_server: servers.DbServer,
                                                 sql: str) -> None:
    """BACKUP STAGE / BACKUP LOCK: A keeps the connection; after A leaves, B's DDL runs
    (on a connection holding the backup lock it would fail with 4145)."""
    root = db_server.connect()
    try:
        with root.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute("GRANT RELOAD ON *.* TO %s@%s", (servers.APP_USER, host))
    finally:
        root.close()
    a = a_leaves(pool_of_one, lambda a: scalar(a, sql))
    try:
        assert waits_for_the_connection(pool_of_one)
    finally:
        a.close()
    b = connect(pool_of_one)
    try:
        scalar(b, f"CREATE OR REPLACE TABLE {DB}.iso_backup_probe (a INT) ENGINE=MyISAM")
        scalar(b, f"DROP TABLE {DB}.iso_backup_probe")
    finally:
        b.close()


@pytest.mark.parametrize("sql", [
    f"CALL {DB}.iso_dirty()",
    f"CALL {DB}.iso_dirty_bare()",
    "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED; SELECT 1",
    "/*!40101 SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED */",
    "EXECUTE IMMEDIATE 'SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED'",
])
def test_transaction_characteristics_stay_with_their_client(
        pool_of_one: servers.ProxyProcess, db_server: servers.DbServer, sql: str) -> None:
    """Characteristics set for A's next transaction (inside a procedure, through SET
    @@tx_isolation, hidden in a comment) never apply to B's transaction: B does not
    read another session's uncommitted row, whatever A did."""
    def run(a: Any) -> None:
        with a.cursor() as cur:
            cur.execute(sql)
            while cur.nextset():
                pass

    a = a_leaves(pool_of_one, run, client_flag=CLIENT.MULTI_STATEMENTS)
    writer = db_server.connect(autocommit=False)
    try:
        with writer.cursor() as cur:
            cur.execute(f"INSERT INTO {DB}.iso_t (v) VALUES ('dirty')")
        # While A is connected its transaction settings hold the connection.
        assert waits_for_the_connection(pool_of_one)
        a.close()
        b = connect(pool_of_one)
        try:
            assert scalar(b, f"SELECT COUNT(*) FROM {DB}.iso_t WHERE v = 'dirty'") == 0
        finally:
            b.close()
    finally:
        writer.rollback()
        writer.close()
        if a.open:
            a.close()


@pytest.mark.parametrize("run", ["SELECT CAST('secret-abc' AS INT)", f"CALL {DB}.iso_warn()",
                                 f"SELECT no_such_column FROM {DB}.iso_t", "prepared"])
def test_diagnostics_area_is_cleared_for_the_next_client(pool_of_one: servers.ProxyProcess,
                                                          run: str) -> None:
    """A's warnings and errors, given up with the connection after hold_for_next_statement,
    are not what B's SHOW WARNINGS / SHOW ERRORS shows; A's own follow-up still sees them."""
    if run == "prepared":
        def statement(a: Any) -> None:
            cur = a.cursor(prepared=True)
            cur.execute("SELECT CAST(? AS INT)", ("secret-abc",))
            cur.fetchall()
            cur.close()

        a = a_leaves(pool_of_one, statement, connector=True)
    else:
        def statement(a: Any) -> None:
            with a.cursor() as cur:
                try:
                    cur.execute(run)
                except pymysql.err.OperationalError:
                    pass
                cur.execute("SHOW WARNINGS")
                assert cur.fetchall(), "the client's own follow-up sees its messages"

        a = a_leaves(pool_of_one, statement)
    try:
        b = connect(pool_of_one)
        try:
            with b.cursor() as cur:
                cur.execute("SHOW WARNINGS")
                warnings = cur.fetchall()
                cur.execute("SHOW ERRORS")
                errors = cur.fetchall()
            assert warnings == () and errors == (), (warnings, errors)
        finally:
            b.close()
    finally:
        a.close()


def test_last_insert_id_is_each_clients_own(pool_of_one: servers.ProxyProcess) -> None:
    """A and B insert in turn on the one connection; LAST_INSERT_ID() read directly, through
    @@identity and inside a procedure is always the reader's own, and an explicitly given id
    leaves it unchanged, as on a server."""
    a, b = connect(pool_of_one), connect(pool_of_one)
    try:
        with a.cursor() as cur:
            cur.execute(f"INSERT INTO {DB}.iso_t (v) VALUES ('a')")
            a_id = cur.lastrowid
        time.sleep(HOLD * 2)
        with b.cursor() as cur:
            cur.execute(f"INSERT INTO {DB}.iso_t (v) VALUES ('b')")
            b_id = cur.lastrowid
        time.sleep(HOLD * 2)
        assert a_id != b_id
        assert scalar(a, f"CALL {DB}.iso_last_id()") == a_id
        assert scalar(b, f"CALL {DB}.iso_last_id()") == b_id
        assert scalar(a, "SELECT @@identity") == a_id
        assert scalar(b, "SELECT LAST_INSERT_ID()") == b_id
        with a.cursor() as cur:
            cur.execute(f"INSERT INTO {DB}.iso_t (id, v) VALUES (%s, 'explicit')", (a_id + 100000,))
        time.sleep(HOLD * 2)
        assert scalar(b, "SELECT 1") == 1
        assert scalar(a, f"CALL {DB}.iso_last_id()") == a_id
        assert scalar(a, "SELECT LAST_INSERT_ID()") == a_id
    finally:
        a.close()
        b.close()


def test_new_client_sees_no_insert_id(pool_of_one: servers.ProxyProcess) -> None:
    """A client that inserted nothing reads 0, after another's insert on the same connection."""
    a = connect(pool_of_one)
    try:
        with a.cursor() as cur:
            cur.execute(f"INSERT INTO {DB}.iso_t (v) VALUES ('a')")
    finally:
        a.close()
    b = connect(pool_of_one)
    try:
        assert scalar(b, f"CALL {DB}.iso_last_id()") == 0
    finally:
        b.close()


@pytest.mark.parametrize("form", [
    "SET STATEMENT sql_mode = 'NO_ZERO_DATE' FOR SELECT 1",
    "SET STATEMENT sql_mode = 'NO_ZERO_DATE', max_join_size = 1000000 FOR SELECT 1",
    "/* c */ SET STATEMENT sql_mode='NO_ZERO_DATE' FOR SELECT 'for'",
])
def test_set_statement_changes_nothing_that_lasts(pool_of_one: servers.ProxyProcess, form: str) -> None:
    """SET STATEMENT ... FOR: the client keeps its own sql_mode at its next borrow, and
    nobody else gets the temporary one."""
    a = connect(pool_of_one)
    b = connect(pool_of_one)
    try:
        scalar(a, "SET SESSION sql_mode = 'ANSI_QUOTES'")
        default = scalar(b, "SELECT @@SESSION.sql_mode")
        scalar(a, form)
        assert scalar(b, "SELECT @@SESSION.sql_mode") == default
        assert scalar(a, "SELECT @@SESSION.sql_mode") == "ANSI_QUOTES"
        assert scalar(b, "SELECT @@SESSION.max_join_size") != 1000000
    finally:
        a.close()
        b.close()


def test_set_statement_next_to_a_lasting_set(pool_of_one: servers.ProxyProcess) -> None:
    """In one multi-statement, a SET STATEMENT and a SET of the same variable: the SET lasts."""
    a = connect(pool_of_one, client_flag=CLIENT.MULTI_STATEMENTS)
    b = connect(pool_of_one)
    try:
        with a.cursor() as cur:
            cur.execute("SET STATEMENT sql_mode='' FOR SELECT 1; SET SESSION sql_mode = 'ANSI_QUOTES'")
            while cur.nextset():
                pass
        default = scalar(b, "SELECT @@SESSION.sql_mode")
        assert default != "ANSI_QUOTES"
        assert scalar(a, "SELECT @@SESSION.sql_mode") == "ANSI_QUOTES"
    finally:
        a.close()
        b.close()


def test_clean_procedure_and_function_do_not_pin(pool_of_one: servers.ProxyProcess) -> None:
    """A CALL of a procedure that only reads and writes rows, and a stored function that
    computes, leave nothing behind: other clients keep sharing the connection."""
    before = len(log_events(pool_of_one, "session_pinned"))
    a = connect(pool_of_one)
    try:
        scalar(a, f"CALL {DB}.iso_rows()")
        assert scalar(a, f"SELECT {DB}.iso_plain(41)") == 42
        time.sleep(HOLD * 2)
        assert not waits_for_the_connection(pool_of_one)
    finally:
        a.close()
    assert len(log_events(pool_of_one, "session_pinned")) == before


def test_routine_created_through_pyproxy_is_read_at_once(pool_of_one: servers.ProxyProcess) -> None:
    """A procedure created through pyproxy that takes a named lock is known at its first CALL."""
    a = connect(pool_of_one)
    try:
        scalar(a, f"CREATE OR REPLACE PROCEDURE {DB}.iso_new() BEGIN DO GET_LOCK('iso_lk', 0); END")
        scalar(a, f"CALL {DB}.iso_new()")
        time.sleep(HOLD * 2)
        assert waits_for_the_connection(pool_of_one)
    finally:
        a.close()
    assert lock_is_free(pool_of_one)


def test_schema_of_another_user_is_refused_at_login(pool_of_one: servers.ProxyProcess,
                                                    db_server: servers.DbServer) -> None:
    """A schema only another user may use is not taken as known for this one: a login
    naming it fails with 1044 at once, as on a server, not at the first statement."""
    users = [{"name": servers.own_name(f"iso_user{i}"), "password": f"iso_pw{i}",
              "database": servers.own_name(f"iso_db{i}")} for i in (1, 2)]
    proxy = servers.start_proxy(db_server, pool_of_one.config_path.parent.parent / "schemas", users=users,
                                backend={"database": ""})
    root = db_server.connect()
    try:
        with root.cursor() as cur:
            for user in users:
                for host in ("%", "localhost"):
                    cur.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s", (user["name"], host))
                    cur.execute(f"GRANT ALL ON {user['database']}.* TO %s@%s", (user["name"], host))
        one, two = users
        connect(proxy, one["name"], one["password"], one["database"]).close()
        with pytest.raises(pymysql.err.OperationalError) as error:
            connect(proxy, two["name"], two["password"], one["database"])
        assert error.value.args[0] == 1044
        connect(proxy, two["name"], two["password"], two["database"]).close()
    finally:
        with root.cursor() as cur:
            for user in users:
                cur.execute("DROP USER IF EXISTS %s@'%%', %s@'localhost'", (user["name"], user["name"]))
                cur.execute(f"DROP DATABASE IF EXISTS {user['database']}")
        root.close()
        proxy.stop()


def test_threads_interleaving_on_one_connection(pool_of_one: servers.ProxyProcess) -> None:
    """Two clients alternating statements on the one connection each see only their own
    sql_mode, time zone and insert id, 50 times over."""
    failures: list[str] = []

    def client(mode: str, zone: str) -> None:
        conn = connect(pool_of_one)
        try:
            scalar(conn, "SET SESSION sql_mode = %s", (mode,))
            scalar(conn, "SET time_zone = %s", (zone,))
            for _ in range(50):
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {DB}.iso_t (v) VALUES (%s)", (mode[:20],))
                    mine = cur.lastrowid
                    cur.execute("SELECT @@SESSION.sql_mode, @@time_zone, LAST_INSERT_ID()")
                    row = cur.fetchone()
                if row != (mode, zone, mine):
                    failures.append(f"{mode}: {row} != {(mode, zone, mine)}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=args)
               for args in (("ANSI_QUOTES", "+01:00"), ("NO_ZERO_DATE", "+02:00"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []


def test_savepoint_before_any_transaction_stays_with_its_client(pool_of_one: servers.ProxyProcess) -> None:
    """With autocommit off, a SAVEPOINT before any statement that starts the transaction
    is kept by the server although no transaction is reported (SQLAlchemy's
    begin_nested() does this): the client keeps its connection, past
    hold_for_next_statement, until it commits or rolls back."""
    a = pool_of_one.connect(autocommit=False)
    try:
        scalar(a, "SAVEPOINT sp1")
        assert scalar(a, "SELECT CAST('x' AS SIGNED)") == 0  # a warning; no table, no transaction
        time.sleep(HOLD * 2)
        assert waits_for_the_connection(pool_of_one)
        scalar(a, "RELEASE SAVEPOINT sp1")
        a.rollback()
        time.sleep(HOLD * 2)
        assert not waits_for_the_connection(pool_of_one)
    finally:
        a.close()
