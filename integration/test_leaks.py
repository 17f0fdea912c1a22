"""The broad leak test: random sequences of stateful statements from many clients on a small
pool, each client's view compared with the same sequence run directly against the server.

Every client draws its own sequence (seeded, so a failure can be replayed) from statements
that leave something in a server session: session variables, SET STATEMENT, user
variables, temporary tables, named locks, one-shot transaction characteristics, warnings,
errors, auto-increment and explicit inserts, LAST_INSERT_ID() read directly and inside a
procedure, stored functions and procedures, multi-statements.  Through pyproxy the clients
run at once on a pool of a few connections, so each statement may land on a connection
another client just used; directly, each runs alone on its own connection.  Every reading
statement must give the same answer both ways.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from integration import servers

DB = servers.APP_DATABASE

CLIENTS = 24
STEPS = 30
POOL = 3
SEED = int(os.environ.get("PYPROXY_LEAK_SEED", "8"))  # another seed draws other sequences

SETUP = (
    f"CREATE OR REPLACE TABLE {DB}.leak_t (id INT AUTO_INCREMENT PRIMARY KEY, owner INT, v INT) ENGINE=InnoDB",
    f"CREATE OR REPLACE PROCEDURE {DB}.leak_last_id() SELECT LAST_INSERT_ID()",
    f"CREATE OR REPLACE PROCEDURE {DB}.leak_rows(o INT) BEGIN DECLARE n INT; "
    f"SELECT COUNT(*) INTO n FROM {DB}.leak_t WHERE owner = o; END",
    f"CREATE OR REPLACE PROCEDURE {DB}.leak_dirty() SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    f"CREATE OR REPLACE FUNCTION {DB}.leak_f(x INT) RETURNS INT RETURN x + 1",
    f"CREATE OR REPLACE FUNCTION {DB}.leak_lock(x INT) RETURNS INT RETURN GET_LOCK(CONCAT('leak_', x), 0)",
)
MODES = ("ANSI_QUOTES", "NO_ZERO_DATE", "STRICT_TRANS_TABLES", "PIPES_AS_CONCAT,NO_ENGINE_SUBSTITUTION")
ZONES = ("+01:00", "-03:00", "+05:30")
DATABASE_CHARSETS = (("character_set_database", "ucs2"), ("character_set_database", "utf32"),
                     ("character_set_database", "ujis"), ("collation_database", "utf16_bin"),
                     ("collation_database", "latin1_bin"))
NAMES = ("SET NAMES latin1", "SET NAMES ujis", "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
         "SET collation_connection = ucs2_general_ci", "SET NAMES utf8mb4")


class Client:
    """One client's sequence: run() performs step i and returns what it read (or None)."""

    def __init__(self, me: int, id_base: int) -> None:
        self.me = me
        self.id_base = id_base
        self.mine = 0  # the last id this client's auto-increment insert got
        rng = random.Random(SEED * 1000 + me)
        weights = {name: weight for name, (weight, _) in STEPS_BY_NAME.items()}
        self.steps = rng.choices(list(weights), weights=list(weights.values()), k=STEPS)
        self.values = [rng.randrange(1000) for _ in range(STEPS)]

    def run(self, conn: Any, index: int) -> Any:
        return STEPS_BY_NAME[self.steps[index]][1](self, conn, index)


def rows(conn: Any, sql: str, args: Any = None) -> Any:
    """The rows of the last result set the statement returned (a CALL ends with an OK)."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        result = cur.fetchall()
        while cur.nextset():
            if cur.description is not None:
                result = cur.fetchall()
    return [tuple(row) for row in result]


def view(c: Client, conn: Any, i: int) -> Any:
    return rows(conn, "SELECT @@SESSION.sql_mode, @@time_zone, @uv, @@SESSION.tx_isolation, @@autocommit")


def set_mode(c: Client, conn: Any, i: int) -> Any:
    rows(conn, "SET SESSION sql_mode = %s", (MODES[c.values[i] % len(MODES)],))
    return view(c, conn, i)


def set_zone(c: Client, conn: Any, i: int) -> Any:
    rows(conn, "SET time_zone = %s", (ZONES[c.values[i] % len(ZONES)],))


def set_statement(c: Client, conn: Any, i: int) -> Any:
    return rows(conn, "SET STATEMENT sql_mode = 'NO_ZERO_DATE' FOR SELECT @@SESSION.sql_mode")


def user_variable(c: Client, conn: Any, i: int) -> Any:
    rows(conn, "SET @uv = %s", (c.values[i],))


def isolation(c: Client, conn: Any, i: int) -> Any:
    rows(conn, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")


def insert_auto(c: Client, conn: Any, i: int) -> Any:
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {DB}.leak_t (owner, v) VALUES (%s, %s)", (c.me, c.values[i]))
        c.mine = cur.lastrowid
    return cur.rowcount


def insert_explicit(c: Client, conn: Any, i: int) -> Any:
    # Negative ids: given explicitly, they leave the auto-increment counter alone.
    rows(conn, f"INSERT INTO {DB}.leak_t (id, owner, v) VALUES (%s, %s, 0)", (-(c.id_base + c.me * 100 + i), c.me))


def last_id(c: Client, conn: Any, i: int) -> Any:
    [(value,)] = rows(conn, "SELECT LAST_INSERT_ID()")
    return value == c.mine


def last_id_in_procedure(c: Client, conn: Any, i: int) -> Any:
    [(value,)] = rows(conn, f"CALL {DB}.leak_last_id()")
    return value == c.mine


def warning(c: Client, conn: Any, i: int) -> Any:
    rows(conn, "SELECT CAST(%s AS INT)", (f"w{c.me}",))
    return rows(conn, "SHOW WARNINGS")


def error(c: Client, conn: Any, i: int) -> Any:
    try:
        rows(conn, f"SELECT no_such_column FROM {DB}.leak_t")
    except pymysql.err.OperationalError as exc:
        return [exc.args[0], rows(conn, "SHOW ERRORS")]
    return "no error"


def diagnostics(c: Client, conn: Any, i: int) -> Any:
    """What another client's statement left would show here (a table statement first, so
    this client's own earlier messages are gone in both runs)."""
    rows(conn, f"SELECT COUNT(*) FROM {DB}.leak_t WHERE owner = -1")
    return rows(conn, "SHOW WARNINGS")


def temporary(c: Client, conn: Any, i: int) -> Any:
    rows(conn, f"CREATE TEMPORARY TABLE IF NOT EXISTS {DB}.leak_tmp_{c.me} (a INT)")
    rows(conn, f"INSERT INTO {DB}.leak_tmp_{c.me} VALUES (1)")
    return rows(conn, f"SELECT COUNT(*) FROM {DB}.leak_tmp_{c.me}")


def lock(c: Client, conn: Any, i: int) -> Any:
    return rows(conn, "SELECT GET_LOCK(%s, 0)", (f"leak_{c.me}",))


def lock_in_function(c: Client, conn: Any, i: int) -> Any:
    return rows(conn, f"SELECT {DB}.leak_lock(%s)", (c.me,))


def release(c: Client, conn: Any, i: int) -> Any:
    return rows(conn, "SELECT RELEASE_LOCK(%s)", (f"leak_{c.me}",))


def locks_held(c: Client, conn: Any, i: int) -> Any:
    """Which clients' named locks this session holds (only ever its own)."""
    return rows(conn, f"SELECT seq FROM seq_0_to_{CLIENTS - 1} "
                      "WHERE IS_USED_LOCK(CONCAT('leak_', seq)) = CONNECTION_ID()")


def dirty_next(c: Client, conn: Any, i: int) -> Any:
    rows(conn, f"CALL {DB}.leak_dirty()")


def transaction(c: Client, conn: Any, i: int) -> Any:
    """Whether the next transaction reads another session's uncommitted row (a READ
    UNCOMMITTED one does; the row stays uncommitted for the whole test)."""
    rows(conn, "BEGIN")
    seen = rows(conn, f"SELECT COUNT(*) FROM {DB}.leak_t WHERE owner = -2")
    rows(conn, "COMMIT")
    return seen


def routines(c: Client, conn: Any, i: int) -> Any:
    rows(conn, f"CALL {DB}.leak_rows(%s)", (c.me,))
    return rows(conn, f"SELECT {DB}.leak_f(%s)", (c.values[i],))


def character_sets(c: Client, conn: Any, i: int) -> Any:
    return rows(conn, "SELECT @@character_set_database, @@collation_database, @@character_set_client, "
                      "@@character_set_results, @@collation_connection, DATABASE()")


def database_charset(c: Client, conn: Any, i: int) -> Any:
    """ucs2, utf16 and utf32 also change how the server pads its OK packets' state blocks."""
    name, value = DATABASE_CHARSETS[c.values[i] % len(DATABASE_CHARSETS)]
    rows(conn, f"SET {name} = %s", (value,))
    return character_sets(c, conn, i)


def names(c: Client, conn: Any, i: int) -> Any:
    rows(conn, NAMES[c.values[i] % len(NAMES)])
    return character_sets(c, conn, i)


def schema(c: Client, conn: Any, i: int) -> Any:
    """USE gives back the schema's own character set, whatever a SET made it."""
    rows(conn, f"USE {('information_schema', DB)[c.values[i] % 2]}")
    return character_sets(c, conn, i)


def multi(c: Client, conn: Any, i: int) -> Any:
    return rows(conn, "SET @@SESSION.max_join_size = 123456789; SELECT @@SESSION.max_join_size")


STEPS_BY_NAME: dict[str, tuple[int, Callable[[Client, Any, int], Any]]] = {
    "view": (10, view), "set_mode": (6, set_mode), "set_zone": (4, set_zone),
    "set_statement": (4, set_statement), "user_variable": (1, user_variable), "isolation": (3, isolation),
    "insert_auto": (8, insert_auto), "insert_explicit": (4, insert_explicit), "last_id": (6, last_id),
    "last_id_in_procedure": (4, last_id_in_procedure), "warning": (5, warning), "error": (3, error),
    "diagnostics": (6, diagnostics), "temporary": (1, temporary), "lock": (1, lock),
    "lock_in_function": (1, lock_in_function), "release": (2, release), "locks_held": (6, locks_held),
    "dirty_next": (3, dirty_next), "transaction": (6, transaction), "routines": (4, routines),
    "multi": (2, multi), "character_sets": (4, character_sets), "database_charset": (3, database_charset),
    "names": (3, names), "schema": (2, schema),
}


def run_all(clients: list[Client], connect: Callable[[], Any], at_once: bool) -> dict[int, list[Any]]:
    """Each client's results, step by step; clients run concurrently or one by one."""
    results: dict[int, list[Any]] = {}
    failures: list[str] = []

    def run(client: Client) -> None:
        conn = connect()
        seen = []
        try:
            for i in range(STEPS):
                try:
                    seen.append((client.steps[i], client.run(conn, i)))
                except pymysql.err.MySQLError as exc:
                    seen.append((client.steps[i], f"error {exc.args[0]}"))
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            failures.append(f"client {client.me}: {exc!r}")
        finally:
            conn.close()
        results[client.me] = seen

    if at_once:
        threads = [threading.Thread(target=run, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    else:
        for client in clients:
            run(client)
    assert failures == []
    return results


def set_up(db_server: servers.DbServer, statements: tuple[str, ...]) -> Any:
    """Runs ``statements``, then returns a connection holding an uncommitted row
    (owner -2) that only a READ UNCOMMITTED transaction reads."""
    servers.as_root(db_server, *statements)
    uncommitted = db_server.connect(autocommit=False)
    with uncommitted.cursor() as cur:
        cur.execute(f"INSERT INTO {DB}.leak_t (owner, v) VALUES (-2, 0)")
    return uncommitted


def test_random_sequences_see_what_they_would_see_directly(db_server: servers.DbServer, make_proxy) -> None:
    """24 clients x 30 random stateful steps on a pool of 3: every client reads exactly
    what it reads when the same steps run directly, alone on a connection of its own."""
    proxy = make_proxy(pool={"max_connections": POOL, "borrow_timeout": 120})
    leak_server = db_server
    uncommitted = set_up(db_server, SETUP)
    options = {"autocommit": True, "client_flag": CLIENT.MULTI_STATEMENTS, "read_timeout": 120}
    direct = run_all([Client(me, 10_000_000) for me in range(CLIENTS)],
                     lambda: leak_server.connect(user=servers.APP_USER, password=servers.APP_PASSWORD,
                                                 database=servers.APP_DATABASE, **options),
                     at_once=False)
    through = run_all([Client(me, 20_000_000) for me in range(CLIENTS)],
                      lambda: proxy.connect(**options), at_once=True)
    uncommitted.rollback()
    uncommitted.close()
    differences = []
    for me in range(CLIENTS):
        for step, (expected, got) in enumerate(zip(direct[me], through[me])):
            if expected != got:
                differences.append(f"client {me} step {step} {expected[0]}: directly {expected[1]!r}, "
                                   f"through pyproxy {got[1]!r}")
                break
    assert differences == [], "\n".join(differences)
    pins = [line for line in proxy.log_text().splitlines() if '"session_pinned"' in line]
    print(f"\n[leaks] {CLIENTS} clients x {STEPS} steps on a pool of {POOL}: every view as directly; "
          f"{len(pins)} sessions pinned")


@pytest.mark.parametrize("charset", ["utf32", "ucs2", "utf16le"])
def test_transaction_characteristics_in_a_wide_database_charset(db_server: servers.DbServer, make_proxy,
                                                               charset: str) -> None:
    """MariaDB writes the transaction characteristics it reports in the database character
    set, with lengths cut to a byte when the text is long: the client's transaction still
    gets its isolation level and access mode through pyproxy, as directly."""
    proxy = make_proxy(pool={"max_connections": 2})
    uncommitted = set_up(db_server, SETUP[:1])

    def run(conn: Any) -> list[Any]:
        seen = []
        for sql in (f"SET character_set_database = '{charset}'",
                    "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                    f"SELECT COUNT(*) FROM {DB}.leak_t WHERE owner = -2",
                    f"INSERT INTO {DB}.leak_t (owner, v) VALUES (-3, 0)",
                    "COMMIT",
                    f"SELECT COUNT(*) FROM {DB}.leak_t WHERE owner = -2",
                    "SELECT @@character_set_database"):
            try:
                seen.append(rows(conn, sql))
            except pymysql.err.MySQLError as exc:
                seen.append(exc.args[0])
        return seen

    try:
        direct = db_server.connect(user=servers.APP_USER, password=servers.APP_PASSWORD,
                                   database=servers.APP_DATABASE, autocommit=True)
        try:
            expected = run(direct)
        finally:
            direct.close()
        assert expected[3] == [(1,)] and expected[4] == 1792  # dirty read; read-only transaction
        through = proxy.connect(autocommit=True)
        try:
            assert run(through) == expected
        finally:
            through.close()
    finally:
        uncommitted.rollback()
        uncommitted.close()
