"""Users looked up on the server itself, as PgBouncer's ``auth_query`` does.

With ``[auth] lookup = true`` a client whose user no other source knows is
checked against the server's own stored mysql_native_password hash, read
from ``mysql.user`` over a connection of pyproxy's own logged in as
``[auth] lookup_user``.  That account needs only ``SELECT`` on
``mysql.user`` (on MariaDB 10.4+ a view over ``mysql.global_priv``, which
it reads with its definer's rights, so no grant on ``global_priv`` is
needed).  The proof the client sends then gives SHA1(password), which logs
pyproxy in to the server as that user: the configuration holds no
per-user secret at all.

What is read is kept ``[auth] lookup_cache`` seconds, "no such user"
included, so a client storm makes one query per user, not one per client.
When a password changes on the server, a client with the new password fails
against the cached hash; the source then reads again (at most once per
``min_gap`` seconds per user) and the client is let in.  A client still
using the old password is let in only while the old hash is cached, and
then fails at the server, which checks every login for itself.

Only accounts whose plugin is mysql_native_password can be checked so;
others (caching_sha2_password, ed25519, unix_socket) are unknown to this
source.  An account defined for several hosts may have several hashes: a
proof matching any is accepted, since the server decides which account
pyproxy's own login matches and refuses a wrong one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from pyproxy import auth
from pyproxy.backend import BackendConnection, Target, connect
from pyproxy.credential_sources import Credential
from pyproxy.logs import get_logger

Rows = list[tuple[str | None, ...]]


def lookup_query(user: str) -> str:
    """The query for one user's stored hashes.  The name goes in as a hex
    literal, so no quoting or sql_mode (NO_BACKSLASH_ESCAPES) can change the
    statement; roles (MariaDB: an empty Host) are left out."""
    literal = f"X'{user.encode('utf-8').hex()}'" if user else "''"
    return ("SELECT plugin, authentication_string FROM mysql.user "
            f"WHERE User = CONVERT({literal} USING utf8mb4) AND Host <> ''")


def stored_hashes(rows: Rows) -> tuple[bytes, ...]:
    """SHA1(SHA1(password)) of each mysql_native_password account in ``rows``
    (plugin, authentication_string), distinct, in order.  An account without
    a password is left out: pyproxy does not open passwordless accounts."""
    found: dict[bytes, None] = {}
    for row in rows:
        plugin, stored = (row + (None, None))[:2]
        if plugin not in (auth.NATIVE, "") or not stored or not auth.STORED_HASH.fullmatch(stored):
            continue
        found[auth.parse_stored_hash(stored)] = None
    return tuple(found)


@attrs.define(eq=False)
class LookupSource:
    """The server's own mysql_native_password users, as a CredentialSource.

    Args:
        query: runs one statement on pyproxy's lookup connection and fires
            with its rows (:class:`ServerQuery` in pyproxy).
        clock: for the cache's ages.
        ttl: ``[auth] lookup_cache``.
        min_gap: a user is read again on ``refresh`` at most this often.
        max_entries: users kept at most (the least recently read go first),
            so clients naming ever new users cannot grow it without bound.
    """

    query: Callable[[str], defer.Deferred[Rows]]
    clock: IReactorTime
    ttl: float = 30.0
    min_gap: float = 1.0
    max_entries: int = 10000
    name: str = "lookup"
    _cache: collections.OrderedDict[str, tuple[float, tuple[bytes, ...]]] = attrs.field(
        factory=collections.OrderedDict)
    _reading: dict[str, list[defer.Deferred[Credential | None]]] = attrs.field(factory=dict)
    _log: Any = attrs.field(factory=lambda: get_logger(component="lookup"))

    def credential(self, user: str) -> defer.Deferred[Credential | None]:
        cached = self._cache.get(user)
        if cached is not None and self.clock.seconds() - cached[0] < self.ttl:
            return defer.succeed(self._credential(user, cached[1]))
        waiter: defer.Deferred[Credential | None] = defer.Deferred()
        if user in self._reading:
            self._reading[user].append(waiter)
            return waiter
        self._reading[user] = [waiter]
        self.query(lookup_query(user)).addCallbacks(self._read, self._failed,
                                                    callbackArgs=(user,), errbackArgs=(user,))
        return waiter

    def _credential(self, user: str, hashes: tuple[bytes, ...]) -> Credential | None:
        return Credential(user, self.name, hashes=hashes) if hashes else None

    def _read(self, rows: Rows, user: str) -> None:
        hashes = stored_hashes(rows)
        self._cache[user] = (self.clock.seconds(), hashes)
        self._cache.move_to_end(user)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        self._log.debug("user_looked_up", user=user, accounts=len(rows), usable=len(hashes))
        self._answer(user, self._credential(user, hashes))

    def _failed(self, failure: Any, user: str) -> None:
        """The lookup connection failed: the user is refused this time, and
        nothing is cached, so the next client tries again."""
        exc = failure.value
        self._log.warning("user_lookup_failed", user=user, error=type(exc).__name__,
                          code=getattr(exc, "code", None), message=getattr(exc, "message", None))
        self._answer(user, None)

    def _answer(self, user: str, found: Credential | None) -> None:
        for waiter in self._reading.pop(user, []):
            waiter.callback(found)

    def refresh(self, user: str) -> defer.Deferred[bool]:
        """Forgets ``user`` if it was read at least ``min_gap`` seconds ago, so the
        next ``credential`` reads it again (a password changed on the server)."""
        cached = self._cache.get(user)
        if cached is None or self.clock.seconds() - cached[0] < self.min_gap:
            return defer.succeed(False)
        del self._cache[user]
        return defer.succeed(True)


@attrs.define(eq=False)
class ServerQuery:
    """Runs the lookup's statements on one connection of pyproxy's own, opened
    when first needed and again after it is lost.

    Args:
        reactor: for the connection and its timeouts.
        target: gives where and as whom to log in (the lookup account on the
            current writer) each time a connection is opened.
    """

    reactor: Any
    target: Callable[[], Target]
    _connection: BackendConnection | None = None
    _opening: list[defer.Deferred[BackendConnection]] | None = None

    def __call__(self, sql: str) -> defer.Deferred[Rows]:
        return self._connected().addCallback(lambda conn: conn.query_rows(sql))

    def _connected(self) -> defer.Deferred[BackendConnection]:
        conn = self._connection
        if conn is not None and not conn.broken and conn.transport is not None:
            return defer.succeed(conn)
        self._connection = None
        waiter: defer.Deferred[BackendConnection] = defer.Deferred()
        if self._opening is not None:
            self._opening.append(waiter)
            return waiter
        self._opening = [waiter]
        connect(self.reactor, self.target(), 0).addBoth(self._opened)
        return waiter

    def _opened(self, outcome: Any) -> None:
        waiting, self._opening = self._opening or [], None
        if isinstance(outcome, BackendConnection):
            self._connection = outcome
        for waiter in waiting:
            waiter.callback(outcome) if isinstance(outcome, BackendConnection) else waiter.errback(outcome)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close("lookup closed")
            self._connection = None
