"""pyproxy.admin_commands: the console's statements, parsed without a socket."""

from __future__ import annotations

import pytest

from pyproxy.admin_commands import COMMANDS, AdminSyntaxError, Command, like, parse, select_items


@pytest.mark.parametrize(("statement", "expected"), [
    ("SHOW POOLS", Command("show pools")),
    ("  show\n  clients ; ", Command("show clients")),
    ("Show Servers;", Command("show servers")),
    ("SHOW TARGETS", Command("show targets")),
    ("show stats", Command("show stats")),
    ("SHOW CONFIG", Command("show config")),
    ("SHOW VERSION", Command("show version")),
    ("help", Command("show help")),
    ("PAUSE", Command("pause")),
    ("resume;", Command("resume")),
    ("RELOAD", Command("reload")),
    ("KILL CLIENT 17", Command("kill client", (17,))),
    ("SHUTDOWN", Command("shutdown")),
    ("shutdown graceful", Command("shutdown", (True,))),
    ("SET debug_statements_for = 60", Command("set debug_statements_for", (60.0,))),
    ("set @@debug_statements_for=0.5", Command("set debug_statements_for", (0.5,))),
    ("SET GLOBAL debug_statements_for 0", Command("set debug_statements_for", (0.0,))),
    ("SET autocommit=0", Command("set autocommit", (False,))),
    ("SET @@session.autocommit = ON", Command("set autocommit", (True,))),
    ("SET NAMES utf8mb4 COLLATE utf8mb4_general_ci", Command("ok")),
    ("SET sql_mode='STRICT_TRANS_TABLES'", Command("ok")),
    ("COMMIT", Command("ok")),
    ("rollback", Command("ok")),
    ("USE app", Command("ok")),
    ("SHOW WARNINGS", Command("show warnings")),
    ("SHOW VARIABLES", Command("show variables", (None,))),
    ("SHOW SESSION VARIABLES LIKE 'character\\_set\\_%'", Command("show variables", ("character\\_set\\_%",))),
    ("SHOW VARIABLES LIKE \"version%\"", Command("show variables", ("version%",))),
    ("select @@version_comment limit 1", Command("select", (("@@version_comment", "@@version_comment"),))),
    ("SELECT @@session.autocommit AS ac, DATABASE(), 1",
     Command("select", (("@@autocommit", "ac"), ("database()", "DATABASE()"), ("1", "1")))),
    ("SELECT @@max_allowed_packet `m`, CONNECTION_ID()",
     Command("select", (("@@max_allowed_packet", "m"), ("connection_id()", "CONNECTION_ID()")))),
])
def test_parse(statement: str, expected: Command) -> None:
    """Each command, whatever its case, spacing and trailing semicolon."""
    assert parse(statement) == expected


@pytest.mark.parametrize("statement", [
    "SHOW POOL", "SHOW DATABASES", "KILL CLIENT x", "KILL 5", "SELECT * FROM t", "SELECT @@a + 1",
    "SET debug_statements_for = 'x'", "SET debug_statements_for = -1", "DROP TABLE t", "", "SHUTDOWN NOW",
    "select @@a limit", "SELECT 1, ",
])
def test_unknown_statements(statement: str) -> None:
    """Anything else is an error that lists the known commands."""
    with pytest.raises(AdminSyntaxError) as raised:
        parse(statement)
    message = str(raised.value)
    assert all(name in message for name, _ in COMMANDS)


def test_long_statement_is_cut_in_the_error() -> None:
    with pytest.raises(AdminSyntaxError) as raised:
        parse("SELECT " + "x" * 500)
    assert "x" * 100 not in str(raised.value)


def test_select_items_rejects_what_is_not_a_list() -> None:
    assert select_items("@@a @@b") is None
    assert select_items("@@a, @@b") == [("@@a", "@@a"), ("@@b", "@@b")]


def test_like() -> None:
    """% and _ wildcards, backslash escapes, case-insensitive."""
    assert like("character\\_set%").fullmatch("CHARACTER_SET_client")
    assert not like("character\\_set%").fullmatch("characterXset")
    assert like("v_rsion").fullmatch("version")
    assert like("a.b").fullmatch("a.b") and not like("a.b").fullmatch("axb")
