"""The stored code a statement can run without its text showing it, as one account sees it.

A CALL, a stored function in an expression, a trigger behind an INSERT or a
view over such a function run SQL that the client's statement does not
contain.  Most of what that code changes the server reports as usual; what it
does not (a named lock, HANDLER, dynamic SQL, SET @@name) would stay on the
backend connection for its next borrower.  So pyproxy reads the bodies of the
routines, triggers and views once, over a connection of its own, and keeps
for each a verdict: *clean* (everything it can leave behind is reported, so a
CALL of it need not pin) or a reason it is not, and whether it reads or sets
LAST_INSERT_ID().  A body the account may not read, and a routine it calls
that is not in the catalog, count as not clean.

The catalog is read again after pyproxy passes a statement that creates,
alters or drops such code, and every ``[session] routine_refresh`` seconds
for changes made elsewhere.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from pyproxy import sqltext

# The server's own schemas are left out: their routines and views (sys.*)
# are for administrators, and a CALL of one counts as of unknown code.
_OWN_SCHEMAS = "('mysql', 'sys', 'information_schema', 'performance_schema')"
QUERIES = (
    "SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_DEFINITION FROM information_schema.ROUTINES"
    f" WHERE ROUTINE_SCHEMA NOT IN {_OWN_SCHEMAS}",
    "SELECT TRIGGER_SCHEMA, EVENT_OBJECT_TABLE, 'TRIGGER', ACTION_STATEMENT FROM information_schema.TRIGGERS"
    f" WHERE TRIGGER_SCHEMA NOT IN {_OWN_SCHEMAS}",
    "SELECT TABLE_SCHEMA, TABLE_NAME, 'VIEW', VIEW_DEFINITION FROM information_schema.VIEWS"
    f" WHERE TABLE_SCHEMA NOT IN {_OWN_SCHEMAS}",
)

# What makes a body leave something behind that the server does not report,
# read in a lower-case copy without comments: (needle, pattern, what).
_UNREPORTED = (
    (b"get_lock", re.compile(rb"\bget_lock\s*\("), "GET_LOCK"),
    (b"lock", re.compile(rb"\block\s+tables?\b"), "LOCK TABLES"),
    (b"flush", re.compile(rb"\bflush\b"), "FLUSH"),
    (b"handler", re.compile(rb"\bhandler\s+[\w`.]+\s+(?:open|read|close)\b"), "HANDLER"),
    (b"xa", re.compile(rb"\bxa\b"), "XA"),
    (b"e", re.compile(rb"\b(?:prepare|execute|deallocate)\b"), "dynamic SQL"),
    # Assigned, not read: SET @x = / SET a = 1, @x = / @x := / INTO @x, @y.
    (b"@", re.compile(rb"(?<![@\w])@(?!@)[\w$.`'\"]+\s*:=|\bset\s+@(?!@)|\bset\b[^;]*?,\s*@(?!@)|"
                      rb"\binto\s+@(?!@)|\binto\b[^;]*?,\s*@(?!@)"), "user variables set"),
    (b"temporary", re.compile(rb"\btemporary\b"), "temporary tables"),
    (b"@@", re.compile(rb"\bset\b[^;]*@@(?!(?:global|session|local)\.)"), "SET @@variable"),
    (b"session_track", re.compile(rb"session_track"), "session_track_* variables"),
)
_CALL = re.compile(rb"\bcall\s+((?:`(?:[^`]|``)+`|[\w$]++)(?:\s*\.\s*(?:`(?:[^`]|``)+`|[\w$]++))?)")
_FUNCTION_CALL = re.compile(rb"(?<![\w$])([\w$]++)`?\s*\(")


@attrs.frozen(slots=True)
class Verdict:
    """What running one routine (or firing a trigger, reading a view) can do."""

    # Why it may leave state the server does not report; None when clean.
    unclean: str | None = None
    # It reads or sets LAST_INSERT_ID().
    insert_id: bool = False


UNKNOWN = Verdict("not in the catalog, or its body cannot be read", True)
CLEAN = Verdict()


@attrs.define(eq=False)
class RoutineCatalog:
    """One account's view of the server's routines, triggers and views, with verdicts.

    ``stale``: nothing was read yet, or a statement changed such code; a
    client's next statement waits for a fresh read (see pyproxy.hygiene).
    """

    procedures: dict[tuple[str, str], Verdict] = attrs.field(factory=dict)
    # Names (lower case) of functions, trigger tables and views whose use needs
    # care: not clean, or touching LAST_INSERT_ID(); one pattern finds them all.
    watched: dict[str, Verdict] = attrs.field(factory=dict)
    watch: re.Pattern[bytes] | None = None
    stale: bool = True
    # The read failed: CALLs count as unknown, and watched names are unknown.
    failed: bool = False
    # A hash of the rows last read.
    signature: int | None = None
    # While a read is under way (pyproxy.proxy.Proxy.load_catalog): the
    # Deferreds of those waiting for it.
    loading: list[Any] | None = None

    def load(self, rows: Iterable[Sequence[str | None]]) -> None:
        """Replaces the catalog from (schema, name, type, body) rows; the
        verdicts are worked out again only when the rows changed."""
        rows = [tuple(row) for row in rows]
        signature = hash(tuple(rows))
        if signature == self.signature and not self.failed:
            self.stale = False
            return
        self.signature = signature
        bodies: dict[tuple[str, str, str], bytes | None] = {}
        for schema, name, kind, body in rows:
            if schema is None or name is None or kind is None:
                continue
            key = (kind.upper(), schema.lower(), name.lower())
            text = body.encode("utf-8", "replace") if body is not None else None
            if key in bodies:
                # Several triggers on one table: what fires is all of them.
                earlier = bodies[key]
                text = earlier + b";\n" + text if earlier is not None and text is not None else None
            bodies[key] = text
        verdicts = _verdicts(bodies)
        self.procedures = {(schema, name): verdict for (kind, schema, name), verdict in verdicts.items()
                           if kind not in ("FUNCTION", "TRIGGER", "VIEW")}
        functions: dict[str, Verdict] = {}
        tables: dict[str, Verdict] = {}
        for (kind, _, name), verdict in verdicts.items():
            if verdict == CLEAN:
                continue
            if kind == "FUNCTION":
                functions[name] = combine(functions.get(name), verdict)
            elif kind in ("TRIGGER", "VIEW"):
                tables[name] = combine(tables.get(name), verdict)
        self.watched = {**tables, **functions}
        for name, verdict in tables.items():
            if name in functions:
                self.watched[name] = combine(functions[name], verdict)
        # A function by its call, a table or view by its name anywhere.
        alternatives = []
        if functions:
            alternatives.append(rb"(" + _alternation(functions) + rb")`?" + sqltext.SEP + rb"\(")
        if tables:
            alternatives.append(rb"(" + _alternation(tables) + rb")\b")
        self.watch = (re.compile(rb"\b(?:" + b"|".join(alternatives) + rb")", re.I | re.S)
                      if alternatives else None)
        self.stale = False
        self.failed = False

    def procedure(self, written: str, default_schema: str | None) -> Verdict:
        """The verdict for ``CALL <written>``."""
        if self.failed:
            return UNKNOWN
        schema, name = sqltext.qualified_name(written, default_schema)
        if schema is None:
            return UNKNOWN
        return self.procedures.get((schema, name), UNKNOWN)

    def check(self, sql: bytes) -> Verdict | None:
        """The combined verdict for the watched functions, trigger tables and
        views ``sql`` names (by word, so a mention is enough), or None."""
        watch = self.watch
        if watch is None:
            return None
        verdict = None
        for match in watch.finditer(sql, 0, sqltext.SCAN_LIMIT):
            name = match.group(match.lastindex or 1)
            found = self.watched.get(name.decode("utf-8", "replace").lower())
            verdict = combine(verdict, found)
        return verdict


def _alternation(names: Iterable[str]) -> bytes:
    return b"|".join(re.escape(name.encode()) for name in sorted(names, key=len, reverse=True))


def combine(a: Verdict | None, b: Verdict | None) -> Verdict:
    """What running both ``a`` and ``b`` can do."""
    if a is None:
        return b or CLEAN
    if b is None:
        return a
    return Verdict(a.unclean or b.unclean, a.insert_id or b.insert_id)


def _verdicts(bodies: dict[tuple[str, str, str], bytes | None]) -> dict[tuple[str, str, str], Verdict]:
    """Each body's own verdict, then what it calls: a routine is no cleaner than
    the routines it calls, to a fixed point (calls may nest or recurse)."""
    own: dict[tuple[str, str, str], Verdict] = {}
    callees: dict[tuple[str, str, str], set[tuple[str, str, str] | None]] = {}
    functions: dict[str, list[tuple[str, str, str]]] = {}
    for key in bodies:
        if key[0] == "FUNCTION":
            functions.setdefault(key[2], []).append(key)
    for key, body in bodies.items():
        if body is None:
            own[key] = UNKNOWN
            callees[key] = set()
            continue
        code = sqltext.strip_comments(body).lower()
        reason = next((what for needle, pattern, what in _UNREPORTED
                       if needle in code and pattern.search(code)), None)
        own[key] = Verdict(f"{reason} in {key[1]}.{key[2]}" if reason else None,
                           b"last_insert_id" in code or b"identity" in code)
        called: set[tuple[str, str, str] | None] = set()
        if b"call" in code:
            for match in _CALL.finditer(code):
                schema, name = sqltext.qualified_name(match.group(1).decode("utf-8", "replace"), key[1])
                target = ("PROCEDURE", schema or key[1], name)
                called.add(target if target in bodies else None)
        if functions:
            for match in _FUNCTION_CALL.finditer(code):
                called.update(functions.get(match.group(1).decode("utf-8", "replace"), ()))
        callees[key] = called
    # What a routine calls spreads to its callers, from each change (a verdict
    # only ever gets worse, at most twice), so the work is one pass over the calls.
    callers: dict[tuple[str, str, str] | None, set[tuple[str, str, str]]] = {}
    for key, called in callees.items():
        for callee in called:
            callers.setdefault(callee, set()).add(key)
    verdicts: dict[tuple[str, str, str] | None, Verdict] = {**own, None: UNKNOWN}
    queue = deque(key for key, verdict in verdicts.items() if verdict != CLEAN)
    while queue:
        callee = queue.popleft()
        verdict = verdicts[callee]
        for caller in callers.get(callee, ()):
            merged = combine(verdicts[caller], verdict)
            if merged != verdicts[caller]:
                verdicts[caller] = merged
                queue.append(caller)
    del verdicts[None]
    return verdicts  # type: ignore[return-value]
