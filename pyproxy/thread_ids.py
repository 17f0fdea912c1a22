"""One thread id per client: CONNECTION_ID() and PROCESSLIST agree with the greeting.

A client's id is the one in pyproxy's greeting (its drivers' thread_id(),
what KILL takes, pyproxy.kill).  Its statements run on backend connections
whose server thread ids are others, and change from one transaction to the
next.  So, before a statement is sent:

- ``CONNECTION_ID()`` in its text becomes the client's id, as a number.
  The scan knows strings, quoted names and comments (an executable comment's
  content is code); a qualified ``db.connection_id()`` is a stored function
  and stays.  A select item whose text is rewritten gets the original text
  as its alias (unless it has one), so the result column keeps the name the
  server would give it.  CREATE and ALTER statements are left alone: a view,
  routine, trigger, event or column default must not keep one client's id.
- ``IS_USED_LOCK(name)`` answers the holder's client id where the holder is
  a client's connection.
- ``SHOW [FULL] PROCESSLIST`` becomes the same rows read from
  ``information_schema.PROCESSLIST``, and that table, where a statement
  names it, a derived table of the same columns, where a server thread held
  by one of pyproxy's clients shows that client's id (and its address as
  Host), pyproxy's own idle pooled connections, which no client would see
  on a server, are left out, and the user's clients that hold no connection
  are added as sleeping.  The statement's own connection is always its
  client's (``CONNECTION_ID()`` of the connection it runs on, so it holds
  whichever connection serves it).  The other clients' connections are a
  snapshot taken when the statement starts; a prepared statement maps its
  own connection only, as the others change between executions.

What cannot agree is listed in README.rst ("Thread ids").  Statements over
64 KiB are never rewritten.  An ordinary COM_QUERY pays only one more
alternative in the scan's needle check (pyproxy.sqltext.THREAD_IDS).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs

from pyproxy import sqltext
from pyproxy.phases import COMMANDS
from pyproxy.wire.constants import MAX_PAYLOAD, SERVER_STATUS_NO_BACKSLASH_ESCAPES
from pyproxy.wire.framing import Packet, frame

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase

# Every statement that may need a rewrite contains one of these (a COM_QUERY's
# scan looks for them too: pyproxy.sqltext.THREAD_IDS).
NEEDLES = re.compile(rb"(?i)connection_id|processlist|is_used_lock")


def _token_pattern(backslash_escapes: bool) -> re.Pattern[bytes]:
    escape = rb"|\\." if backslash_escapes else b""
    plain = rb"\\" if backslash_escapes else b""
    string = rb"'(?:[^'" + plain + rb"]" + escape + rb"|'')*(?:'|\Z)"
    dquoted = rb'"(?:[^"' + plain + rb"]" + escape + rb'|"")*(?:"|\Z)'
    return re.compile(
        rb"(?P<skip>" + string + rb"|" + dquoted + rb"|`(?:[^`]|``)*(?:`|\Z)"
        rb"|/\*(?!M?!)(?:.*?\*/|.*\Z)|--(?=\s|\Z)[^\n]*|\#[^\n]*)"
        rb"|(?P<exec>/\*M?!\d*|\*/)"
        rb"|(?P<word>[A-Za-z0-9_$\x80-\xff]+)"
        rb"|(?P<space>\s+)"
        rb"|(?P<other>.)", re.S)


# Tokens: what is skipped (strings, quoted names, comments), the delimiters of
# executable comments (whose content is code), words, white space, the rest.
# Under NO_BACKSLASH_ESCAPES a backslash in a string is a character.
_TOKEN = _token_pattern(True)
_TOKEN_NO_BACKSLASH = _token_pattern(False)

# Words that end a select list (or a table reference's alias-less end).
_CLAUSES = frozenset((b"from", b"into", b"where", b"group", b"having", b"order", b"limit", b"union",
                      b"except", b"intersect", b"window", b"for", b"lock", b"procedure", b"returning",
                      b"offset", b"fetch"))
# Words that may follow a table reference and are not its alias.
_AFTER_TABLE = _CLAUSES | frozenset((b"join", b"inner", b"left", b"right", b"cross", b"natural",
                                     b"straight_join", b"on", b"using", b"use", b"ignore", b"force",
                                     b"partition", b"full", b"outer"))
_SHOW_PROCESSLIST = re.compile(rb"(?is)\s*show\s+(full\s+)?processlist\s*;?\s*\Z")
# What may follow SELECT before its first item.
_MODIFIERS = frozenset((b"distinct", b"all", b"distinctrow", b"high_priority", b"straight_join",
                        b"sql_cache", b"sql_no_cache", b"sql_calc_found_rows", b"sql_small_result",
                        b"sql_big_result", b"sql_buffer_result"))
_PROCESSLIST = re.compile(rb"(?i)processlist")
_IS_USED_LOCK = re.compile(rb"(?i)is_used_lock")
# PROCESSLIST's counters, 0 in a sleeping client's row.
_ZERO = {name: "0" for name in ("STAGE", "MAX_STAGE", "PROGRESS", "MEMORY_USED", "MAX_MEMORY_USED",
                                 "EXAMINED_ROWS", "SENT_ROWS", "QUERY_ID", "TID")}
# At most this many sleeping clients are listed.
MAX_SLEEPING_ROWS = 1000
# Longest alias MariaDB takes for a column.
_MAX_ALIAS = 250


class _Tok:
    __slots__ = ("kind", "lower", "start", "end", "depth")

    def __init__(self, kind: str, lower: bytes, start: int, end: int, depth: int) -> None:
        self.kind, self.lower, self.start, self.end, self.depth = kind, lower, start, end, depth


def _tokens(sql: bytes, backslash_escapes: bool) -> list[_Tok]:
    """The significant tokens (words and punctuation), each with its paren depth."""
    pattern = _TOKEN if backslash_escapes else _TOKEN_NO_BACKSLASH
    out: list[_Tok] = []
    depth = 0
    for match in pattern.finditer(sql):
        kind = match.lastgroup
        if kind == "word":
            out.append(_Tok("word", match.group().lower(), match.start(), match.end(), depth))
        elif kind == "other":
            char = match.group()
            if char == b")":
                depth = max(0, depth - 1)
            out.append(_Tok("other", char, match.start(), match.end(), depth))
            if char == b"(":
                depth += 1
        elif kind == "skip" and match.group()[:1] in (b"`", b"'", b'"'):
            # A quoted name or string: a value, as far as item boundaries go.
            out.append(_Tok("quoted", b"", match.start(), match.end(), depth))
    return out


def _statement_heads(tokens: list[_Tok]) -> set[int]:
    """Indexes of tokens inside CREATE / ALTER statements (left alone)."""
    inside: set[int] = set()
    start = True
    skipping = False
    for index, tok in enumerate(tokens):
        if start:
            skipping = tok.lower in (b"create", b"alter")
            start = False
        if tok.lower == b";" and tok.depth == 0:
            start = True
            continue
        if skipping:
            inside.add(index)
    return inside


def rewrite_connection_id(sql: bytes, client_id: int, backslash_escapes: bool = True,
                          lock_owner: bytes | None = None) -> bytes | None:
    """``sql`` with each CONNECTION_ID() call replaced by ``client_id``, and, given
    ``lock_owner`` (a CASE mapping thread ids, Mapping.lock_owner), each
    IS_USED_LOCK(name) mapped through it; None if there is nothing to replace."""
    tokens = _tokens(sql, backslash_escapes)
    skipped = _statement_heads(tokens)
    calls: list[tuple[int, int]] = []  # (first, last) token index of each call
    edits: list[tuple[int, int, bytes]] = []
    number = str(client_id).encode()
    count = len(tokens)
    index = 0
    while index < count:
        tok = tokens[index]
        if (tok.lower in (b"connection_id", b"is_used_lock") and index + 2 < count
                and tokens[index + 1].lower == b"(" and index not in skipped
                and not (index and tokens[index - 1].lower in (b".", b"@"))):
            if tok.lower == b"connection_id" and tokens[index + 2].lower == b")":
                calls.append((index, index + 2))
                edits.append((tok.start, tokens[index + 2].end, number))
                index += 3
                continue
            if tok.lower == b"is_used_lock" and lock_owner is not None:
                close = _closing(tokens, index + 1)
                if close is not None:
                    call = sql[tok.start:tokens[close].end]
                    calls.append((index, close))
                    edits.append((tok.start, tokens[close].end,
                                  b"(" + lock_owner.replace(b"{call}", call) + b")"))
                    index = close + 1
                    continue
        index += 1
    if not calls:
        return None
    edits.extend(_aliases(sql, tokens, calls))
    return _apply(sql, edits)


def _closing(tokens: list[_Tok], open_index: int) -> int | None:
    """The index of the paren that closes the one at ``open_index``."""
    depth = tokens[open_index].depth
    for index in range(open_index + 1, len(tokens)):
        tok = tokens[index]
        if tok.lower == b")" and tok.depth == depth:
            return index
    return None


def _aliases(sql: bytes, tokens: list[_Tok], calls: list[tuple[int, int]]) -> list[tuple[int, int, bytes]]:
    """Aliases for the select items whose text a rewrite changes: the server names
    a column after its item's text, which the client expects to see."""
    # The select items, as (first, last) token indexes, at every depth that
    # has a select list.
    items: list[tuple[int, int]] = []
    open_items: dict[int, int] = {}   # depth -> first token of the item being read
    in_list: dict[int, bool] = {}
    for index, tok in enumerate(tokens):
        depth = tok.depth
        lower = tok.lower
        if tok.kind == "other" and lower == b")":
            # Closes depth + 1: an item open there ends before this paren.
            inner = depth + 1
            first = open_items.pop(inner, None)
            if in_list.pop(inner, False) and first is not None:
                items.append((first, index - 1))
            if not in_list.get(depth):
                continue
        elif tok.kind == "word" and lower == b"select":
            in_list[depth] = True
            open_items.pop(depth, None)
            continue
        if not in_list.get(depth):
            continue
        if depth not in open_items and tok.kind == "word" and lower in _MODIFIERS:
            continue
        if lower == b"," or lower == b";" or (tok.kind == "word" and lower in _CLAUSES):
            first = open_items.pop(depth, None)
            if first is not None:
                items.append((first, index - 1))
            if lower != b",":
                in_list[depth] = False
            continue
        if depth not in open_items:
            open_items[depth] = index
    for depth, first in open_items.items():
        if in_list.get(depth):
            items.append((first, len(tokens) - 1))
    edits = []
    for first, last in items:
        if first > last or not any(first <= call <= last for call, _ in calls):
            continue
        if _has_alias(tokens, first, last):
            continue
        text = sql[tokens[first].start:tokens[last].end]
        if len(text) > _MAX_ALIAS or b"\n" in text or b"\r" in text:
            continue
        edits.append((tokens[last].end, tokens[last].end, b" AS `" + text.replace(b"`", b"``") + b"`"))
    return edits


def _has_alias(tokens: list[_Tok], first: int, last: int) -> bool:
    """Whether a select item ends in an alias (``AS name`` or ``expr name``)."""
    if last - first >= 1 and tokens[last - 1].lower == b"as":
        return True
    if last == first:
        return False
    end, before = tokens[last], tokens[last - 1]
    if end.kind not in ("word", "quoted") or end.lower == b"end":
        return False
    return before.lower == b")" or before.kind in ("word", "quoted") and before.lower not in (
        b"is", b"not", b"and", b"or", b"xor", b"like", b"in", b"between", b"else", b"then", b"when",
        b"case", b"div", b"mod", b"interval", b"binary", b"collate", b"escape", b"regexp", b"rlike")


def _apply(sql: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """``sql`` with each (start, end, text) edit made (edits do not overlap; an
    insertion where a replacement ends comes after it)."""
    out = []
    pos = 0
    for start, end, text in sorted(edits, key=lambda edit: edit[0]):
        out.append(sql[pos:start])
        out.append(text)
        pos = end
    out.append(sql[pos:])
    return b"".join(out)


# -- PROCESSLIST -----------------------------------------------------------------


def expand_processlist(sql: bytes, columns: tuple[str, ...], threads: Mapping,
                       backslash_escapes: bool = True, info_expr: bytes = b"INFO") -> bytes | None:
    """``sql`` reading PROCESSLIST through ``threads``: SHOW [FULL] PROCESSLIST as
    a SELECT, and each ``information_schema.PROCESSLIST`` a derived table of
    the same ``columns`` (the table's, in order) in which ID, HOST and INFO
    (``info_expr``) are mapped, pyproxy's idle connections left out and the
    rows of the user's clients that hold no connection added.  None if it
    reads neither."""
    if not columns or "ID" not in columns:
        return None
    show = _SHOW_PROCESSLIST.match(sql)
    if show is not None:
        info = info_expr if show.group(1) else b"LEFT(" + info_expr + b", 100)"
        names = [f"{threads.id_expr()} AS Id", "USER AS User", f"{threads.host_expr()} AS Host", "DB AS db",
                 "COMMAND AS Command", "TIME AS Time", "STATE AS State"]
        shown = ["ID", "USER", "HOST", "DB", "COMMAND", "TIME", "STATE", "INFO"]
        progress = ""
        if "PROGRESS" in columns:
            progress = ", PROGRESS AS Progress"
            shown.append("PROGRESS")
        return (f"SELECT {', '.join(names)}, ".encode() + info + f" AS Info{progress} "
                f"FROM information_schema.PROCESSLIST WHERE {threads.where()}".encode()
                + threads.sleeping_rows(tuple(shown)))
    tokens = _tokens(sql, backslash_escapes)
    skipped = _statement_heads(tokens)
    edits = []
    count = len(tokens)
    derived = _derived(columns, threads, info_expr)
    for index, tok in enumerate(tokens):
        if tok.lower != b"." or index == 0 or index + 1 >= count or index in skipped:
            continue
        schema, table = tokens[index - 1], tokens[index + 1]
        if _name(sql, schema) != b"information_schema" or _name(sql, table) != b"processlist":
            continue
        if index >= 2 and tokens[index - 2].lower in (b".", b"of"):
            continue  # a longer name, or TYPE OF / ROW TYPE OF in stored code: no table read
        after = tokens[index + 2] if index + 2 < count else None
        if after is not None and after.lower == b".":
            continue  # a column: information_schema.PROCESSLIST.INFO
        aliased = after is not None and (after.lower == b"as" or after.kind == "quoted" or
                                         after.kind == "word" and after.lower not in _AFTER_TABLE)
        text = derived if aliased else derived + b" AS PROCESSLIST"
        edits.append((schema.start, table.end, text))
    if not edits:
        return None
    return _apply(sql, edits)


def _name(sql: bytes, tok: _Tok) -> bytes:
    text = sql[tok.start:tok.end]
    if text[:1] == b"`":
        text = text[1:-1].replace(b"``", b"`")
    return text.lower()


def _derived(columns: tuple[str, ...], threads: Mapping, info_expr: bytes) -> bytes:
    parts = []
    for column in columns:
        if column == "ID":
            parts.append(f"{threads.id_expr()} AS ID".encode())
        elif column == "HOST":
            parts.append(f"{threads.host_expr()} AS HOST".encode())
        elif column == "INFO":
            parts.append(info_expr + b" AS INFO")
        else:
            parts.append(f"`{column}`".encode())
    return (b"(SELECT " + b", ".join(parts) + b" FROM information_schema.PROCESSLIST WHERE "
            + threads.where().encode() + threads.sleeping_rows(columns) + b")")


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _quote_bytes(text: bytes, backslash_escapes: bool) -> bytes:
    if backslash_escapes:
        text = text.replace(b"\\", b"\\\\")
    return b"'" + text.replace(b"'", b"''") + b"'"


@attrs.frozen(slots=True)
class Mapping:
    """Which server threads are which clients' for one statement: the statement's
    own connection (CONNECTION_ID() where it runs) is always its client's;
    ``others`` are (thread, client id, client address) of connections other
    clients hold, ``hidden`` pyproxy's idle pooled connections."""

    client_id: int
    host: str
    others: tuple[tuple[int, int, str], ...] = ()
    hidden: tuple[int, ...] = ()
    # The user's clients that hold no backend connection, which a server would
    # list as sleeping: (id, address, schema, seconds idle, waiting for a
    # connection), and the account their server threads show as USER.
    sleeping: tuple[tuple[int, str, str | None, int, bool], ...] = ()
    account: str = ""

    def id_expr(self, column: str = "ID") -> str:
        whens = " ".join(f"WHEN {column} = {thread} THEN {client}" for thread, client, _ in self.others)
        return f"CASE WHEN {column} = CONNECTION_ID() THEN {self.client_id} {whens} ELSE {column} END"

    def host_expr(self) -> str:
        whens = " ".join(f"WHEN ID = {thread} THEN {_quote(host)}" for thread, _, host in self.others)
        return f"CASE WHEN ID = CONNECTION_ID() THEN {_quote(self.host)} {whens} ELSE HOST END"

    def where(self) -> str:
        if not self.hidden:
            return "TRUE"
        return f"ID = CONNECTION_ID() OR ID NOT IN ({', '.join(map(str, self.hidden))})"

    def sleeping_rows(self, columns: tuple[str, ...]) -> bytes:
        """`` UNION ALL SELECT ...`` rows for the sleeping clients, in ``columns``."""
        rows = []
        for client_id, host, schema, seconds, waiting in self.sleeping:
            values = {"ID": str(client_id), "USER": _quote(self.account), "HOST": _quote(host),
                      "DB": _quote(schema) if schema is not None else "NULL",
                      "COMMAND": "'Query'" if waiting else "'Sleep'", "TIME": str(seconds),
                      "STATE": "'Waiting for a pooled connection'" if waiting else "''",
                      "TIME_MS": f"{seconds * 1000}.000"}
            rows.append("SELECT " + ", ".join(values.get(column, _ZERO.get(column, "NULL"))
                                              for column in columns))
        return "".join(" UNION ALL " + row for row in rows).encode()

    def lock_owner(self) -> bytes:
        """IS_USED_LOCK(name), written ``{call}``, as a client id where the holder is a client's."""
        whens = " ".join(f"WHEN {thread} THEN {client}" for thread, client, _ in self.others)
        return (f"CASE {{call}} WHEN CONNECTION_ID() THEN {self.client_id} {whens} ELSE {{call}} END"
                ).encode()


def mapping(client: CommandPhase, snapshot: bool) -> Mapping:
    """The Mapping for ``client``'s statement; with ``snapshot``, the other
    clients' connections as they are now (a prepared statement, run later
    and again, maps its own connection only)."""
    if not snapshot:
        return Mapping(client.connection.id, _peer(client))
    proxy = client.proxy
    others = []
    sleeping = []
    now = proxy.reactor.seconds()
    for other in proxy.clients.values():
        commands = other.commands
        conn = commands.backend
        if other is client.connection:
            continue
        if conn is not None and conn.handshake is not None:
            others.append((conn.handshake.connection_id, other.id, _peer(commands)))
        elif (other.phase == COMMANDS and commands.user == client.user and commands.session is not None
              and len(sleeping) < MAX_SLEEPING_ROWS):
            sleeping.append((other.id, _peer(commands), commands.session.state.schema,
                             max(0, int(now - commands.last_active)), commands.busy))
    hidden = [conn.handshake.connection_id for pool in proxy.pools.values() for conn in pool.idle
              if conn.handshake is not None]
    return Mapping(client.connection.id, _peer(client), tuple(others), tuple(hidden), tuple(sleeping),
                   _account(proxy, client.user))


def _account(proxy: Any, user: str) -> str:
    """The server account the user's backend connections log in as (PROCESSLIST's USER)."""
    try:
        return proxy.target(user).user
    except Exception:  # noqa: BLE001 - a user removed by a reload: its own name
        return user


def _peer(client: CommandPhase) -> str:
    """The client's address as a server shows it in PROCESSLIST (host:port)."""
    transport = client.transport
    try:
        peer = transport.getPeer()
    except Exception:  # noqa: BLE001 - no address to show
        return "localhost"
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if host is None:
        return "localhost"
    return f"{host}:{port}" if port else host


def _backslash_escapes(client: CommandPhase) -> bool:
    """Whether a backslash escapes in the session's strings: not under
    NO_BACKSLASH_ESCAPES (the client's sql_mode, else the server's status)."""
    for name, value in client.session.state.variables:
        if name == "sql_mode":
            return "NO_BACKSLASH_ESCAPES" not in value.upper()
    return not client.proxy.server.status & SERVER_STATUS_NO_BACKSLASH_ESCAPES


def rewrite_command(client: CommandPhase, found: sqltext.Found) -> sqltext.Found | None:
    """The running COM_QUERY, whose scan found a thread-id needle (``found``),
    rewritten in place (``client.command``, ``client.sql``); returns what the
    scan found but for that needle (None if nothing else)."""
    packet, client.sql = rewrite(client, client.command, client.sql)  # type: ignore[arg-type]
    client.command = packet
    flags = found.flags & ~sqltext.THREAD_IDS
    if not flags and found.pin is None and not found.reread and not found.scoped and not found.calls:
        return None
    return attrs.evolve(found, flags=flags)


def rewrite(client: CommandPhase, packet: Packet, sql: bytes, prepared: bool = False) -> tuple[Packet, bytes]:
    """The command with its text rewritten for the client's thread id, or as it
    was; ``sql`` is its text (after the command byte)."""
    if packet.seq != packet.last_seq or len(sql) > sqltext.SCAN_LIMIT:
        return packet, sql  # long statements are sent as they came
    backslash = _backslash_escapes(client)
    original = sql
    changed = False
    locks = _IS_USED_LOCK.search(sql) is not None
    columns = client.proxy.processlist_columns if _PROCESSLIST.search(sql) is not None else ()
    # Who holds which connection is looked at only for statements that ask.
    threads = mapping(client, snapshot=not prepared) if locks or columns else None
    lock_owner = threads.lock_owner() if locks and threads is not None else None
    rewritten = rewrite_connection_id(sql, client.connection.id, backslash, lock_owner)
    if rewritten is not None:
        sql, changed = rewritten, True
    if columns and threads is not None:
        # The statement's own row shows the statement as the client sent it.
        info = (b"CASE WHEN ID = CONNECTION_ID() THEN " + _quote_bytes(original, backslash)
                + b" ELSE INFO END")
        expanded = expand_processlist(sql, columns, threads, backslash, info)
        if expanded is not None:
            sql, changed = expanded, True
    if not changed:
        return packet, sql
    payload = packet.payload[:1] + sql
    if len(payload) >= MAX_PAYLOAD:
        return packet, packet.payload[1:]
    return Packet(packet.seq, payload, frame(payload, packet.seq), packet.seq), sql
