"""Statement digests: a statement's shape with every value taken out.

``[log] debug_statements_for`` (pyproxy.statement_log) logs what clients
run, for a while, to see what a workload does; the log must never carry a
value (a password in an ``ALTER USER``, a customer's e-mail in a WHERE).  A
digest keeps keywords, identifiers and operators and replaces every literal
by ``?``: quoted strings (either quote, with backslash or doubled-quote
escapes), numbers (integers, decimals, exponents), hex and bit literals
(``0x1F``, ``X'1F'``, ``b'01'``), character-set introducers with their
string (``_utf8mb4'x'``).  Comments go, since they can hold anything (an
executable ``/*! ... */`` comment goes too).  A list of placeholders inside
parentheses (``IN (?, ?, ?)``, a ``VALUES`` row) becomes ``(...)``, so that
one statement run with lists of different lengths has one digest.
Whitespace is folded to single spaces.  An unterminated string or comment
is taken to run to the end, so its content is dropped too.
"""

from __future__ import annotations

import re

# Longest digest logged: the shape of a huge statement is in its start.
MAX_DIGEST = 1024

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>/\*.*?(?:\*/|\Z)|--(?:[ \t].*?)?(?:\n|\Z)|\#.*?(?:\n|\Z))
    | (?P<ident>`(?:[^`]|``)*(?:`|\Z))
    | (?P<string>(?:_[A-Za-z0-9]+\s*)?(?:'(?:[^'\\]|\\.|'')*(?:'|\Z)|"(?:[^"\\]|\\.|"")*(?:"|\Z)))
    | (?P<hex>[xXbB]'[^']*(?:'|\Z)|0[xX][0-9A-Fa-f]+\b|0[bB][01]+\b)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_$]))
    | (?P<word>[A-Za-z0-9_$]+|@@?[A-Za-z0-9_$.]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")


def digest(sql: bytes | str) -> str:
    """The statement with its values replaced by ``?`` (see the module's docstring)."""
    if isinstance(sql, bytes):
        sql = sql.decode("utf-8", "replace")
    out: list[str] = []
    spaced = True
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind == "space" or kind == "comment":
            if not spaced:
                out.append(" ")
                spaced = True
            continue
        if kind == "string" or kind == "hex" or kind == "number":
            out.append("?")
        else:
            out.append(match.group())
        spaced = False
    text = "".join(out).strip()
    text = _LIST.sub("(...)", text)
    if len(text) > MAX_DIGEST:
        text = text[:MAX_DIGEST] + "..."
    return text
