"""The admin console's language: statement text in, one parsed command out.

Pure text handling, so that every form is unit-tested without a socket.
Two kinds of statements reach the console:

* pyproxy's own commands (``SHOW POOLS``, ``PAUSE``, ``KILL CLIENT 7``...),
  listed in COMMANDS with one line of help each; an unknown statement gets
  error 1064 (SQLSTATE 42000) listing them;
* what clients send by themselves when they connect: the ``mariadb`` CLI's
  ``select @@version_comment limit 1``, drivers' ``SET NAMES``,
  ``SET autocommit``, ``SELECT @@...``, ``SHOW VARIABLES``, ``COMMIT`` and
  ``ROLLBACK`` (connection pools end with one).  They are answered as a
  server would, so that any client connects without options.

Keywords are case-insensitive; whitespace and one trailing ``;`` do not
matter.
"""

from __future__ import annotations

import re

import attrs

# pyproxy's own commands, as the help and the 1064 error list them.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("SHOW POOLS", "backend connections per user and server: idle, in use, waiting, borrows"),
    ("SHOW CLIENTS", "client connections: user, address, state, backend connection, pin"),
    ("SHOW SERVERS", "backend connections: state, age, the client holding it, last health check"),
    ("SHOW TARGETS", "the database servers: role, state, probes, which one takes writes"),
    ("SHOW STATS", "counters since start: clients, commands, bytes, latency, failovers"),
    ("SHOW CONFIG", "the running configuration, secrets masked"),
    ("SHOW VERSION", "pyproxy's version and the server's"),
    ("SHOW HELP", "this list"),
    ("PAUSE", "new transactions wait, backend connections close as they come free (SIGUSR2)"),
    ("RESUME", "ends PAUSE (SIGUSR2 again)"),
    ("RELOAD", "reads the configuration again and applies it (SIGHUP)"),
    ("KILL CLIENT <id>", "closes a client connection (its transaction is rolled back)"),
    ("SHUTDOWN [GRACEFUL]", "stops pyproxy now, or once open transactions end (SIGTERM)"),
    ("SET debug_statements_for = <seconds>", "logs statement digests for that long; 0 stops"),
)

ER_PARSE_ERROR = (1064, "42000")


class AdminSyntaxError(ValueError):
    """A statement the console does not know; its message lists the commands."""

    def __init__(self, statement: str) -> None:
        shown = statement if len(statement) <= 60 else statement[:57] + "..."
        super().__init__(f"pyproxy admin console: unknown command {shown!r}; the commands are: "
                         + ", ".join(name for name, _ in COMMANDS))


@attrs.frozen
class Command:
    """One parsed statement: ``name`` says what to do, ``args`` with what.

    Names: the lower-case words of pyproxy's commands (``show pools``,
    ``pause``, ``kill client`` with the id, ``shutdown`` with graceful,
    ``set debug_statements_for`` with the seconds), and for clients'
    connection chatter ``select`` (args: (expression, column name) pairs),
    ``show variables`` (a LIKE pattern or None), ``show warnings``,
    ``set autocommit`` (True or False) and ``ok`` (accepted, nothing to do).
    """

    name: str
    args: tuple[object, ...] = ()


_SPACE = re.compile(r"\s+")
_SIMPLE = {f"show {word}": f"show {word}" for word in
           ("pools", "clients", "servers", "targets", "stats", "config", "version", "help")}
_SIMPLE.update({"pause": "pause", "resume": "resume", "reload": "reload", "help": "show help",
                "shutdown": "shutdown", "show warnings": "show warnings", "show errors": "show warnings"})
_KILL = re.compile(r"kill\s+client\s+(\d+)")
_SHUTDOWN = re.compile(r"shutdown\s+graceful")
_SET_DEBUG = re.compile(r"set\s+(?:(?:session|global)\s+|@@(?:session\.|global\.)?)?debug_statements_for"
                        r"\s*(?:=|:=|\s)\s*(\d+(?:\.\d*)?|\.\d+)")
_SET_AUTOCOMMIT = re.compile(r"set\s+(?:(?:session|local)\s+|@@(?:session\.|local\.)?)?autocommit"
                             r"\s*(?:=|:=)\s*(1|0|on|off|true|false|'on'|'off')")
_SHOW_VARIABLES = re.compile(r"show\s+(?:(?:session|global|local)\s+)?variables"
                             r"(?:\s+like\s+(?:'((?:[^'\\]|\\.|'')*)'|\"((?:[^\"\\]|\\.|\"\")*)\"))?")
# Harmless to a console with no data: accepted with an OK.
_ACCEPTED = re.compile(r"(?:set\s.*|use\s+\S+|begin(?:\s+work)?|start\s+transaction.*|commit(?:\s+work)?"
                       r"|rollback(?:\s+work)?)", re.DOTALL)
_SELECT = re.compile(r"select\s+(.+?)(?:\s+limit\s+\d+)?", re.DOTALL | re.IGNORECASE)
# One selected item: @@[scope.]name, a few functions, or a number, with an optional alias.
_ITEM = re.compile(
    r"(@@(?:session\.|global\.|local\.)?[a-z_][a-z0-9_]*|(?:database|schema|user|current_user|session_user"
    r"|system_user|version|connection_id)\s*\(\s*\)|-?\d+)"
    r"(?:\s+(?:as\s+)?(`[^`]+`|'[^']*'|\"[^\"]*\"|(?!(?:limit|from|where)\b)[a-z_]\w*))?",
    re.IGNORECASE)


def normalize(statement: str) -> str:
    """Whitespace folded, one trailing semicolon and surrounding space dropped."""
    text = _SPACE.sub(" ", statement).strip()
    if text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def parse(statement: str) -> Command:
    """The command a statement is.

    Raises:
        AdminSyntaxError: it is none the console knows.
    """
    text = normalize(statement)
    lower = text.lower()
    simple = _SIMPLE.get(lower)
    if simple is not None:
        return Command(simple)
    match = _KILL.fullmatch(lower)
    if match:
        return Command("kill client", (int(match.group(1)),))
    if _SHUTDOWN.fullmatch(lower):
        return Command("shutdown", (True,))
    match = _SET_DEBUG.fullmatch(lower)
    if match:
        return Command("set debug_statements_for", (float(match.group(1)),))
    if "debug_statements_for" in lower:
        raise AdminSyntaxError(text)  # a SET of it that is not a number must not pass as accepted
    match = _SET_AUTOCOMMIT.fullmatch(lower)
    if match:
        return Command("set autocommit", (match.group(1).strip("'") in ("1", "on", "true"),))
    match = _SHOW_VARIABLES.fullmatch(lower)
    if match:
        # The pattern as written (case kept: LIKE is matched case-insensitively anyway).
        pattern = match.group(1) if match.group(1) is not None else match.group(2)
        return Command("show variables", (None if pattern is None else unquote(pattern),))
    if _ACCEPTED.fullmatch(lower):
        return Command("ok")
    match = _SELECT.fullmatch(text) if lower.startswith("select ") else None
    if match:
        items = select_items(match.group(1))
        if items is not None:
            return Command("select", tuple(items))
    raise AdminSyntaxError(text)


def unquote(text: str) -> str:
    """A quoted string's content: backslash escapes and doubled quotes undone,
    except ``\\%`` and ``\\_``, which stay for LIKE (as the server keeps them)."""
    def one(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped is None:
            return match.group(0)[0]
        return match.group(0) if escaped in "%_" else escaped

    return re.sub(r"\\(.)|''|\"\"", one, text)


def select_items(text: str) -> list[tuple[str, str]] | None:
    """``@@version_comment, DATABASE() AS db, 1`` as (expression, column name)
    pairs, the expression lower-cased without its scope; None when anything
    else is selected (a table, an operator...)."""
    items: list[tuple[str, str]] = []
    pos = 0
    while True:
        match = _ITEM.match(text, pos)
        if match is None:
            return None
        expression, alias = match.group(1), match.group(2)
        name = alias.strip("`'\"") if alias else expression
        key = _SPACE.sub("", expression.lower())
        key = re.sub(r"^@@(?:session|global|local)\.", "@@", key)
        items.append((key, name))
        pos = match.end()
        rest = text[pos:].lstrip()
        if not rest:
            return items
        if not rest.startswith(","):
            return None
        pos = len(text) - len(rest) + 1
        while pos < len(text) and text[pos].isspace():
            pos += 1


def like(pattern: str) -> re.Pattern[str]:
    """A SQL LIKE pattern (% and _, backslash escapes) as a case-insensitive regex."""
    out = []
    escaped = False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)
