"""Every shape a CALL reply can take, over both protocols, through pyproxy as directly.

A CALL answers with any number of result sets, then an OK or an error: result sets then a
SIGNAL or RESIGNAL, OUT and INOUT parameters (a result set of their own, flagged
SERVER_PS_OUT_PARAMS, for clients that asked for CLIENT_PS_MULTI_RESULTS), nested calls,
none at all.  Each shape is called by drivers that read replies differently: PyMySQL and
mysqlclient over the text protocol, mysql-connector's prepared cursor over the binary one
(a client without CLIENT_DEPRECATE_EOF, alone and inside a transaction, where it keeps a
connection whose replies pyproxy translates), and Node's mysql2 with query() and execute().
What each sees must be the same through pyproxy as directly, and the connection must go on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import mysql.connector
import MySQLdb
import pymysql
import pytest

from integration import servers
from integration.raw_session import RawSession
from pyproxy.wire.constants import CLIENT

DB = servers.APP_DATABASE
NODE_DIR = Path(__file__).resolve().parent / "node"

PROCEDURES = (
    "CREATE OR REPLACE PROCEDURE shape_rows() BEGIN SELECT 1 AS a; SELECT 2 AS b, 'x' AS c; END",
    "CREATE OR REPLACE PROCEDURE shape_signal() BEGIN SELECT 1 AS a; "
    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom'; END",
    "CREATE OR REPLACE PROCEDURE shape_resignal() BEGIN "
    "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN SELECT 'handled' AS h; RESIGNAL; END; "
    "SELECT 1 AS a; SELECT * FROM shape_no_such_table; END",
    "CREATE OR REPLACE PROCEDURE shape_out(OUT x INT, INOUT y INT) BEGIN SELECT 7 AS a; "
    "SET x = 42; SET y = y + 1; END",
    "CREATE OR REPLACE PROCEDURE shape_out_only(OUT x INT) SET x = 5",
    "CREATE OR REPLACE PROCEDURE shape_nested() BEGIN CALL shape_rows(); SELECT 3 AS d; END",
    "CREATE OR REPLACE PROCEDURE shape_none() DO 1",
    # Its own cursor flags the result set's EOFs SERVER_STATUS_CURSOR_EXISTS: no cursor of the client's.
    "CREATE OR REPLACE PROCEDURE shape_cursor() BEGIN DECLARE v INT; "
    "DECLARE c CURSOR FOR SELECT 5 UNION SELECT 6; OPEN c; FETCH c INTO v; CLOSE c; SELECT v; SELECT v + 1 AS w; END",
)
# (name, text form, prepared form, its parameters)
CALLS = (
    ("rows", "CALL shape_rows()", "CALL shape_rows()", ()),
    ("signal", "CALL shape_signal()", "CALL shape_signal()", ()),
    ("resignal", "CALL shape_resignal()", "CALL shape_resignal()", ()),
    ("out", "CALL shape_out(@x, @y)", "CALL shape_out(?, ?)", (0, 10)),
    ("out_only", "CALL shape_out_only(@x)", "CALL shape_out_only(?)", (0,)),
    ("nested", "CALL shape_nested()", "CALL shape_nested()", ()),
    ("none", "CALL shape_none()", "CALL shape_none()", ()),
    ("cursor", "CALL shape_cursor()", "CALL shape_cursor()", ()),
)


@pytest.fixture(scope="module")
def shapes(db_server: servers.DbServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    proxy = servers.start_proxy(db_server, tmp_path_factory.mktemp("shapes"), pool={"max_connections": 2})
    servers.as_root(db_server, *PROCEDURES, database=DB)
    yield db_server, proxy
    proxy.stop()


def address(target: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": target.port, "user": servers.APP_USER,
            "password": servers.APP_PASSWORD, "database": DB}


def norm(value: Any) -> Any:
    return value.decode() if isinstance(value, (bytes, bytearray)) else value


def pymysql_call(target: Any, sql: str) -> Any:
    conn = pymysql.connect(**address(target), autocommit=True)
    sets: list[Any] = []
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(sql)
                while True:
                    if cur.description:
                        sets.append([list(map(norm, row)) for row in cur.fetchall()])
                    if not cur.nextset():
                        break
            except pymysql.err.MySQLError as exc:
                sets.append(f"error {exc.args[0]}")
            cur.execute("SELECT 'still there'")
            sets.append(cur.fetchone()[0])
    finally:
        conn.close()
    return sets


def mysqldb_call(target: Any, sql: str) -> Any:
    params = address(target)
    conn = MySQLdb.connect(host=params["host"], port=params["port"], user=params["user"],
                           password=params["password"], database=params["database"], autocommit=True)
    sets: list[Any] = []
    try:
        cur = conn.cursor()
        try:
            cur.execute(sql)
            while True:
                if cur.description:
                    sets.append([list(map(norm, row)) for row in cur.fetchall()])
                if cur.nextset() is None:
                    break
        except MySQLdb.MySQLError as exc:
            sets.append(f"error {exc.args[0]}")
        cur.close()
        cur = conn.cursor()
        cur.execute("SELECT 'still there'")
        sets.append(cur.fetchone()[0])
    finally:
        conn.close()
    return sets


def connector_call(target: Any, sql: str, args: tuple[Any, ...], in_transaction: bool) -> Any:
    conn = mysql.connector.connect(**address(target), use_pure=True, autocommit=True, ssl_disabled=True)
    sets: list[Any] = []
    try:
        if in_transaction:
            conn.cursor().execute("START TRANSACTION")
        cur = conn.cursor(prepared=True)
        try:
            cur.execute(sql, args)
            while True:
                if cur.with_rows:
                    sets.append([list(map(norm, row)) for row in cur.fetchall()])
                if not cur.nextset():
                    break
        except mysql.connector.Error as exc:
            sets.append(f"error {exc.errno}")
        try:
            after = conn.cursor(prepared=True)
            after.execute("SELECT 'still there'")
            sets.append(norm(after.fetchall()[0][0]))
        except mysql.connector.Error as exc:
            # The driver's own limits (it reads multi-result executes poorly), the same
            # directly: what matters is that both sides see the same.
            sets.append(f"after: {type(exc).__name__} {exc.errno}")
    finally:
        try:
            conn.close()
        except mysql.connector.Error:
            pass
    return sets


def node_calls(target: Any, tmp: Path) -> Any:
    script = tmp / "shapes.js"
    script.write_text(NODE_SCRIPT)
    out = subprocess.run(["node", str(script), json.dumps({**address(target), "calls": CALLS})],
                         capture_output=True, text=True, timeout=60, cwd=NODE_DIR,
                         env={"NODE_PATH": str(NODE_DIR / "node_modules"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


NODE_SCRIPT = r"""
const mysql = require('mysql2/promise');
const cfg = JSON.parse(process.argv[2]);
(async () => {
  const result = {};
  for (const [name, text, prepared, args] of cfg.calls) {
    for (const mode of ['query', 'execute']) {
      const conn = await mysql.createConnection({host: cfg.host, port: cfg.port, user: cfg.user,
        password: cfg.password, database: cfg.database, multipleStatements: false});
      const seen = [];
      try {
        const [rows] = mode === 'query' ? await conn.query(text) : await conn.execute(prepared, args);
        seen.push(JSON.parse(JSON.stringify(rows)));
      } catch (e) { seen.push('error ' + e.errno); }
      const [after] = await conn.query("SELECT 'still there' AS s");
      seen.push(after[0].s);
      await conn.end();
      result[name + ' ' + mode] = seen;
    }
  }
  console.log(JSON.stringify(result));
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.mark.parametrize(("name", "text", "prepared", "args"), CALLS, ids=[c[0] for c in CALLS])
def test_text_protocol(shapes: Any, name: str, text: str, prepared: str, args: tuple[Any, ...]) -> None:
    """PyMySQL (no CLIENT_DEPRECATE_EOF, translated) and mysqlclient (libmariadb) over COM_QUERY."""
    db_server, proxy = shapes
    for call in (pymysql_call, mysqldb_call):
        direct, through = call(db_server, text), call(proxy, text)
        assert through == direct, (call.__name__, direct, through)


@pytest.mark.parametrize("in_transaction", [False, True], ids=["alone", "in-transaction"])
@pytest.mark.parametrize(("name", "text", "prepared", "args"), CALLS, ids=[c[0] for c in CALLS])
def test_binary_protocol(shapes: Any, name: str, text: str, prepared: str, args: tuple[Any, ...],
                         in_transaction: bool) -> None:
    """mysql-connector's prepared cursor over COM_STMT_EXECUTE; in a transaction it keeps a
    connection opened with CLIENT_DEPRECATE_EOF and pyproxy translates the reply."""
    db_server, proxy = shapes
    direct = connector_call(db_server, prepared, args, in_transaction)
    through = connector_call(proxy, prepared, args, in_transaction)
    assert through == direct


def raw_executes(target: Any, capabilities: int) -> list[Any]:
    """COM_STMT_EXECUTE of a CALL and of a SELECT, with and without a cursor asked for, as
    (sequence id, payload) pairs; an EOF's status after definitions is cut to the
    transaction bits (what else it says is the server's guess before the rows)."""
    session = RawSession("127.0.0.1", target.port, servers.APP_USER, servers.APP_PASSWORD, DB, capabilities)
    seen: list[Any] = []
    try:
        for sql in (b"CALL shape_cursor()", b"SELECT 5 AS v UNION SELECT 6"):
            [(_, prepare_ok), *_] = session.command(b"\x16" + sql)
            statement = prepare_ok[1:5]
            for flags in (0, 1):  # CURSOR_TYPE_NO_CURSOR, CURSOR_TYPE_READ_ONLY
                reply = session.command(b"\x17" + statement + bytes((flags,)) + b"\x01\x00\x00\x00")
                seen.append([(seq, payload[:3] + bytes((payload[3] & 0x03, payload[4]))
                              if payload[:1] == b"\xfe" and len(payload) == 5 else payload)
                             for seq, payload in reply])
                if flags:
                    # An ERR names the statement by the server's id, which pyproxy's need not be.
                    seen.append([(seq, payload[:9] if payload[:1] == b"\xff" else payload) for seq, payload
                                 in session.command(b"\x1c" + statement + (10).to_bytes(4, "little"))])
            session.send_only(b"\x19" + statement)
        seen.append(session.command(b"\x03SELECT 'still there'")[-2:])
    finally:
        session.close()
    return seen


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["classic", "deprecate-eof"])
def test_cursor_asked_for_on_a_call(shapes: Any, deprecate_eof: bool) -> None:
    """A CALL cannot open a cursor for the client; its routine's own cursor flags the result
    set's EOFs, which must not end the reply early.  A SELECT's cursor still works."""
    db_server, proxy = shapes
    capabilities = (CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_WITH_DB
                    | CLIENT.TRANSACTIONS | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS
                    | (CLIENT.DEPRECATE_EOF if deprecate_eof else 0))
    assert raw_executes(proxy, capabilities) == raw_executes(db_server, capabilities)


@pytest.mark.skipif(shutil.which("node") is None or not (NODE_DIR / "node_modules" / "mysql2").is_dir(),
                    reason="Node.js or its mysql2 module is not installed (scripts/install-deps)")
def test_mysql2_query_and_execute(shapes: Any, tmp_path: Path) -> None:
    """Node's mysql2 (CLIENT_DEPRECATE_EOF), query() and execute(), every shape."""
    db_server, proxy = shapes
    direct, through = node_calls(db_server, tmp_path), node_calls(proxy, tmp_path)
    differences = {key: (direct[key], through.get(key)) for key in direct if through.get(key) != direct[key]}
    assert differences == {}
