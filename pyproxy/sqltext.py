"""What pyproxy reads from SQL text: only what the server's own reports leave out.

Whatever a statement changes that the server reports is learned from its OK
packets (pyproxy.session): session variables, the schema, user variables,
temporary tables and SQL prepared statements ("state changed"), the
transaction state, LOCK TABLES and the next transaction's characteristics.
Text is read for the rest: named locks, HANDLER, XA, FLUSH ... WITH READ
LOCK, reads of the previous statement's results, the statements pyproxy must
prepare for (SET GLOBAL, session_track_*), SET forms MariaDB does not report,
and statements that run code the text does not show (CALL, EXECUTE
IMMEDIATE), which pyproxy checks against the routines' bodies
(pyproxy.routines) or treats as unprovable.

The scan is meant to be hard to hide from.  Comments between words, line
comments and executable comments (``/*! ... */``, ``/*M! ... */``, whose
content the server runs) all count as spaces; a keyword inside a string only
makes pyproxy more careful, never less.  Ordinary statements cost one check
for needles that every flagged construct contains, on a lower-case copy.
"""

from __future__ import annotations

import re

import attrs

# The head of a statement that is read with the full patterns; beyond it, a
# long statement (bulk INSERTs run to megabytes) is only searched for the
# needles, and one that has any is treated as unprovable.
SCAN_LIMIT = 65536

# What a scan found (Found.flags).
READ_GLOBALS = 1        # a SET GLOBAL: the defaults of new server sessions change
OWN_TRACKING = 2        # reads or sets session_track_*: it must see the client's own
HOLD_NEXT = 4           # SQL_CALC_FOUND_ROWS: FOUND_ROWS() follows on the same connection
CALLS = 8               # CALL: the routines' bodies say whether anything is left behind
INSERT_ID = 16          # names LAST_INSERT_ID()/@@identity: may read or set it
ROUTINES_CHANGED = 32   # creates, alters or drops routines, triggers, views or schemas
USER_VARIABLE = 64      # names a user variable (@name)
TEMPORARY = 128         # names TEMPORARY (a temporary table)
SQL_PREPARE = 256       # PREPARE / EXECUTE / DEALLOCATE of SQL prepared statements
DYNAMIC = 512           # runs SQL text pyproxy cannot read (EXECUTE IMMEDIATE)
MULTI = 1024            # more than one statement (a failure may follow others that ran)
SAVEPOINT = 2048        # SAVEPOINT: held by the session even where no transaction is reported
THREAD_IDS = 4096       # names CONNECTION_ID(), IS_USED_LOCK() or PROCESSLIST (pyproxy.thread_ids)
NO_RESET = 8192         # BINLOG: leaves replication state that no reset of the connection clears
READS_PREVIOUS = 16384  # ROW_COUNT() / FOUND_ROWS(): reads what the statement before left

# Between words: white space, comments, and the delimiters of executable
# comments, whose content is code.  Possessive, one character or comment a
# step: a pattern that fails after it must not try every way of splitting a
# long run of spaces (that backtracking is exponential).
SEP = rb"(?:\s|/\*(?!M?!).*?\*/|/\*M?!\d*|\*/|--(?=\s|$)[^\n]*+|#[^\n]*+)*+"
_START = rb"(?:^|;)" + SEP
_NAME = rb"(?:`(?:[^`]|``)+`|[\w$]+)"
_QUALIFIED = _NAME + rb"(?:" + SEP + rb"\." + SEP + _NAME + rb")?"

# Every statement a full scan would flag passes one of these two checks, on a
# lower-case copy: statements are recognised at the start (after white space or
# a comment) or after a ';', function calls and variables anywhere.  Both are
# small, so an ordinary statement costs two quick regular-expression calls.
_MAYBE_START = re.compile(rb"\s*(?:/\*|--|#|set\b|lock|handler|xa\b|flush|call|execute|prepare|deallocate|"
                          rb"create|alter|drop|savepoint|backup|binlog)")
_MAYBE_ANYWHERE = re.compile(rb";|get_lock|found_rows|row_count|session_track|last_insert_id|identity|@|"
                             rb"connection_id|processlist|is_used_lock")
# Beyond SCAN_LIMIT: what can follow the head of a statement (a second statement
# after ';', a function call, a user variable, a comment).
_TAIL_NEEDLES = (b";", b"get_lock", b"found_rows", b"row_count", b"last_insert_id", b"identity",
                 b"session_track", b"/*", b"@")

# Statement heads.
_TABLE_LOCK = re.compile(_START + rb"lock" + SEP + rb"tables?\b", re.I | re.S)
_HANDLER = re.compile(_START + rb"handler\b", re.I | re.S)
_XA = re.compile(_START + rb"xa" + SEP + rb"(?:start|begin)\b", re.I | re.S)
# BINLOG 'base64 events': the server session gets a replication context of its
# own (MariaDB's rli_fake), which COM_RESET_CONNECTION keeps (MDEV-32844).
_BINLOG = re.compile(_START + rb"binlog" + SEP + rb"'", re.I | re.S)
_FLUSH_LOCK = re.compile(_START + rb"flush\b[^;]*?(?:\bread" + SEP + rb"lock\b|\bfor" + SEP + rb"export\b)",
                         re.I | re.S)
# BACKUP STAGE / BACKUP LOCK: the backup lock stays with the server session.
_BACKUP = re.compile(_START + rb"backup" + SEP + rb"(?:stage|lock)\b", re.I | re.S)
_SET = re.compile(_START + rb"set\b", re.I | re.S)
_SAVEPOINT = re.compile(_START + rb"savepoint\b", re.I | re.S)
_SET_STATEMENT = re.compile(SEP + rb"statement\b", re.I | re.S)
_CALL = re.compile(_START + rb"call" + SEP + rb"(" + _QUALIFIED + rb")", re.I | re.S)
_EXECUTE_IMMEDIATE = re.compile(_START + rb"execute" + SEP + rb"immediate\b", re.I | re.S)
_SQL_PREPARE = re.compile(_START + rb"(?:prepare|execute|deallocate|drop" + SEP + rb"prepare)\b",
                          re.I | re.S)
_DDL = re.compile(_START + rb"(?:create|alter|drop)\b[^;]*?\b(?:procedure|function|trigger|view|package|"
                  rb"database|schema)\b", re.I | re.S)
# Anywhere.
_GET_LOCK = re.compile(rb"\bget_lock" + SEP + rb"\(", re.I | re.S)
_READS_PREVIOUS = re.compile(rb"\b(found_rows|row_count)" + SEP + rb"\(", re.I | re.S)
_CALC_FOUND_ROWS = re.compile(rb"\bsql_calc_found_rows\b", re.I)
_SESSION_TRACK = re.compile(rb"session_track", re.I)
_INSERT_ID = re.compile(rb"last_insert_id|identity", re.I)
_USER_VARIABLE = re.compile(rb"(?<![@\w])@(?!@)")
_TEMPORARY = re.compile(rb"\btemporary\b", re.I)
_THREAD_IDS = re.compile(rb"connection_id|processlist|is_used_lock", re.I)
# Within one SET statement.
_BARE_ASSIGNMENT = re.compile(rb"@@(?!(?:global|session|local)\.)([a-z_][a-z0-9_]*)\s*:?=", re.I)
_GLOBAL_ASSIGNMENT = re.compile(rb"@@global\.|\bglobal\s+\w", re.I)
_ASSIGNED_NAME = re.compile(rb"(?:^|,)\s*(?:@@(?:session\.|local\.)?)?([a-z_][a-z0-9_]*)\s*=", re.I)
_FOR = re.compile(rb"\bfor\b", re.I)
_MULTI = re.compile(rb";\s*\S")
_STRING = re.compile(rb"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"", re.S)
_COMMENT = re.compile(rb"/\*(?!M?!).*?\*/|/\*M?!\d*|\*/|--(?=\s|$)[^\n]*|#[^\n]*", re.S)


@attrs.frozen(slots=True)
class Found:
    """What the scan of one statement's text found.

    ``pin``: a reason the session must keep its connection whatever the
    server reports (a named lock, HANDLER, an unprovable statement...).
    ``reread``: session variables the statement assigns in a form MariaDB does
    not report (``SET @@name``), to be read back from the server after it.
    ``scoped``: those ``SET STATEMENT ... FOR`` assigns for the duration of its
    statement only, whose reported values are not the session's.  ``calls``:
    the routines a CALL names, as written (``db.proc`` or ``proc``).
    """

    flags: int = 0
    pin: str | None = None
    reread: tuple[str, ...] = ()
    scoped: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()


def scan(sql: bytes) -> Found | None:
    """What ``sql`` needs that the server's reports do not give, or None for an
    ordinary statement (the common case, decided by the needle check alone)."""
    head = sql[:SCAN_LIMIT].lower()
    if _MAYBE_START.match(head) is None and _MAYBE_ANYWHERE.search(head) is None:
        tail_flagged = len(sql) > SCAN_LIMIT and _tail_flagged(sql)
        return Found(pin=_TOO_LONG) if tail_flagged else None
    text = sql[:SCAN_LIMIT]
    flags = 0
    pin = None
    reread: list[str] = []
    scoped: list[str] = []
    calls: list[str] = []
    for match in _SET.finditer(text):
        end = _statement_end(text, match.end())
        statement = _SET_STATEMENT.match(text, match.end(), end)
        if statement is not None:
            scoped.extend(_set_statement_names(text[statement.end():end]))
            continue
        reread.extend(name.decode("ascii").lower()
                      for name in _BARE_ASSIGNMENT.findall(text, match.end(), end))
        if _GLOBAL_ASSIGNMENT.search(text, match.end(), end):
            flags |= READ_GLOBALS
    if _SESSION_TRACK.search(text):
        flags |= OWN_TRACKING
    if _CALC_FOUND_ROWS.search(text):
        flags |= HOLD_NEXT
    if _INSERT_ID.search(text):
        flags |= INSERT_ID
    if _USER_VARIABLE.search(text):
        flags |= USER_VARIABLE
    if _TEMPORARY.search(text):
        flags |= TEMPORARY
    if _SQL_PREPARE.search(text):
        flags |= SQL_PREPARE
    if _DDL.search(text):
        flags |= ROUTINES_CHANGED
    if _MULTI.search(text):
        flags |= MULTI
    if _SAVEPOINT.search(text):
        flags |= SAVEPOINT
    if _THREAD_IDS.search(text):
        flags |= THREAD_IDS
    for match in _CALL.finditer(text):
        flags |= CALLS
        calls.append(match.group(1).decode("utf-8", "replace"))
    if _EXECUTE_IMMEDIATE.search(text):
        flags |= DYNAMIC
        pin = "EXECUTE IMMEDIATE used (runs SQL pyproxy cannot check)"
    elif _GET_LOCK.search(text):
        pin = "GET_LOCK used"
    elif _TABLE_LOCK.search(text):
        pin = "LOCK TABLES used"
    elif _FLUSH_LOCK.search(text):
        pin = "FLUSH TABLES WITH READ LOCK used"
    elif _BACKUP.search(text):
        pin = "BACKUP STAGE or BACKUP LOCK used"
    elif _HANDLER.search(text):
        pin = "HANDLER used"
    elif _XA.search(text):
        pin = "XA transaction used"
    elif _BINLOG.search(text):
        flags |= NO_RESET
        pin = "BINLOG statement used"
    previous = _READS_PREVIOUS.search(text)
    if previous is not None:
        flags |= READS_PREVIOUS
        if pin is None:
            pin = f"{previous.group(1).decode('ascii').upper()}() (reads the previous statement) used"
    if pin is None and len(sql) > SCAN_LIMIT and _tail_flagged(sql):
        pin = _TOO_LONG
    names = tuple(dict.fromkeys(name for name in reread if name != "autocommit"))
    if not flags and pin is None and not names and not scoped:
        return None
    return Found(flags, pin, names, tuple(dict.fromkeys(scoped)), tuple(calls))


_TOO_LONG = f"statement longer than {SCAN_LIMIT // 1024} KiB that pyproxy cannot fully check"


def _tail_flagged(sql: bytes) -> bool:
    tail = sql[SCAN_LIMIT:].lower()
    return any(needle in tail for needle in _TAIL_NEEDLES)


def _statement_end(sql: bytes, start: int) -> int:
    end = sql.find(b";", start)
    return end if end >= 0 else len(sql)


def _set_statement_names(rest: bytes) -> list[str]:
    """The variables ``SET STATEMENT a = 1, b = 2 FOR ...`` assigns for the
    duration of its statement (``rest`` follows the word STATEMENT)."""
    code = _COMMENT.sub(b" ", _STRING.sub(b"''", rest))
    end = _FOR.search(code)
    assignments = code[:end.start()] if end is not None else code
    return [name.decode("ascii").lower() for name in _ASSIGNED_NAME.findall(assignments)]


def strip_comments(sql: bytes) -> bytes:
    """``sql`` with its comments turned into spaces; the content of executable
    comments stays, as the server runs it."""
    return _COMMENT.sub(b" ", sql)


def qualified_name(written: str, default_schema: str | None) -> tuple[str | None, str]:
    """(schema, name) of a routine as a CALL names it, quotes removed, in lower
    case (routine names are not case-sensitive)."""
    parts = [part.strip() for part in _split_dotted(written)]
    parts = [part[1:-1].replace("``", "`") if part.startswith("`") else part for part in parts]
    if len(parts) == 2:
        return parts[0].lower(), parts[1].lower()
    return (default_schema.lower() if default_schema else None), parts[0].lower()


def _split_dotted(written: str) -> list[str]:
    parts: list[str] = []
    current = ""
    quoted = False
    for char in written:
        if char == "`":
            quoted = not quoted
        if char == "." and not quoted:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [_COMMENT.sub(b" ", part.encode()).decode().strip() for part in parts]
