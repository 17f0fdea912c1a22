"""pyproxy.session: carried state, reconcile plans, pin reasons and the keep-or-give-back verdict."""

from __future__ import annotations

import attrs
import pytest

import vectors
from pyproxy import sqltext
from pyproxy.release import HOLD, KEEP, verdict
from pyproxy.session import (
    DEFAULT_TRACKING,
    TRACKING_VARIABLES,
    ClientSession,
    SessionState,
    changed_defaults,
    initial_state,
    needs_reset,
    reconcile,
    reset_state,
    tracking,
    tracking_assignments,
)
from pyproxy.wire.commands import make_init_db, make_query, make_set_option
from pyproxy.wire.constants import (
    MYSQL_OPTION_MULTI_STATEMENTS_OFF,
    MYSQL_OPTION_MULTI_STATEMENTS_ON,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_STATE_CHANGE,
    SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
    SESSION_TRACK_TRANSACTION_STATE,
)
from pyproxy.wire.framing import PacketFramer
from pyproxy.wire.responses import SessionChanges, parse_ok

FRESH = initial_state(45, None, True, False)


def changes_of(stream: bytes) -> SessionChanges:
    [packet] = PacketFramer().feed(stream)
    changes = parse_ok(packet.payload, session_track=True).changes
    assert changes is not None
    return changes


def session(**state: object) -> ClientSession:
    return ClientSession(attrs.evolve(FRESH, **state))


class CleanConnection:
    """A backend connection with nothing of its own that would hold it back."""

    last_insert_id = 0
    broken = False


def keeps_backend(s: ClientSession) -> bool:
    """Whether the release rule (pyproxy.release) keeps the connection with the session."""
    return verdict(s, CleanConnection()) in (KEEP, HOLD)  # type: ignore[arg-type]


def query(s: ClientSession, sql: bytes, failed: bool = False) -> str | None:
    """What observe_query() makes of ``sql``, scanned as pyproxy scans it before it runs."""
    return s.observe_query(sql, failed, sqltext.scan(sql))


# -- initial state and reconcile ---------------------------------------------

def test_initial_state_from_collation_id() -> None:
    """The login collation id gives the character set and collation a new connection has."""
    assert FRESH == SessionState(None, True, "utf8mb4", "utf8mb4", "utf8mb4", "utf8mb4_general_ci", False)
    latin1 = initial_state(8, "app", False, True)
    assert (latin1.character_set_client, latin1.collation_connection) == ("latin1", "latin1_swedish_ci")
    assert (latin1.schema, latin1.autocommit, latin1.multi_statements) == ("app", False, True)
    assert initial_state(4000, None, True, False) == FRESH


def test_reconcile_nothing_when_equal() -> None:
    """Equal states need no command at all."""
    assert reconcile(FRESH, attrs.evolve(FRESH)) == []


def test_reconcile_one_set_for_all_variables() -> None:
    """autocommit and every character-set variable travel in one SET."""
    desired = attrs.evolve(FRESH, autocommit=False, character_set_client="latin1",
                           character_set_results="", character_set_connection="latin1",
                           collation_connection="latin1_bin")
    assert reconcile(desired, FRESH) == [make_query(
        "SET SESSION autocommit=0, character_set_client=_utf8mb4'latin1', character_set_results=NULL, "
        "character_set_connection=_utf8mb4'latin1', collation_connection=_utf8mb4'latin1_bin'")]


def test_reconcile_init_db() -> None:
    """A different schema is selected with COM_INIT_DB, not USE."""
    assert reconcile(attrs.evolve(FRESH, schema="app"), FRESH) == [make_init_db("app")]
    assert reconcile(attrs.evolve(FRESH, schema="b"), attrs.evolve(FRESH, schema="a")) == [make_init_db("b")]


def test_reconcile_cannot_unselect_schema() -> None:
    """Going to no schema is not a command: needs_reset tells the caller to reset instead."""
    actual = attrs.evolve(FRESH, schema="app")
    assert reconcile(FRESH, actual) == []
    assert needs_reset(FRESH, actual)
    assert not needs_reset(actual, FRESH)
    assert not needs_reset(actual, actual)
    assert not needs_reset(FRESH, FRESH)


def test_reconcile_set_option() -> None:
    """Multi-statements is switched with COM_SET_OPTION, both ways."""
    on = attrs.evolve(FRESH, multi_statements=True)
    assert reconcile(on, FRESH) == [make_set_option(MYSQL_OPTION_MULTI_STATEMENTS_ON)]
    assert reconcile(FRESH, on) == [make_set_option(MYSQL_OPTION_MULTI_STATEMENTS_OFF)]


def test_reconcile_collation_after_character_set_connection() -> None:
    """Changing character_set_connection resets the collation, so it is set again after it."""
    desired = attrs.evolve(FRESH, character_set_connection="latin1")
    assert reconcile(desired, FRESH) == [make_query(
        "SET SESSION character_set_connection=_utf8mb4'latin1', collation_connection=_utf8mb4'utf8mb4_general_ci'")]


def test_reconcile_order_and_count() -> None:
    """All three kinds at once: SET_OPTION, INIT_DB, then the one SET."""
    desired = attrs.evolve(FRESH, schema="app", autocommit=False, multi_statements=True)
    assert reconcile(desired, FRESH) == [
        make_set_option(MYSQL_OPTION_MULTI_STATEMENTS_ON), make_init_db("app"),
        make_query("SET SESSION autocommit=0")]


def test_reconcile_quotes_values() -> None:
    """Values with quotes, backslashes or more than ASCII go as hex: no escaping, whatever sql_mode says."""
    desired = attrs.evolve(FRESH, character_set_client="a'b\\c")
    assert reconcile(desired, FRESH) == [make_query("SET SESSION character_set_client=_utf8mb4 X'6127625c63'")]


# -- tracked changes ----------------------------------------------------------

def test_set_names_is_carried() -> None:
    """SET NAMES (captured) changes the carried character sets and pins nothing."""
    s = session()
    assert s.observe_changes(changes_of(vectors.SET_NAMES_OK), b"SET NAMES latin1") is None
    assert (s.state.character_set_client, s.state.character_set_results,
            s.state.character_set_connection) == ("latin1", "latin1", "latin1")
    assert not keeps_backend(s)


def test_set_names_collation_follows_character_set() -> None:
    """MariaDB reports SET NAMES' character sets but not its collation: the carried collation
    becomes "the default of character_set_connection", and replaying it sets only the charset."""
    s = session()
    s.observe_changes(changes_of(vectors.SET_NAMES_OK), b"SET NAMES latin1")
    assert s.state.collation_connection is None
    [command] = reconcile(s.state, FRESH)
    assert b"character_set_connection=_utf8mb4'latin1'" in command
    assert b"collation_connection" not in command


def test_set_names_collate_clause_is_carried() -> None:
    """SET NAMES x COLLATE y: the collation the server does not report is read from the text."""
    s = session()
    s.observe_changes(changes_of(vectors.SET_NAMES_OK), b"SET NAMES latin1 COLLATE latin1_bin")
    assert s.state.collation_connection == "latin1_bin"
    [command] = reconcile(s.state, FRESH)
    assert command.endswith(b"character_set_connection=_utf8mb4'latin1', collation_connection=_utf8mb4'latin1_bin'")


def test_default_collation_is_restored_by_setting_the_charset() -> None:
    """A backend with an explicit collation goes back to the default by re-setting the charset."""
    explicit = attrs.evolve(FRESH, collation_connection="utf8mb4_bin")
    default = attrs.evolve(FRESH, collation_connection=None)
    assert reconcile(default, explicit) == [make_query("SET SESSION character_set_connection=_utf8mb4'utf8mb4'")]


def test_use_is_carried() -> None:
    """USE (captured) changes the carried schema."""
    s = session()
    assert s.observe_changes(changes_of(vectors.USE_OK), b"USE mysql") is None
    assert s.state.schema == "mysql"
    assert not keeps_backend(s)


def test_database_charset_is_carried_until_the_next_use() -> None:
    """SET character_set_database lasts until a USE gives the schema's own back."""
    s = session(schema="app")
    s.observe_changes(SessionChanges((("character_set_database", "ucs2"),), state_changed=True),
                      b"SET character_set_database = ucs2")
    assert s.state.database_charset == ("character_set_database", "ucs2")
    assert reconcile(s.state, attrs.evolve(FRESH, schema="app")) == [
        make_query("SET SESSION character_set_database=_utf8mb4'ucs2'")]
    # Another schema on the connection: USE first (which sets the schema's own), then the SET.
    assert reconcile(s.state, attrs.evolve(FRESH, schema="other")) == [
        make_init_db("app"), make_query("SET SESSION character_set_database=_utf8mb4'ucs2'")]
    # The connection goes to a client that never set it: USE gives the schema's own back.
    assert reconcile(session(schema="app").state, s.state) == [make_init_db("app")]
    s.observe_changes(SessionChanges((("collation_database", "utf16_bin"),), state_changed=True), None)
    assert s.state.database_charset == ("collation_database", "utf16_bin")
    s.observe_changes(changes_of(vectors.USE_OK), b"USE mysql")
    assert s.state.database_charset is None and s.state.schema == "mysql"


def test_database_charset_reported_with_a_schema_is_the_schemas() -> None:
    s = session(schema="app")
    s.observe_changes(SessionChanges((("character_set_database", "latin1"),), schema="other",
                                     state_changed=True), b"USE other")
    assert s.state.database_charset is None and s.state.schema == "other"


def test_database_charset_without_schema_needs_a_new_session() -> None:
    """No USE gives a schema-less session its default back; a reset does."""
    left = attrs.evolve(FRESH, database_charset=("character_set_database", "ujis"))
    assert needs_reset(FRESH, left)
    assert not needs_reset(left, FRESH)
    assert not needs_reset(attrs.evolve(FRESH, schema="app"), attrs.evolve(left, schema="app"))


def test_reset_leaves_the_servers_database_charset_not_the_schemas() -> None:
    """COM_RESET_CONNECTION keeps the schema, but its character set becomes the global one:
    a client that wants the schema's own gets the schema chosen again, a client that reset
    its own session gets the global value by a SET."""
    after = reset_state(45, "information_schema", True, False)
    assert after.schema == "information_schema" and after.database_charset is not None
    chosen = attrs.evolve(FRESH, schema="information_schema")
    assert reconcile(chosen, after) == [make_init_db("information_schema")]
    assert reconcile(after, chosen) == [make_query("SET SESSION collation_database=@@GLOBAL.collation_database")]
    assert reconcile(after, after) == []
    # Without a schema a reset gives what a new session has: nothing to carry.
    assert reset_state(45, None, True, False) == FRESH
    assert needs_reset(FRESH, after)


def test_collation_connection_alone_sets_the_character_set() -> None:
    """SET collation_connection reports only itself, yet changes character_set_connection."""
    s = session()
    s.observe_changes(SessionChanges((("collation_connection", "ucs2_general_ci"),), state_changed=True),
                      b"SET collation_connection = ucs2_general_ci")
    assert (s.state.character_set_connection, s.state.collation_connection) == ("ucs2", "ucs2_general_ci")


def test_empty_schema_means_none() -> None:
    """A schema entry of '' (the schema was dropped) leaves no schema selected."""
    s = session(schema="app")
    s.observe_changes(SessionChanges(schema="", state_changed=True), b"DROP DATABASE app")
    assert s.state.schema is None


def test_autocommit_is_carried() -> None:
    """SET autocommit=0/1 (captured) is carried, not pinned."""
    s = session()
    assert s.observe_changes(changes_of(vectors.AUTOCOMMIT_OFF_OK), b"SET autocommit=0") is None
    assert s.state.autocommit is False
    s.observe_changes(changes_of(vectors.AUTOCOMMIT_ON_OK), b"SET autocommit=1")
    assert s.state.autocommit is True
    assert s.pin_reason is None


def test_tracking_variables_set_by_a_client_pin() -> None:
    """The tracking variables steer pyproxy's own view of the session: a client that
    changes them (captured: pyproxy's tracking SET) is pinned, and nothing is carried."""
    s = session()
    reason = s.observe_changes(changes_of(vectors.TRACKING_OK), None)
    assert reason is not None and "session_track" in reason
    assert s.state == FRESH


def test_user_variable_pins() -> None:
    """SET @x=1 (captured: only 'state changed') pins the session."""
    s = session()
    reason = s.observe_changes(changes_of(vectors.USER_VARIABLE_OK), b"SET @x=1")
    assert reason is not None and "user variable" in reason
    assert s.pin_reason == reason
    assert keeps_backend(s)


def test_temporary_table_pins_without_explanation() -> None:
    """CREATE TEMPORARY TABLE (captured) reports only 'state changed', and that pins."""
    s = session()
    reason = s.observe_changes(changes_of(vectors.TEMP_TABLE_OK), b"CREATE TEMPORARY TABLE tmp1 (a INT)")
    assert reason == "temporary table created"
    assert keeps_backend(s)


def test_user_variable_next_to_carried_change() -> None:
    """A carried change explains the flag, but a user variable in the SQL still pins."""
    s = session()
    reason = s.observe_changes(changes_of(vectors.SET_NAMES_OK), b"SET NAMES latin1, @x = 1")
    assert reason == "user variable set"
    assert s.state.character_set_client == "latin1"


def test_system_variable_at_at_is_not_a_user_variable() -> None:
    """@@autocommit is a system variable, not a user variable."""
    s = session()
    assert s.observe_changes(changes_of(vectors.AUTOCOMMIT_OFF_OK), b"SET @@autocommit=0") is None


def test_session_variables_are_carried() -> None:
    """sql_mode, time_zone and the like are carried, not pinned, and replayed in one SET."""
    s = session()
    changes = SessionChanges(variables=(("sql_mode", "ANSI"), ("time_zone", "+02:00")),
                             state_changed=True)
    assert s.observe_changes(changes, b"SET sql_mode='ANSI', time_zone='+02:00'") is None
    assert s.state.variables == (("sql_mode", "ANSI"), ("time_zone", "+02:00"))
    assert not keeps_backend(s)
    assert reconcile(s.state, FRESH) == [make_query("SET SESSION sql_mode=_utf8mb4'ANSI', time_zone=_utf8mb4'+02:00'")]
    assert reconcile(FRESH, s.state) == [make_query("SET SESSION sql_mode=DEFAULT, time_zone=DEFAULT")]


def test_numeric_variables_are_replayed_unquoted() -> None:
    """Numeric session variables refuse quoted values, so numbers are written bare."""
    desired = attrs.evolve(FRESH, variables=(("wait_timeout", "30"),))
    assert reconcile(desired, FRESH) == [make_query("SET SESSION wait_timeout=30")]


def test_uncarried_variable_pins() -> None:
    """A variable that cannot be carried (a one-shot insert id) pins, naming it; the
    configured ignore list is honoured."""
    changes = SessionChanges(variables=(("insert_id", "42"),), state_changed=True)
    assert session().observe_changes(changes, b"SET insert_id=42") == "system variable insert_id changed"
    s = session()
    assert s.observe_changes(changes, None, ignore=frozenset({"insert_id"})) is None
    assert s.state == FRESH


def test_first_pin_reason_wins() -> None:
    """A session is pinned once; later reasons do not replace the first."""
    s = session()
    s.pin("first")
    s.observe_changes(changes_of(vectors.TEMP_TABLE_OK), None)
    assert s.pin_reason == "first"


# -- status and errors ----------------------------------------------------------

def test_observe_status() -> None:
    """The final status says whether a transaction is open and what autocommit is."""
    s = session()
    s.observe_status(SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_IN_TRANS)
    assert s.in_transaction and keeps_backend(s)
    s.observe_status(SERVER_STATUS_AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED)
    assert not s.in_transaction and not keeps_backend(s)
    s.observe_status(0)
    assert s.state.autocommit is False


def test_error_with_autocommit_off_is_uncertain() -> None:
    """An error with autocommit off may have opened a transaction: hold on until a status says."""
    s = session(autocommit=False)
    s.observe_error()
    assert s.uncertain and keeps_backend(s)
    s.observe_status(0)
    assert not keeps_backend(s)
    on = session()
    on.observe_error()
    assert not keeps_backend(on)


# -- statement text -------------------------------------------------------------

@pytest.mark.parametrize(("sql", "reason"), [
    (b"SELECT GET_LOCK('job', 10)", "GET_LOCK used"),
    (b"select get_lock ('job', 10)", "GET_LOCK used"),
    (b"LOCK TABLES t WRITE", "LOCK TABLES used"),
    (b"lock table t read", "LOCK TABLES used"),
    (b"HANDLER t OPEN", "HANDLER used"),
    (b"XA START 'x'", "XA transaction used"),
    (b"xa begin 'x'", "XA transaction used"),
    (b"FLUSH TABLES WITH READ LOCK", "FLUSH TABLES WITH READ LOCK used"),
    (b"/* app */ LOCK TABLES t WRITE", "LOCK TABLES used"),
    (b" \n\tLock Tables t write", "LOCK TABLES used"),
    (b"SELECT 1; handler t open", "HANDLER used"),
    (b"SELECT ROW_COUNT()", "ROW_COUNT() (reads the previous statement) used"),
    (b"SELECT FOUND_ROWS()", "FOUND_ROWS() (reads the previous statement) used"),
])
def test_untracked_statements_pin(sql: bytes, reason: str) -> None:
    """Statements whose effect tracking does not report pin the session, by name."""
    s = session()
    assert query(s, sql, failed=False) == reason
    assert s.pin_reason == reason
    assert keeps_backend(s)


@pytest.mark.parametrize("sql", [
    b"SELECT RELEASE_LOCK('job')", b"UNLOCK TABLES", b"SELECT * FROM handler_log",
    b"SELECT 1", b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    b"SELECT handler FROM jobs", b"INSERT INTO notes VALUES ('please lock tables')",
    b"SELECT 1 /* xa start */",
])
def test_ordinary_statements_do_not_pin(sql: bytes) -> None:
    """Look-alike statements pin nothing."""
    s = session()
    assert query(s, sql, failed=False) is None
    assert not keeps_backend(s)


def test_failed_statement_does_not_pin() -> None:
    """A GET_LOCK that failed took no lock; one before a failing statement of the
    same multi-statement ran and did."""
    s = session()
    assert query(s, b"SELECT GET_LOCK('a', 0)", failed=True) is None
    assert s.pin_reason is None
    assert query(session(), b"SELECT GET_LOCK('a', 0); SELECT nope", failed=True) == "GET_LOCK used"


def test_set_transaction_holds_until_a_transaction_uses_it() -> None:
    """SET TRANSACTION (reported as the next transaction's characteristics) holds the
    connection until the server reports them used, whatever statement set them."""
    s = session()
    assert changes_of_none(vectors.SET_TRANSACTION_OK)  # without pyproxy's tracking, nothing
    pending = SessionChanges(transaction_characteristics="SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;")
    assert s.observe_changes(pending, b"CALL p()") is None
    assert s.pending_characteristics and keeps_backend(s) and s.holds_state()
    assert query(s, b"SELECT 1") is None
    assert s.pending_characteristics  # a statement without tables uses no transaction
    s.observe_changes(SessionChanges(transaction_characteristics=""), b"SELECT * FROM t")
    assert not keeps_backend(s)
    assert s.pin_reason is None


def test_lock_tables_reported_by_the_server_pins() -> None:
    """LOCK TABLES however written (an executable comment, EXECUTE IMMEDIATE, a
    procedure) shows as an L in the reported transaction state."""
    s = session()
    assert s.observe_changes(SessionChanges(transaction_state="________"), b"UNLOCK TABLES") is None
    assert s.observe_changes(SessionChanges(transaction_state="_______L"), b"CALL p()") == "LOCK TABLES used"
    assert s.pin_reason == "LOCK TABLES used"


@pytest.mark.parametrize(("sql", "reason"), [
    (b"SET @x = 1", "user variable set"),
    (b"CREATE TEMPORARY TABLE t (a INT)", "temporary table created"),
    (b"PREPARE s FROM 'SELECT 1'", "SQL prepared statement created"),
    (b"INSERT INTO t VALUES (1)", "session state changed (user variable, temporary table or prepared "
                                  "statement) by code the statement text does not show"),
    (b"CALL p()", "session state changed by stored code (user variable or temporary table)"),
])
def test_unexplained_state_change_names_its_cause(sql: bytes, reason: str) -> None:
    """A "state changed" report with no variable or schema in it pins, with the cause the
    statement text shows (a trigger behind an INSERT shows none)."""
    s = session()
    assert s.observe_changes(SessionChanges(state_changed=True), sql, found=sqltext.scan(sql)) == reason


def test_state_change_beside_a_variable_is_explained_only_by_plain_statements() -> None:
    """A variable change raises the flag too; next to a user variable, or from stored code
    that may set one, the session still pins."""
    changes = SessionChanges(variables=(("sql_mode", "ANSI"),), state_changed=True)
    s = session()
    assert s.observe_changes(changes, b"SET sql_mode = 'ANSI'") is None
    sql = b"SET sql_mode = 'ANSI', @x = 1"
    assert session().observe_changes(changes, sql, found=sqltext.scan(sql)) == "user variable set"
    assert session().observe_changes(changes, b"CALL p()", found=sqltext.scan(b"CALL p()"),
                                     hidden="user variables in app.p") is not None


def changes_of_none(stream: bytes) -> bool:
    [packet] = PacketFramer().feed(stream)
    return parse_ok(packet.payload, session_track=True).changes is None


def test_huge_statements_are_searched_cheaply_and_unprovable_ones_pin() -> None:
    """A multi-megabyte INSERT is read with the full patterns only in its first 64 KiB;
    the rest is searched for needles, and one that has any pins (a GET_LOCK there would
    otherwise leave a lock on the connection), while plain bulk data does not."""
    rows = b"INSERT INTO t VALUES " + b"(1)," * 300000
    s = session()
    assert query(s, rows + b"(2)") is None
    reason = query(s, rows + b"(GET_LOCK('x', 1))")
    assert reason is not None and "longer than 64 KiB" in reason


def test_results_held_for_the_next_statement_only() -> None:
    """Warnings, errors and affected rows hold the connection for a follow-up; an insert id
    does not (LAST_INSERT_ID() is carried), and holding is not state that dies with it."""
    s = session()
    s.observe_result(error=False, warnings=0, affected=0, insert_id=42)
    assert not keeps_backend(s) and s.last_insert_id == 42
    s.observe_result(error=False, warnings=1, affected=0, insert_id=0)
    assert keeps_backend(s) and not s.holds_state()
    s.observe_result(error=False, warnings=0, affected=0, insert_id=0)
    assert not keeps_backend(s)


# -- SET @@name, which the server does not report ------------------------------

@pytest.mark.parametrize(("sql", "names"), [
    (b"SET @@sql_mode = 'ANSI'", ("sql_mode",)),
    (b"set @@Auto_Increment_Increment:=5, @@session.time_zone='+01:00', @@max_join_size=10",
     ("auto_increment_increment", "max_join_size")),
    (b"SET sql_mode = '', @@time_zone = '+02:00'; SELECT @@version = 1", ("time_zone",)),
    (b"SELECT 1; SET @@sql_mode = ''", ("sql_mode",)),
    (b"\n\t SeT @@SQL_MODE = ''", ("sql_mode",)),
])
def test_bare_system_variable_assignments_are_read_back(sql: bytes, names: tuple[str, ...]) -> None:
    """SET @@name = value (no GLOBAL/SESSION/LOCAL) is not reported by MariaDB's
    tracking: the names are left for pyproxy to read back, in statement order."""
    s = session()
    assert query(s, sql, failed=False) is None
    assert s.reread == names
    assert s.pin_reason is None


@pytest.mark.parametrize("sql", [
    b"SET @@session.sql_mode = ''", b"SET @@global.sql_mode = ''", b"SET @@LOCAL.sql_mode = ''",
    b"SET @a = @@sql_mode", b"SELECT @@sql_mode = ''", b"SET autocommit = 0",
    b"SET @@autocommit = 0",  # the status flags carry autocommit
])
def test_reported_or_read_only_forms_need_no_read_back(sql: bytes) -> None:
    """Forms the server reports, reads of @@name and autocommit leave nothing to read back."""
    s = session()
    query(s, sql, failed=False)
    assert s.reread == ()


def test_failed_set_needs_no_read_back() -> None:
    """A SET that failed assigned nothing."""
    s = session()
    query(s, b"SET @@sql_mode = 'NOPE'", failed=True)
    assert s.reread == ()


# -- SET GLOBAL: sessions keep the defaults they started with -------------------

def test_changed_defaults() -> None:
    """Only session defaults that changed and that a SET can restore are kept: not the
    carried or uncarried ones, nor NULLs, nor ignored variables."""
    before = {"auto_increment_increment": "1", "sql_mode": "STRICT", "max_connections": "151",
              "autocommit": "ON", "character_set_client": "latin1", "insert_id": "0",
              "session_track_schema": "ON", "init_connect": None, "lc_time_names": "en_US",
              "weird name": "1"}
    after = {"auto_increment_increment": "10", "sql_mode": "STRICT", "max_connections": "200",
             "autocommit": "OFF", "character_set_client": "utf8mb4", "insert_id": "1",
             "session_track_schema": "OFF", "init_connect": "SET x=1", "lc_time_names": "fr_FR",
             "weird name": "2"}
    assert changed_defaults(before, after, frozenset({"lc_time_names"})) == {
        "auto_increment_increment": "1", "max_connections": "151"}


def test_keep_defaults_adds_what_the_session_did_not_set() -> None:
    """A session keeps the old default of a variable it never set; its own value stays."""
    s = session(variables=(("sql_mode", "ANSI"),))
    s.keep_defaults({"sql_mode": "STRICT", "auto_increment_increment": "1"})
    assert s.state.variables == (("auto_increment_increment", "1"), ("sql_mode", "ANSI"))
    same = s.state
    s.keep_defaults({"sql_mode": "X"})
    assert s.state is same


# -- what a client's tracking settings show -------------------------------------

def test_tracking_settings() -> None:
    """The settings say which variables and entry types a client sees; equal settings
    are one shared object, whether the server said ON or 1."""
    assert DEFAULT_TRACKING.variables == frozenset(
        {"autocommit", "character_set_client", "character_set_connection", "character_set_results",
         "time_zone"})
    assert DEFAULT_TRACKING.kinds == frozenset({SESSION_TRACK_SCHEMA})
    everything = tracking("*", "0", "1", "CHARACTERISTICS")
    assert everything.variables is None
    assert everything.kinds == frozenset({SESSION_TRACK_STATE_CHANGE, SESSION_TRACK_TRANSACTION_STATE,
                                          SESSION_TRACK_TRANSACTION_CHARACTERISTICS})
    assert tracking("*", "OFF", "ON", "CHARACTERISTICS") is everything
    assert tracking("", "ON", "OFF", "OFF").variables == frozenset()


def test_tracking_assignments_leave_out_what_the_client_set() -> None:
    """The SET that gives a connection a client's settings skips those it set itself."""
    assert tracking_assignments(tracking("time_zone", "1", "0", "STATE"),
                                frozenset({"session_track_schema"})) == make_query(
        "SET SESSION session_track_system_variables=_utf8mb4'time_zone', session_track_state_change=_utf8mb4'OFF', "
        "session_track_transaction_info=_utf8mb4'STATE'")
    assert tracking_assignments(DEFAULT_TRACKING, frozenset(TRACKING_VARIABLES)) is None


def test_client_setting_tracking_is_recorded() -> None:
    """A tracking variable the client set itself (reported by pyproxy's tracking) pins,
    and is remembered so that pyproxy never overwrites it."""
    s = session()
    changes = SessionChanges(variables=(("session_track_state_change", "ON"),), state_changed=True)
    assert s.observe_changes(changes, None) == "system variable session_track_state_change changed"
    assert s.own_tracking == frozenset({"session_track_state_change"})


def test_savepoint_holds_with_autocommit_off_until_the_transaction_ends() -> None:
    """A SAVEPOINT before anything started the transaction (status: no IN_TRANS) holds the
    session's connection when autocommit is off; a reported transaction, or autocommit
    back on, takes over; with autocommit on it holds nothing."""
    s = session(autocommit=False)
    s.observe_savepoint()
    assert s.savepoint and s.holds_state()
    s.observe_status(0)  # a table-less statement after it: still no transaction reported
    assert s.holds_state()
    s.observe_status(SERVER_STATUS_IN_TRANS)
    assert not s.savepoint and s.holds_state()
    s.observe_status(0)
    assert not s.holds_state()
    on = session()
    on.observe_savepoint()
    assert not on.holds_state()
    s.observe_savepoint()
    s.lose_transaction()
    assert not s.holds_state()


@pytest.mark.parametrize(("sql", "completion", "ends"), [
    (b"COMMIT RELEASE", None, True), (b"  rollback work release", None, True),
    (b"commit and no chain release", None, True), (b"COMMIT", None, False),
    (b"\ncommit", "RELEASE", True), (b"ROLLBACK", "2", True), (b"COMMIT", "NO_CHAIN", False),
    (b"SELECT 1", "RELEASE", False), (b"release savepoint a", "RELEASE", False), (b"", None, False),
])
def test_ends_session(sql: bytes, completion: str | None, ends: bool) -> None:
    """COMMIT/ROLLBACK RELEASE, or either with completion_type = RELEASE, end the server session."""
    s = session(variables=(("completion_type", completion),) if completion else ())
    assert s.ends_session(sql) is ends
