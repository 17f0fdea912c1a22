"""pyproxy.routines: verdicts on stored code, read from rows as information_schema gives them."""

from __future__ import annotations

from pyproxy.routines import CLEAN, UNKNOWN, RoutineCatalog, Verdict

ROWS = [
    ("app", "plain", "PROCEDURE", "BEGIN DECLARE n INT; SELECT COUNT(*) INTO n FROM t; UPDATE t SET a = 1; END"),
    ("app", "handled", "PROCEDURE", "BEGIN DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END; SELECT 1; END"),
    ("app", "locks", "PROCEDURE", "BEGIN DO GET_LOCK('x', 0); END"),
    ("app", "commented", "PROCEDURE", "BEGIN DO GET_LOCK /* c */ ('x', 0); END"),
    ("app", "dynamic", "PROCEDURE", "BEGIN PREPARE s FROM 'SELECT 1'; EXECUTE s; END"),
    ("app", "uservar", "PROCEDURE", "BEGIN SELECT a INTO @saved FROM t LIMIT 1; END"),
    ("app", "reads_uservar", "PROCEDURE", "BEGIN SELECT @sys_config; END"),
    ("app", "bare", "PROCEDURE", "BEGIN SET @@tx_isolation = 'READ-UNCOMMITTED'; END"),
    ("app", "temp", "PROCEDURE", "BEGIN CREATE TEMPORARY TABLE x (a INT); END"),
    ("app", "caller", "PROCEDURE", "BEGIN CALL plain(); CALL app.locks(); END"),
    ("app", "calls_unknown", "PROCEDURE", "BEGIN CALL nowhere(); END"),
    ("app", "ping", "PROCEDURE", "BEGIN CALL pong(); END"),
    ("app", "pong", "PROCEDURE", "BEGIN CALL ping(); END"),
    ("app", "hidden", "PROCEDURE", None),
    ("app", "insert_id", "PROCEDURE", "BEGIN SELECT LAST_INSERT_ID(); END"),
    ("app", "uses_flock", "PROCEDURE", "BEGIN SELECT flock(); END"),
    ("app", "flock", "FUNCTION", "RETURN GET_LOCK('x', 0)"),
    ("app", "plus", "FUNCTION", "RETURN a + 1"),
    ("app", "reads_id", "FUNCTION", "RETURN LAST_INSERT_ID()"),
    ("app", "orders", "TRIGGER", "SET NEW.total = NEW.a * 2"),
    ("app", "orders", "TRIGGER", "SET @audit = NEW.id"),
    ("app", "locked_view", "VIEW", "select `app`.`flock`() AS `f`"),
    ("app", "clean_view", "VIEW", "select `app`.`plus`(1) AS `p`"),
]


def catalog() -> RoutineCatalog:
    result = RoutineCatalog()
    result.load(ROWS)
    return result


def test_clean_procedures() -> None:
    """Routines that only read and write rows (a DECLARE ... HANDLER included) are clean,
    so a CALL of them need not pin."""
    c = catalog()
    assert c.procedure("plain", "app") == CLEAN
    assert c.procedure("app.handled", None) == CLEAN
    assert c.procedure("`app`.`PLAIN`", None) == CLEAN
    assert not c.stale


def test_unclean_procedures_say_why() -> None:
    c = catalog()
    expected = {"locks": "GET_LOCK", "commented": "GET_LOCK", "dynamic": "dynamic SQL",
                "uservar": "user variables set", "bare": "SET @@variable", "temp": "temporary tables"}
    for name, what in expected.items():
        verdict = c.procedure(name, "app")
        assert verdict.unclean == f"{what} in app.{name}", name


def test_reading_a_user_variable_is_clean() -> None:
    """Reading @x reads the connection's (a client with user variables is pinned anyway)."""
    assert catalog().procedure("reads_uservar", "app") == CLEAN


def test_calls_spread_their_verdict() -> None:
    """A routine is no cleaner than what it calls, through nesting, recursion, unknown
    routines and stored functions in its body."""
    c = catalog()
    assert c.procedure("caller", "app").unclean == "GET_LOCK in app.locks"
    assert c.procedure("calls_unknown", "app") == UNKNOWN
    assert c.procedure("ping", "app") == CLEAN
    assert c.procedure("uses_flock", "app").unclean == "GET_LOCK in app.flock"


def test_unknown_and_unreadable_routines() -> None:
    """A routine not in the catalog, or whose body the account cannot read, is unknown:
    not clean, and it may touch LAST_INSERT_ID()."""
    c = catalog()
    assert c.procedure("hidden", "app") == UNKNOWN
    assert c.procedure("nope", "app") == UNKNOWN
    assert c.procedure("plain", None) == UNKNOWN  # no default schema to find it in
    assert UNKNOWN.insert_id and UNKNOWN.unclean


def test_insert_id_readers() -> None:
    c = catalog()
    assert c.procedure("insert_id", "app") == Verdict(None, True)
    assert c.check(b"SELECT reads_id()") == Verdict(None, True)


def test_watched_names_in_statements() -> None:
    """Statements naming an unclean function (by its call), a table with an unclean trigger
    or an unclean view (by name) get that verdict; clean ones are not watched."""
    c = catalog()
    assert c.check(b"SELECT flock()").unclean == "GET_LOCK in app.flock"
    assert c.check(b"SELECT app.flock /* x */ ()").unclean == "GET_LOCK in app.flock"
    assert c.check(b"SELECT flock FROM t") is None  # a column of that name, not a call
    assert c.check(b"INSERT INTO orders VALUES (1)").unclean == "user variables set in app.orders"
    assert c.check(b"SELECT * FROM locked_view").unclean == "GET_LOCK in app.flock"
    assert c.check(b"SELECT plus(1), p FROM clean_view") is None


def test_no_watch_without_unclean_code() -> None:
    c = RoutineCatalog()
    c.load([("app", "plus", "FUNCTION", "RETURN a + 1")])
    assert c.watch is None and c.check(b"SELECT plus(1)") is None


def test_reload_of_the_same_rows_keeps_the_verdicts() -> None:
    """A periodic read that finds nothing changed does no work; a changed body is judged anew."""
    c = catalog()
    watch = c.watch
    c.stale = True
    c.load(ROWS)
    assert c.watch is watch and not c.stale
    c.load([*ROWS[:-1], ("app", "clean_view", "VIEW", "select get_lock('x', 0)")])
    assert c.check(b"SELECT * FROM clean_view").unclean == "GET_LOCK in app.clean_view"


def test_failed_read_makes_every_call_unknown() -> None:
    c = catalog()
    c.failed = True
    assert c.procedure("plain", "app") == UNKNOWN
